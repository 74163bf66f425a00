"""--resume: a render killed at any point (SIGKILL included) finishes bit-identical to an uninterrupted one.

Real processes, real signals, real files: the tiny model renders through the command line.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.running import assert_one_line_error, run_cli, wait_for

RENDER = ["lofi to jazz", "--model", "tiny", "--width", "64", "--steps", "2", "--no-progress", "--no-play",
          "--duration", "12", "--seed", "4"]


def _command(cache, out, *args):
    return [sys.executable, "-m", "riffstream", *RENDER, "--cache-dir", str(cache), "--out", str(out), *args]


def _journal(out):
    return out.with_name(f".{out.name}.journal")


def _clips(out) -> int:
    folder = _journal(out)
    return len([name for name in os.listdir(folder) if name.endswith(".png")]) if folder.exists() else 0


def _interrupt(cache, out, at_clips: int, how: signal.Signals, *args):
    process = subprocess.Popen(_command(cache, out, *args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _clips(out) >= at_clips, 180, process)
        process.send_signal(how)
        process.wait(timeout=10)
    finally:
        process.kill()
    return process


@pytest.fixture(scope="module")
def uninterrupted(tiny_exported, tmp_path_factory):
    """The reference: each variant rendered once without a stop, and its clip count."""
    folder = tmp_path_factory.mktemp("reference")
    made = {}
    for name, args in (("plain", ()), ("continued", ("--continuation",))):
        out = folder / f"{name}.wav"
        began = time.monotonic()
        result = subprocess.run(_command(tiny_exported, out, *args), capture_output=True, text=True, timeout=300)
        made[f"{name} seconds"] = time.monotonic() - began
        assert result.returncode == 0, result.stderr
        assert not _journal(out).exists()  # a finished render removes its journal
        made[name] = out.read_bytes()
    return made


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3))
def test_a_render_killed_at_a_random_point_resumes_to_the_same_bytes(tiny_exported, tmp_path, uninterrupted, run):
    at = random.Random(run).randrange(1, 22)  # of 25 clips
    out = tmp_path / "render.wav"
    killed = _interrupt(tiny_exported, out, at, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert _clips(out) >= at and not out.exists()
    command = _command(tiny_exported, out, "--resume")
    if run == 2:  # the seed may be left out: the journal's is taken
        del command[command.index("--seed") : command.index("--seed") + 2]
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out}: " in resumed.stderr
    assert out.read_bytes() == uninterrupted["plain"]
    assert not _journal(out).exists() and not list(tmp_path.glob(".*.partial"))


#: SIGKILLs in the chain below; CI runs a few, a longer run sets RIFFSTREAM_TEST_KILLS (say 50).
KILLS = int(os.environ.get("RIFFSTREAM_TEST_KILLS", "4"))


@pytest.mark.slow
def test_a_render_killed_again_and_again_even_while_resuming_ends_with_the_same_bytes(
        tiny_exported, tmp_path, uninterrupted):
    """Crash consistency as databases test it: SIGKILL at random instants, not at clip boundaries (while
    the model loads, mid-write of a journal clip or of the output, while --resume replays), each time
    followed by what a user would do next: --resume if a journal is there, else the command again."""
    chance = random.Random(2026)
    lifetime = uninterrupted["plain seconds"]
    kills, renders, history = 0, 0, []
    while kills < KILLS:  # each render is killed until it finishes (or the kills are spent), then checked
        out = tmp_path / f"render-{renders}.wav"
        renders += 1
        while True:
            resuming = (_journal(out) / "plan.json").exists()
            command = _command(tiny_exported, out, *(["--resume"] if resuming else []))
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            if kills < KILLS:
                try:
                    process.wait(timeout=chance.uniform(0.2, lifetime))
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
            _, stderr = process.communicate(timeout=300)
            history.append(f"{out.name} {'resume' if resuming else 'start'}: {process.returncode}, {_clips(out)} clips")
            assert process.returncode in (0, -signal.SIGKILL), f"{history}: {stderr.decode()}"
            if process.returncode == 0:
                break
        assert out.read_bytes() == uninterrupted["plain"], history
    print(f"{kills} kills over {renders} renders: " + "; ".join(history))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], history  # no journal, partial or lock


@pytest.mark.slow
def test_a_second_render_or_a_resume_racing_a_running_render_is_refused_and_the_first_file_is_whole(
        tiny_exported, tmp_path, uninterrupted, capsys):
    import riffstream.cli  # noqa: F401  (imported before the race, so each refusal takes a moment)

    out = tmp_path / "render.wav"
    first = subprocess.Popen(_command(tiny_exported, out), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _clips(out) >= 1, 180, first, "the first render's first clip")
        other = _command(tiny_exported, out)[3:]
        other[0] = "another prompt"
        refusals = [run_cli(capsys, *other, "--duration", "4"), run_cli(capsys, *_command(tiny_exported, out)[3:],
                                                                         "--resume")]
        still_running = first.poll() is None
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert still_running, "the first render ended before the race: nothing was tested"
    for code, said in refusals:
        assert_one_line_error(code, said, f"{out} is being written by another riffstream process (pid {first.pid})")
    assert first.returncode == 0 and f"wrote {out}: 12.00 s" in stdout.decode()
    assert out.read_bytes() == uninterrupted["plain"]


@pytest.mark.slow
def test_a_full_disk_mid_render_is_one_line_keeps_the_finished_audio_and_resumes_to_the_same_bytes(
        tiny_exported, tmp_path, uninterrupted):
    import io

    import soundfile

    disk = tmp_path / "small"
    disk.mkdir()
    # A real filesystem that fills: 400 KB holds the plan and a few clips (journal pictures and audio).
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill a disk")
    try:
        out = disk / "render.wav"
        full = subprocess.run(_command(tiny_exported, out), capture_output=True, text=True, timeout=300)
        errors = [line for line in full.stderr.splitlines() if "error" in line]
        assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
        assert len(errors) == 1 and errors[0].startswith("riffstream: error: cannot write "), full.stderr
        assert "the disk is full; kept " in errors[0] and "--resume finishes it" in errors[0], errors[0]
        # The file is a valid WAV holding the finished audio: sample for sample the start of the full render,
        # up to the last clip's tail (0.16 s), which an ended stream closes out instead of crossfading on.
        kept, _ = soundfile.read(out, dtype="int16")
        reference, _ = soundfile.read(io.BytesIO(uninterrupted["plain"]), dtype="int16")
        tail = 16 * 441
        assert tail < kept.size < reference.size
        np.testing.assert_array_equal(kept[:-tail], reference[: kept.size - tail])
        assert _clips(out) >= 1 and not list(disk.glob(".*.partial")) and not list(disk.rglob("*.tmp"))
        # Space freed: --resume finishes it, bit-identical to a render that never met a full disk.
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        resumed = subprocess.run(_command(tiny_exported, out, "--resume"), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert out.read_bytes() == uninterrupted["plain"]
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.slow
def test_a_continued_render_stopped_with_ctrl_c_resumes_to_the_same_bytes(tiny_exported, tmp_path, uninterrupted):
    out = tmp_path / "continued.wav"
    stopped = _interrupt(tiny_exported, out, 9, signal.SIGINT, "--continuation")
    stderr = stopped.stderr.read().decode()
    assert stopped.returncode == 130 and "with --resume finishes it" in stderr, stderr
    assert out.exists()  # what was finished is kept, as always
    # Continuation chains each clip to the one before: the journal keeps their latents.
    assert any(name.endswith(".npy") for name in os.listdir(_journal(out)))
    resumed = subprocess.run(_command(tiny_exported, out, "--continuation", "--resume"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert out.read_bytes() == uninterrupted["continued"]


@pytest.fixture(scope="module")
def stopped_journal(tiny_exported, tmp_path_factory):
    """A render killed after a few clips: its journal, to copy into each bad-resume case."""
    folder = tmp_path_factory.mktemp("stopped")
    out = folder / "render.wav"
    _interrupt(tiny_exported, out, 3, signal.SIGKILL)
    return _journal(out)


def _spoil_plan(journal):
    (journal / "plan.json").write_text("{not json")


def _spoil_clip(journal):
    (journal / "clip-00000.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")


def _lose_clip(journal):
    (journal / "clip-00001.png").unlink()


@pytest.mark.parametrize("spoil, args, message", [
    (None, ["--steps", "3"], "it was started with steps 2, not 3"),
    (None, ["--seed", "5"], "it was started with seed 4, not 5"),
    (None, ["--crossfade", "0.2"], "it was started with crossfade"),
    # The model's output depends on its thread count: the journal records the count it was made with.
    (None, ["--threads", "1"], f"it was started with threads 'auto on {len(os.sched_getaffinity(0))} CPUs', not 1"),
    (_spoil_plan, [], "its journal's plan is corrupt"),
    (_spoil_clip, [], "clip 0 of its journal is corrupt"),
    (_lose_clip, [], "clip 1 is missing"),
    ("none", [], "nothing to resume"),
])
def test_a_mismatched_or_broken_resume_gets_one_line_and_touches_nothing(tiny_exported, tmp_path, stopped_journal,
                                                                       spoil, args, message, capsys, no_model_load):
    out = tmp_path / "render.wav"
    if spoil != "none":
        shutil.copytree(stopped_journal, _journal(out))
        if spoil is not None:
            spoil(_journal(out))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    command = _command(tiny_exported, out, "--resume", *args)[3:]  # the arguments, run in this process
    if "--seed" in args:
        command.remove("4")
        command.remove("--seed")
    assert_one_line_error(*run_cli(capsys, *command), message)  # refused before the model loads
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_resume_needs_the_render_it_continues(tiny_exported, tmp_path, capsys, no_model_load):
    code, stderr = run_cli(capsys, "lofi", "--model", "tiny", "--no-play", "--out", tmp_path / "x.wav", "--resume",
                           "--cache-dir", tiny_exported)
    assert_one_line_error(code, stderr, "--resume continues a render")
