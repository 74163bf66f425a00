"""The generation command end to end: tiny model through OpenVINO, real PortAudio into ALSA.

Live playback goes to ALSA's ``file`` plugin through a ``.asoundrc`` under a temporary HOME,
which captures exactly the float32 samples PortAudio played.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from PIL import Image

from riffstream.cli import main
from riffstream.stitch import DEFAULT_CROSSFADE
from tests.running import clip_records, run_cli, wait_for

WIDTH = 64
RATE = 44100
CLIP = WIDTH * 441
FAST = ["--model", "tiny", "--width", str(WIDTH), "--steps", "2", "--no-progress"]


def _command(cache, *args):
    return [sys.executable, "-m", "riffstream", *args, *FAST, "--cache-dir", str(cache)]


def _env(home=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if home is not None:
        env["HOME"] = str(home)
    return env


@pytest.mark.slow
def test_live_output_equals_the_rendered_file(tiny_exported, tmp_path):
    home, played, out = tmp_path / "home", tmp_path / "played.raw", tmp_path / "out.wav"
    home.mkdir()
    (home / ".asoundrc").write_text(f'pcm.!default {{ type file slave.pcm "null" file "{played}" format "raw" }}\n')
    result = subprocess.run(
        _command(tiny_exported, "lofi to jazz", "--duration", "2", "--seed", "4", "--out", str(out), "--prebuffer", "2"),
        env=_env(home), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "0 underruns" in result.stderr and "noise, not music" in result.stderr
    assert "live preset for live play on a CPU" in result.stderr  # the default for live play: LCM-LoRA, TAESD
    rendered, rate = soundfile.read(out, dtype="float32")
    assert rate == RATE and rendered.shape == (2 * RATE,)
    captured = np.fromfile(played, dtype=np.float32)
    start = int(np.flatnonzero(captured)[0])
    live = captured[start:start + rendered.size]
    np.testing.assert_allclose(live, rendered, atol=1.5 / 32768)  # the file is 16-bit PCM
    assert not np.any(captured[start + rendered.size:])


@pytest.mark.slow
def test_a_typed_prompt_queues_a_transition_and_ctrl_c_keeps_a_valid_file(tiny_exported, tmp_path):
    out, spec = tmp_path / "endless.wav", tmp_path / "spec"
    process = subprocess.Popen(
        _command(tiny_exported, "lofi", "--seed", "2", "--no-play", "--out", str(out), "--save-spectrograms", str(spec),
                 "--clips-per-transition", "2", "--crossfade", "0.1"),
        env=_env(), stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 1, 180, process)
        process.stdin.write(b"jazz:0 + lofi\nsmooth jazz\n")
        process.stdin.flush()
        wait_for(lambda: any(r["prompt_a"] == "smooth jazz" for r in clip_records(spec)), 60, process)
        process.send_signal(signal.SIGINT)
        began = time.monotonic()
        process.wait(timeout=10)
        stopped_in = time.monotonic() - began
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 130, stderr
    assert stopped_in < 2.0 and "Traceback" not in stderr
    assert "turning to 'smooth jazz' now" in stderr
    assert "ignored 'jazz:0 + lofi': the weight of 'jazz'" in stderr  # a bad blend typed live is only skipped
    records = clip_records(spec)
    to_jazz = [r["alpha"] for r in records if r["prompt_b"] == "smooth jazz" and r["prompt_a"] == "lofi"]
    assert to_jazz == [0.5, 1.0]
    audio, rate = soundfile.read(out)
    crossfade = round(0.1 * RATE)
    assert audio.shape == (len(records) * (CLIP - crossfade) + crossfade,)
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.slow
def test_sigterm_mid_render_leaves_a_valid_file(tiny_exported, tmp_path):
    out, spec = tmp_path / "long.flac", tmp_path / "spec"
    process = subprocess.Popen(
        _command(tiny_exported, "lofi to jazz", "--duration", "10m", "--seed", "2", "--no-play", "--out", str(out),
                 "--save-spectrograms", str(spec)),
        env=_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 3, 180, process)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    audio, rate = soundfile.read(out)
    clips = len(clip_records(spec))
    overlap = round(min(DEFAULT_CROSSFADE, WIDTH / 100 / 4) * 100) * 441  # the default for narrow clips
    assert audio.shape == (clips * (CLIP - overlap) + overlap,)


def test_the_taesd_decoder_renders_the_exact_duration_with_its_own_pictures(tiny_exported, tmp_path, capsys):
    def render(decoder: str) -> tuple[np.ndarray, list[np.ndarray]]:
        out, spec = tmp_path / f"{decoder}.flac", tmp_path / decoder
        code, stderr = run_cli(capsys, "lofi to jazz", "--duration", "1.5", "--seed", "3", "--no-play", "--out", out,
                               "--save-spectrograms", spec, "--decoder", decoder, *FAST, "--cache-dir", tiny_exported)
        assert code == 0, stderr
        audio, rate = soundfile.read(out, dtype="float32")
        assert rate == RATE and audio.shape == (int(1.5 * RATE),) and np.sqrt(np.mean(audio**2)) > 1e-3
        return audio, [np.asarray(Image.open(png)) for png in sorted(spec.glob("clip-*.png"))]

    taesd, taesd_clips = render("taesd")
    vae, vae_clips = render("vae")
    # The same latents, decoded by another decoder: every clip's picture differs, and so does the sound.
    assert len(taesd_clips) == len(vae_clips) >= 3
    assert all(a.shape == b.shape and not np.array_equal(a, b) for a, b in zip(taesd_clips, vae_clips))
    assert not np.allclose(taesd, vae, atol=1e-3)


# ---------------------------------------------------------------- bad input: one line, non-zero, nothing written


@pytest.mark.parametrize("args,message", [
    ([""], "empty prompt"),
    (["lofi to"], "empty prompt"),
    (["lofi", "--duration", "0"], "duration"),
    (["lofi", "--duration", "-5"], "duration"),
    (["lofi", "--duration", "soon"], "duration"),
    (["lofi", "--out", "OUT/x.mp3"], ".wav, .flac or .ogg"),
    (["lofi", "--out", "OUT/missing/x.wav"], "does not exist"),
    (["lofi", "--no-play"], "--out"),
    (["lofi", "--crossfade", "9"], "crossfade"),
    (["lofi", "--width", "100", "--no-play", "--out", "OUT/x.wav"], "multiple of 8"),
    (["lofi", "--output-device", "no such device"], "--out FILE --no-play"),
    (["lofi", "--model", "OUT/no-such-model", "--no-play", "--out", "OUT/x.wav"], "model"),
    (["lofi", "--model", "tiny", "--device", "NPU9", "--no-play", "--out", "OUT/x.wav"], "device"),
    (["lofi", "--model", "tiny", "--decoder", "not a decoder!", "--no-play", "--out", "OUT/x.wav"], "--decoder"),
    (["lofi", "--init-audio", "OUT/missing.wav", "--no-play", "--out", "OUT/x.wav"], "no such audio"),
    (["lofi", "--strength", "1.5", "--no-play", "--out", "OUT/x.wav"], "strength"),
    (["lofi", "--loudness", "loud", "--no-play", "--out", "OUT/x.wav"], "loudness"),
])
def test_bad_input_gets_one_line_and_leaves_nothing_behind(args, message, tmp_path, capsys):
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    assert main(args + ["--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 or err[-1].startswith("riffstream: error:"), err
    assert err[-1].startswith("riffstream: error:") and message in err[-1]
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"]


def test_read_only_output_is_refused_before_the_model_loads(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        assert main(["lofi", "--no-play", "--out", str(folder / "x.wav")]) == 2
        assert "permission denied" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--no-play", "--duration", "--seed", "--steps", "--guidance", "--negative-prompt",
                   "--clips-per-transition", "--crossfade", "--model", "--device", "--int8", "--save-spectrograms",
                   "--output-device", "--list-devices", "--decoder", "image-to-audio"):
        assert option in text


@pytest.mark.slow
def test_typing_in_a_terminal_never_lands_on_the_progress_bar(tiny_exported, tmp_path):
    """In a real pseudo-terminal, the line being typed shows in the bar ("> ja"), is never echoed
    onto the bar's line, and once sent stands on a line of its own."""
    import fcntl
    import pty
    import re
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    process = subprocess.Popen(
        [sys.executable, "-m", "riffstream", "lofi", "--seed", "2", "--no-play", "--out", str(tmp_path / "e.wav"),
         "--model", "tiny", "--width", str(WIDTH), "--steps", "2", "--cache-dir", str(tiny_exported)],
        env=_env(), stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    screen = bytearray()

    def shows(text: bytes) -> bool:
        while select.select([master], [], [], 0.05)[0]:
            try:
                screen.extend(os.read(master, 65536))
            except OSError:
                break
        return text in screen

    try:
        wait_for(lambda: shows(b" clips ["), 180, process, "the progress bar")
        for key in b"jazz":
            os.write(master, bytes([key]))
            wait_for(lambda: shows(b"clips ["), 5, process)
        wait_for(lambda: shows(b"> jazz |"), 10, process, "the typed line in the bar")
        os.write(master, b"\r")
        wait_for(lambda: shows(b"riffstream: next: 'jazz'"), 10, process, "the sent prompt on its own line")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        shows(b"")
    finally:
        process.kill()
        os.close(master)
    assert process.returncode == 130
    pieces = [p.strip() for p in re.split(r"[\r\n]", screen.decode("utf-8", "replace")) if "ja" in p]
    assert pieces and all(p.startswith(("> j", "riffstream: next: 'jazz'", "riffstream: turning to 'jazz' now"))
                          for p in pieces), pieces
