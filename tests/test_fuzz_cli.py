"""Property-based fuzzing of the command line: odd but plausible values for every option.

Every run must end one of two ways: a single ``riffstream: error:`` line, a non-zero exit
and nothing left behind; or exit 0 with a valid, finite, non-silent output file of the
asked length. Never a traceback, never exit 0 with garbage.

The checks run first without the model (``plan_generation``: hundreds of cases in
seconds), then whole commands on the tiny model for a few dozen more. Hypothesis runs
derandomised (a fixed seed derived from each test), so CI sees the same cases every time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import event, given, settings
from hypothesis import strategies as st

from riffstream import cli
from riffstream.errors import RiffstreamError
from tests.fuzzing import examples
from tests.midifiles import piano_piece, write_midi

SOUNDFONT = "/usr/share/sounds/sf2/default-GM.sf2"
PLAN_EXAMPLES = examples(400)
RUN_EXAMPLES = examples(30)
CONVERT_EXAMPLES = examples(40)

ODD_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1e309", "0", "-0", "-1", "1", "2", "0.5",
               "1e9", "-1e9", "9" * 40, "", " ", "é", "١٢", "½", "0x10", "1_0", "3.", ".5", "1e-320", " 7 ", "2:30",
               "1h", "2.5m", "90s", "off", "-14", "7.0", "1000", "1001", "4096", "64", "63", "512"]
NUMBERS = st.one_of(
    st.sampled_from(ODD_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=6),
)
TEXT = st.one_of(st.sampled_from(["", " ", "lofi", "to", "a to", "to b", "jazz to", "é ♪ 音楽", "\t", "x" * 300]),
                 st.text(max_size=20))
NUMERIC_OPTIONS = ["--duration", "--prebuffer", "--seed", "--steps", "--guidance", "--clips-per-transition",
                   "--crossfade", "--loudness", "--strength", "--width", "--threads"]
TEXT_OPTIONS = ["--negative-prompt", "--scheduler", "--device", "--decoder", "--revision", "--lora"]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """Files and folders the paths are drawn from: real ones, odd ones, unusable ones."""
    root = tmp_path_factory.mktemp("fuzz")
    rate = 44100
    t = np.arange(rate) / rate
    loop = root / "loop.wav"
    soundfile.write(loop, 0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.1), rate)
    silent = root / "silent.wav"
    soundfile.write(silent, np.zeros(rate), rate)
    empty = root / "empty.wav"
    empty.touch()
    text = root / "notes.wav"
    text.write_text("not audio")
    (root / "out").mkdir()
    midi = {"midi": piano_piece(root / "piano.mid", bars=2), "no_notes": write_midi(root / "rests.mid", [(0, 0, [])]),
            "slow_midi": write_midi(root / "slow.mid", [(0, 0, [(0, 1, 60, 90)])], ((0, 12.0),))}
    (root / "cut.mid").write_bytes(midi["midi"].read_bytes()[:50])
    return {"root": root, "loop": loop, "silent": silent, "empty": empty, "text": text, "out": root / "out",
            "cut_midi": root / "cut.mid", **midi}


def _paths(places: dict[str, Path], kind: str) -> st.SearchStrategy[str]:
    out = places["out"]
    common = [str(places["root"]), "/dev/null", "/proc/riff.wav", str(out / "missing" / "x.wav"), "", " ",
              str(out / "é ♪.wav"), str(out / "noext"), str(places["text"]), "/"]
    if kind == "out":
        return st.sampled_from(common + [str(out / f"a{ext}") for ext in (".wav", ".flac", ".ogg", ".mp3", ".WAV")])
    if kind == "audio":
        return st.sampled_from(common + [str(places[k]) for k in ("loop", "silent", "empty")])
    if kind == "midi":
        return st.sampled_from(common + [str(places[k]) for k in ("midi", "no_notes", "slow_midi", "cut_midi", "loop")])
    if kind == "midi_out":
        return st.sampled_from(common + [str(out / "n.mid"), str(out / "n.MIDI"), str(out / "n.wav")])
    return st.sampled_from(common + [str(out / "spectrograms"), str(out / "deep" / "er")])


def _one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip() and "Traceback" not in message, message


def _leftovers(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@st.composite
def generation_commands(draw, places: dict[str, Path]) -> list[str]:
    argv = [draw(TEXT)]
    for option in draw(st.lists(st.sampled_from(NUMERIC_OPTIONS), unique=True, max_size=6)):
        argv += [option, draw(NUMBERS)]
    for option in draw(st.lists(st.sampled_from(TEXT_OPTIONS), unique=True, max_size=2)):
        argv += [option, draw(TEXT)]
    if draw(st.booleans()):
        argv += ["--init-audio", draw(_paths(places, "audio"))]
    if draw(st.booleans()):
        argv += ["--save-spectrograms", draw(_paths(places, "folder"))]
    if draw(st.booleans()):
        argv += ["--continuation"]
    if draw(st.booleans()):
        argv += ["--init-midi", draw(_paths(places, "midi"))]
    if draw(st.booleans()):
        argv += ["--soundfont", draw(st.sampled_from([SOUNDFONT, str(places["text"]), str(places["midi"]), "none.sf2"]))]
    if draw(st.booleans()):
        argv += ["--midi-out", draw(_paths(places, "midi_out"))]
    return argv + ["--no-play", "--out", draw(_paths(places, "out")), "--model", "tiny"]


@settings(max_examples=PLAN_EXAMPLES)
@given(data=st.data())
def test_every_generation_option_is_checked_before_the_model_loads(places, data):
    argv = data.draw(generation_commands(places))
    before = _leftovers(places["root"])
    try:
        plan = cli.plan_generation(cli.parse(argv))
    except (RiffstreamError, argparse.ArgumentError) as error:
        _one_line(str(error))
        event("one-line error")
    else:
        event("valid plan")
        stream = plan.stream
        for value in (stream.duration, stream.prebuffer, stream.guidance, stream.crossfade, stream.loudness,
                      stream.strength, stream.steps, stream.seed):
            assert value is None or math.isfinite(value), (argv, value)
        assert all(p.strip() for p in stream.prompts)
    assert _leftovers(places["root"]) == before, argv


def _mostly(valid: list[str], odd: list[str]) -> st.SearchStrategy[str]:
    """Valid values four times as often as odd ones, so that whole commands often get to render."""
    return st.sampled_from(valid * 4 + odd)


@st.composite
def small_renders(draw, places: dict[str, Path]) -> list[str]:
    """Whole commands whose valid cases are short: durations of a few seconds at most."""
    out = places["out"]
    argv = [draw(_mostly(["lofi", "lofi to jazz", "é ♪ 音楽 to drums"], ["", "to", " "]))]
    argv += ["--duration", draw(_mostly(["0.5", "1", "2.5", "0:02"], ["nan", "inf", "-1", "0", "1e9", "x"]))]
    for option, valid, odd in (("--guidance", ["0", "1", "7", "50"], ["nan", "inf", "-3", "51"]),
                               ("--crossfade", ["0", "0.1", "0.2"], ["5", "nan", "-1"]),
                               ("--loudness", ["-14", "-70", "0", "off"], ["nan", "1"]),
                               ("--strength", ["0.5", "1"], ["0", "nan", "1.5"]),
                               ("--seed", ["0", "4294967295", "1e3"], ["-1", "nan"]),
                               ("--clips-per-transition", ["1", "3"], ["0", "inf"]),
                               ("--negative-prompt", ["", "noise", "é"], [])):
        if draw(st.booleans()):
            argv += [option, draw(_mostly(valid, odd))]
    if draw(st.booleans()):
        argv += ["--init-audio", draw(_mostly([str(places["loop"])], [str(places["silent"]), str(places["empty"]),
                                                                      "/dev/null", str(places["root"])]))]
    if draw(st.booleans()):
        argv += ["--continuation"]
    if draw(st.booleans()):
        argv += ["--init-midi", draw(_mostly([str(places["midi"])], [str(places["no_notes"]), str(places["cut_midi"]),
                                                                    str(places["loop"])]))]
    target = _mostly([str(out / f"a{ext}") for ext in (".wav", ".flac", ".ogg")] + [str(out / "é ♪.wav")],
                     ["/dev/null", "/proc/riff.wav", str(out / "missing" / "x.wav"), str(out / "a.mp3"), str(out)])
    return argv + ["--no-play", "--out", draw(target)]


@settings(max_examples=RUN_EXAMPLES)
@given(data=st.data())
def test_a_whole_command_ends_in_one_line_or_a_valid_file(places, tiny_exported, data):
    argv = data.draw(small_renders(places))
    argv += ["--model", "tiny", "--width", "64", "--steps", "2", "--no-progress", "--cache-dir", str(tiny_exported)]
    out = Path(argv[argv.index("--out") + 1])
    before = _leftovers(places["root"])
    code = _run(argv)
    event("rendered" if code == 0 else "one-line error")
    if code == 0:
        audio, rate = _sound(out, argv)
        assert rate == 44100 and audio.shape[0] == round(_seconds(cli.parse(argv).duration) * rate), argv
        out.unlink()
    assert _leftovers(places["root"]) == before, argv


def _run(argv: list[str]) -> int:
    """Run a command in-process; a failure must be exit 2 with exactly one error line and no traceback."""
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    if code != 0:
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("riffstream: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in stderr.getvalue(), (argv, stderr.getvalue())
    return code


def _sound(path: Path, argv: list[str]) -> tuple[np.ndarray, int]:
    """The audio of a file a command wrote: it must be finite and not silent."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-4, argv
    return audio, rate


def _seconds(text: str) -> float:
    from riffstream.planner import parse_duration

    return parse_duration(text)


@settings(max_examples=CONVERT_EXAMPLES)
@given(data=st.data())
def test_conversions_end_in_one_line_or_a_valid_file(places, data):
    spectrogram = places["root"] / "loop.png"
    if not spectrogram.exists():
        assert cli.main(["audio-to-image", str(places["loop"]), str(spectrogram)]) == 0
    valid = {"--crossfade": ["0", "0.5", "1"], "--loudness": ["-14", "off", "-30"], "--iterations": ["0", "4", "16"]}
    kind = data.draw(st.sampled_from(("image-to-audio", "audio-to-image", "audio-to-midi")))
    if kind == "image-to-audio":
        source = data.draw(_mostly([str(spectrogram)], [str(places["loop"]), "/dev/null", str(places["root"]),
                                                        str(places["empty"]), str(places["text"]), "missing.png"]))
        target = data.draw(st.one_of(_mostly([str(places["out"] / f"b{ext}") for ext in (".wav", ".flac", ".ogg")], []),
                                     _paths(places, "out")))
        argv = ["image-to-audio", source, target]
        for option in data.draw(st.lists(st.sampled_from(sorted(valid)), unique=True)):
            argv += [option, data.draw(st.one_of(st.sampled_from(valid[option]), NUMBERS))]
        out = Path(target)
    elif kind == "audio-to-midi":
        source = data.draw(st.one_of(_mostly([str(places["loop"])], [str(places["midi"])]), _paths(places, "audio")))
        target = data.draw(_mostly([str(places["out"] / "b.mid")], [str(places["out"] / "b.wav"), "/dev/null",
                                                                     str(places["root"]), "/proc/b.mid", ""]))
        argv, out = ["audio-to-midi", source, target], Path(target)
    else:
        source = data.draw(st.one_of(_mostly([str(places["loop"])], []), _paths(places, "audio")))
        target = data.draw(_mostly([str(places["out"] / "b.png")], [str(places["out"] / "b.jpg"), "/dev/null",
                                                                     str(places["root"]), "/proc/b.png", ""]))
        argv = ["audio-to-image", source, target] + (["--stereo"] if data.draw(st.booleans()) else [])
        out = Path(target)
    before = _leftovers(places["root"])
    code = _run(argv)
    event("converted" if code == 0 else "one-line error")
    if code == 0:
        if out.suffix == ".png":
            from PIL import Image

            # Only the 1-s loop converts: its picture is 101 columns of 10 ms, dark (loud) where its
            # two 0.1-s pulses are and white (silent) between them.
            assert source == str(places["loop"]), argv
            with Image.open(out) as image:
                assert image.size == (101, 512), (argv, image.size)
                columns = np.asarray(image.convert("L"), dtype=np.float64).mean(axis=0)
            for pulse, gap in ((slice(0, 10), slice(20, 40)), (slice(48, 60), slice(70, 95))):
                assert columns[pulse].mean() < columns[gap].mean() - 20, (argv, columns.round())
        elif out.suffix == ".mid":
            import mido

            assert source == str(places["loop"]) and mido.MidiFile(out).type == 1, argv
        else:
            _sound(out, argv)
        out.unlink()
    assert _leftovers(places["root"]) == before, argv


@pytest.mark.parametrize("option, value, expected", [
    ("--guidance", "inf", "argument --guidance: must be a number from 0 to 50, not infinite"),
    ("--guidance", "nan", "argument --guidance: must be a number from 0 to 50, not nan (not a number)"),
    ("--prebuffer", "nan", "argument --prebuffer: must be a number from 0 to 3600 s, not nan (not a number)"),
    ("--init-audio", "/dev/null", "/dev/null is empty: it holds no audio"),
    ("--duration", "inf", "--duration must be a number above 0 s and at most 360000 s (100 hours), not infinite"),
    ("--steps", "2.5", "argument --steps: must be a whole number from 1 to 1000, not 2.5"),
])
def test_the_reported_cases_get_the_right_one_line_error(option, value, expected, tmp_path):
    with pytest.raises((RiffstreamError, argparse.ArgumentError)) as excinfo:
        cli.plan_generation(cli.parse(["lofi", option, value, "--no-play", "--out", str(tmp_path / "a.wav")]))
    assert str(excinfo.value) == expected
    assert not list(tmp_path.iterdir())
