"""Endless live play when the model is slower than real time, on a sound card with a real clock.

ALSA's null device swallows audio instantly, so it cannot show what happens when the
model falls behind. JACK's ``dummy`` driver plays at real-time pace with no hardware: a
private ``jackd`` (its own server name, selected with ``JACK_DEFAULT_SERVER``) is started
for each test, and the command plays into it through Debian's PortAudio, whose JACK host
API shows the server as the output device ``system, JACK Audio Connection Kit``.

PortAudio enumerates its host APIs when it initialises, so the playing side is a fresh
process started after jackd is up: the real ``riffstream`` command line, whose ``Player``
is given a source that also records, into a memory-mapped file, every frame the ring
buffer handed to the sound card (real samples, copied after the real ``read_into``).
"""

import signal
import time

import numpy as np
import pytest
import soundfile

from tests.jack import RATE, play_recorded, read_head
from tests.running import clip_records, wait_for

WIDTH = 64  # 0.64-s clips
CLIP = WIDTH * 441
CROSSFADE = round(min(1.0, WIDTH / 100 / 4) * 100) * 441  # the default for narrow clips: 0.16 s
#: Each clip adds 0.48 s of new audio (0.64 s less the 0.16-s crossfade).
NEW_PER_CLIP = (CLIP - CROSSFADE) / RATE
#: Each clip's denoising is slowed down on purpose to take at least this long (the JACK
#: driver's ``denoise_seconds``), 4 times the 0.48 s of audio a clip adds, so the model is
#: slower than real time on any machine, and by a known amount. The wait is spread over the
#: steps, so a Ctrl-C is seen within a step (0.25 s). The real work, 8 steps of the tiny model
#: at 512 x 64 on one thread, takes about 0.5 s on an idle AVX2-only machine: the floor stays
#: above it on a machine 3 times slower, and on a faster one it only waits longer.
DENOISE_SECONDS = 2.0
STEPS = 8
THREADS = 1
#: Seconds of live play before Ctrl-C, counted from the first audio ...
PLAY = 5.0
#: ... and at least this many clips made, so that several repeats end in a new clip.
CLIPS = 3


def _above_hearing_band(audio, cutoff=13000.0):
    """``audio`` high-passed at ``cutoff``. The stream's spectrograms end at 10 kHz, so all
    that shows up there is a discontinuity: a click, a gap, a hard cut."""
    from scipy import signal

    sos = signal.butter(8, cutoff, "highpass", fs=RATE, output="sos")
    return signal.sosfiltfilt(sos, np.asarray(audio, np.float64))


def _play(folder, cache, env, *args):
    """Start the recording driver on the real command line, playing into the JACK server, with a slowed model."""
    return play_recorded(folder, env, *args, "--model", "tiny", "--preset", "quality", "--width", str(WIDTH),
                         "--steps", str(STEPS), "--threads", str(THREADS), "--no-progress", "--cache-dir", str(cache),
                         denoise_seconds=DENOISE_SECONDS)


@pytest.mark.slow
def test_endless_play_loops_the_last_clip_while_the_model_is_slower_than_real_time(tiny_exported, jack_server, tmp_path):
    out, spec = tmp_path / "endless.wav", tmp_path / "spec"
    played, head_path = tmp_path / "played.npy", tmp_path / "head.npy"
    process = _play(tmp_path, tiny_exported, jack_server, "lofi", "--seed", "3", "--out", str(out),
                    "--save-spectrograms", str(spec))
    try:
        deadline = time.monotonic() + 120
        wait_for(lambda: (head := read_head(head_path)) is not None and head[3] > 0, 120, process, "the first audio")
        time.sleep(PLAY)
        wait_for(lambda: len(clip_records(spec)) >= CLIPS, deadline - time.monotonic(), process, f"{CLIPS} clips")
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        process.wait(timeout=10)
        stopped_in = time.monotonic() - interrupted
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    first, last, frames, reads, short_reads, first_short = np.load(head_path)
    frames = int(frames)
    live = np.load(played, mmap_mode="r")[:frames].copy()
    pngs = sorted(spec.glob("clip-*.png"))
    made = np.diff([p.stat().st_mtime for p in pngs])  # wall time between consecutive clips
    print(stderr)
    print(f"played {frames / RATE:.2f} s in {last - first:.2f} s of wall time; {len(pngs)} clips, "
          f"{', '.join(f'{t:.2f}' for t in made)} s apart; stopped {stopped_in:.2f} s after Ctrl-C")

    # Ctrl-C: out within a second, with the shell's status for SIGINT, no traceback.
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stopped_in < 1.0, stderr

    # It played on the JACK server, at the pace of a real clock, not as fast as it could.
    assert "playing on system" in stderr
    assert frames / RATE == pytest.approx(last - first, rel=0.1, abs=0.2)
    assert frames / RATE > PLAY - 0.5

    # The model was slower than real time: clips took longer to make than the audio they add (on
    # average: a clip's picture is saved once its audio is made, so two can land close together).
    assert len(pngs) >= CLIPS and np.mean(made) > 1.5 * NEW_PER_CLIP, made

    # So the stream looped the last clip, and the sound card never ran dry once it started.
    assert "looping the last clip until the next one is ready" in stderr
    summary = [line for line in stderr.splitlines() if line.startswith("riffstream: made ")]
    assert len(summary) == 1, stderr
    assert "; 0 underruns;" in summary[0], summary
    assert "looped the last clip " in summary[0], summary
    assert short_reads == 0, f"the ring buffer ran dry {short_reads:g} times, first at {first_short / RATE:.2f} s"

    # The file holds what the sound card played, the repeats included (an endless live session's
    # recording is what was heard), up to its closing fade.
    clips = len(clip_records(spec))
    assert clips == len(pngs)
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == RATE
    assert audio.size > (clips * (CLIP - CROSSFADE) + CROSSFADE) and abs(audio.size - frames) < RATE // 2, (
        audio.size, frames)
    heard = min(audio.size, frames) - 441
    np.testing.assert_allclose(live[:heard], audio[:heard], atol=1.5 / 32768)

    # And the repeats and the clips that ended them joined without a click, gap or dip.
    edge = 2048  # the stream's fade-in and the filter's own edges
    clicks = np.abs(_above_hearing_band(live))[edge:-edge]
    assert clicks.max() < 1e-3, f"a click at {(edge + np.argmax(clicks)) / RATE:.3f} s: {clicks.max():.2g}"
    window = RATE // 20
    level = np.sqrt(np.mean(live[edge: edge + (frames - 2 * edge) // window * window].reshape(-1, window) ** 2, axis=1))
    assert level.min() > level.mean() / 3, f"a dip at {(edge + np.argmin(level) * window) / RATE:.2f} s"


@pytest.mark.slow
def test_a_finite_render_starts_playing_early_enough_to_never_run_dry(tiny_exported, jack_server, tmp_path):
    duration = 6.0
    out, spec = tmp_path / "journey.wav", tmp_path / "spec"
    process = _play(tmp_path, tiny_exported, jack_server, "lofi to jazz", "--seed", "5", "--duration", str(duration),
                    "--out", str(out), "--save-spectrograms", str(spec))
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    stderr = stderr.decode()
    print(stderr)
    assert process.returncode == 0 and "Traceback" not in stderr, stderr
    first, last, frames, reads, short_reads, first_short = np.load(tmp_path / "head.npy")
    pngs = sorted(spec.glob("clip-*.png"))
    made = np.diff([p.stat().st_mtime for p in pngs])
    wall = time.time() - time.monotonic()  # monotonic to the files' wall-clock times
    started, rendered = first + wall, pngs[-1].stat().st_mtime

    # The model was slower than real time, and playing started before the render was done ...
    assert np.mean(made) > 1.5 * NEW_PER_CLIP, made
    assert started < rendered - 1.0, f"playing started {started - rendered:.2f} s after the last clip was made"
    # ... yet late enough that the sound card never ran dry, and no repeat was needed.
    assert short_reads == 0, f"the ring buffer ran dry {short_reads:g} times, first at {first_short / RATE:.2f} s"
    summary = [line for line in stderr.splitlines() if line.startswith("riffstream: made ")]
    assert len(summary) == 1 and summary[0].endswith("; 0 underruns"), stderr
    assert "looping" not in stderr
    # It played the whole journey, exactly the file, at the pace of a real clock.
    audio, rate = soundfile.read(out, dtype="float32")
    assert rate == RATE and audio.shape == (round(duration * RATE),)
    assert int(frames) == audio.size
    live = np.load(tmp_path / "played.npy", mmap_mode="r")[: audio.size]
    np.testing.assert_allclose(live, audio, atol=1.5 / 32768)
    assert last - first == pytest.approx(duration, rel=0.1)
