"""One writer per output file: a second render, a resume, a recording or a conversion to a file another
riffstream process is writing is refused before anything is loaded or touched.

The other process is real: a Python process holding the same claim a render holds (``claim_output``),
so the refusal is checked across processes, as two shells would meet it. The command under test runs
in this process (its point is what it says and what it leaves alone).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from riffstream.journal import JOURNAL_VERSION
from tests.running import assert_one_line_error, run_cli
from tests.serving import free_port

HOLD = """
import sys
from riffstream.sinks import claim_output
with claim_output(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process that claims a path and keeps it until told to stop; yields a function that starts it."""
    started: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "held\n", process.stderr.read()
        return process

    yield hold
    for process in started:
        process.kill()
        process.wait()


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_render_to_a_file_another_process_writes_is_refused_naming_that_process(
        holder, tmp_path, capsys, no_model_load):
    out = tmp_path / "o.wav"
    out.write_bytes(b"the first render's audio")
    other = holder(out)
    before = _tree(tmp_path)
    code, stderr = run_cli(capsys, "other", "--model", "tiny", "--duration", "20", "--no-play", "--out", out)
    line = assert_one_line_error(code, stderr, f"{out} is being written by another riffstream process")
    assert f"(pid {other.pid})" in line and "--out" in line
    assert _tree(tmp_path) == before  # no journal, no partial file, the file as it was


def test_a_resume_of_a_render_that_is_still_running_is_refused_and_its_journal_is_left_alone(
        holder, tmp_path, capsys, no_model_load):
    out = tmp_path / "o.wav"
    journal = tmp_path / ".o.wav.journal"
    journal.mkdir()
    (journal / "plan.json").write_text(json.dumps({"version": JOURNAL_VERSION, "stream": {"seed": 7}}))
    (journal / "clip-00000.png").write_bytes(b"a clip being written")
    other = holder(out)
    before = _tree(tmp_path)
    code, stderr = run_cli(capsys, "lofi", "--model", "tiny", "--duration", "20", "--no-play", "--out", out,
                           "--resume")
    assert f"(pid {other.pid})" in assert_one_line_error(code, stderr, "being written by another riffstream")
    assert _tree(tmp_path) == before


def test_serve_recording_to_a_file_another_process_writes_is_refused_before_it_binds(
        holder, tmp_path, capsys, no_model_load):
    out = tmp_path / "live.ogg"
    other = holder(out)
    code, stderr = run_cli(capsys, "serve", "--model", "tiny", "--port", free_port(), "--out", out)
    assert f"(pid {other.pid})" in assert_one_line_error(code, stderr, f"{out} is being written by another")
    assert not out.exists()


def test_a_conversion_to_a_file_another_process_writes_is_refused(holder, tmp_path, capsys):
    from riffstream.spectrogram import SpectrogramParams, audio_to_image

    params = SpectrogramParams()
    seconds = np.arange(params.sample_rate * 2) / params.sample_rate
    image = audio_to_image(0.3 * np.sin(2 * np.pi * 440 * seconds)[None], params.sample_rate, params)
    image.save(tmp_path / "clip.png", exif=image.getexif())
    out = tmp_path / "o.wav"
    out.write_bytes(b"the render's audio")
    other = holder(out)
    code, stderr = run_cli(capsys, "image-to-audio", tmp_path / "clip.png", out)
    assert f"(pid {other.pid})" in assert_one_line_error(code, stderr, "being written by another")
    assert out.read_bytes() == b"the render's audio"


def test_a_claim_left_by_a_killed_process_is_taken_over_and_removed_when_released(holder, tmp_path):
    from riffstream.errors import RiffstreamError
    from riffstream.sinks import claim_output
    from riffstream.sinks.file import claim_path

    out = tmp_path / "o.flac"
    other = holder(out)
    with pytest.raises(RiffstreamError, match=f"pid {other.pid}"):
        with claim_output(out):
            pass
    other.send_signal(signal.SIGKILL)
    other.wait()
    assert claim_path(out).exists()  # the dead process could not clean up ...
    with claim_output(out):  # ... and its claim does not block the next writer
        assert claim_path(out).exists()
    assert not claim_path(out).exists()


def test_a_writer_knows_whether_the_file_it_closed_is_still_on_disk(tmp_path):
    from riffstream.sinks import AudioFileWriter

    out = tmp_path / "o.wav"
    writer = AudioFileWriter(out, 44100, 1)
    writer.write(np.zeros(4410))
    assert not writer.is_on_disk()  # still being written under its partial name
    writer.close()
    assert writer.is_on_disk()
    replacement = tmp_path / "other.wav"
    replacement.write_bytes(out.read_bytes())
    replacement.replace(out)  # the same bytes, but not the file this writer wrote
    assert not writer.is_on_disk()
    out.unlink()
    assert not writer.is_on_disk()


def test_a_writer_stopped_by_a_failed_write_keeps_what_it_finished(tmp_path):
    from riffstream.errors import WriteFailed
    from riffstream.sinks import AudioFileWriter

    out = tmp_path / "o.wav"
    with pytest.raises(WriteFailed):
        with AudioFileWriter(out, 44100, 1) as writer:
            writer.write(np.full(4410, 0.25))
            raise WriteFailed(f"cannot write {out}: the disk is full")
    with pytest.raises(RuntimeError):
        with AudioFileWriter(tmp_path / "bug.wav", 44100, 1) as other:
            other.write(np.full(4410, 0.25))
            raise RuntimeError("a bug")
    import soundfile

    assert soundfile.read(out)[0].size == 4410 and writer.is_on_disk()
    assert not list(tmp_path.glob("bug.wav")) and not list(tmp_path.glob(".*.partial"))
