"""--bpm: the beat grid clips start on, the drum loop they start from, and the beat of the stream.

The stream's beat is measured on real renders through the command line: the tiny model at
strength 0, where every clip is exactly its starting loop (the tiny model's random VAE
does not keep an image at any other strength, so it cannot keep a beat). What is tested
is the grid, each clip's loop alignment and the stitching across seams.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from riffstream.errors import RiffstreamError
from riffstream.spectrogram import SpectrogramParams
from riffstream.tempo import (BEATS_PER_BAR, ClipLayout, LoopImages, Slot, beat_grid, beat_times, clips_to_cover,
                              drum_loop, loop_audio, loop_image)
from tests.beats import attacks, fit_beats
from tests.running import assert_one_line_error, run_cli

RATE = 44100
PARAMS = SpectrogramParams()
WIDTH = 512


@pytest.mark.parametrize("bpm", [70, 93, 120, 137, 174])
def test_the_synthesised_loop_hits_its_beat_times_within_one_column(bpm):
    seconds = 12
    audio = drum_loop(bpm, 0, seconds * RATE, RATE)
    hits = attacks(audio, RATE, 0.6 * 60 / bpm)
    expected = beat_times(bpm, seconds)
    assert len(hits) == len(expected)
    assert np.max(np.abs(hits - expected)) < 0.010


def test_a_loop_cut_mid_bar_is_the_same_loop_shifted():
    bpm, start = 128, 12345.0
    whole = drum_loop(bpm, 0, 3 * RATE, RATE)
    cut = drum_loop(bpm, start, 2 * RATE, RATE)
    assert np.allclose(cut, whole[int(start) : int(start) + 2 * RATE], atol=1e-6)


@pytest.mark.parametrize("bpm", [93, 128, 137, 174])
def test_clip_starts_never_drift_more_than_half_a_column_from_the_grid(bpm):
    grid = beat_grid(bpm, PARAMS, WIDTH, 100)
    exact = np.arange(20000) * grid.advance
    starts = np.array([grid.start(n) for n in range(20000)])
    assert np.max(np.abs(starts - exact)) <= 0.5
    advances = np.diff(starts)
    assert advances.max() - advances.min() <= 1  # a seam's overlap varies by one column at most
    assert all(abs(grid.offset(n)) <= PARAMS.hop_length / 2 for n in range(100))


def test_clips_start_whole_bars_apart_when_a_bar_count_fits_the_crossfade():
    grid = beat_grid(120, PARAMS, WIDTH, 100)
    assert grid.beats_per_clip % BEATS_PER_BAR == 0
    assert WIDTH - grid.advance == 112  # two 2-s bars in a 5.12-s clip


def test_clips_start_whole_beats_apart_when_no_bar_count_fits():
    # At 100 BPM a bar is 240 columns: one bar leaves 272 columns of overlap, more than half a
    # clip; two leave 32, too little to crossfade. Seven beats leave 92.
    grid = beat_grid(100, PARAMS, WIDTH, 100)
    assert grid.beats_per_clip == 7 and WIDTH - grid.advance == 92


def test_a_tempo_too_slow_for_the_clip_is_refused_in_one_line():
    with pytest.raises(RiffstreamError, match="no whole number of beats fits"):
        beat_grid(40, PARAMS, 128, 32)


def test_each_clip_starts_from_the_loop_cut_where_it_starts_in_the_bar():
    layout = ClipLayout(PARAMS, WIDTH, 100, lambda seconds: 137)
    loops = LoopImages(PARAMS, WIDTH)
    slots = [layout.slot(n) for n in range(6)]
    for slot in slots:
        expected = loop_image(lambda at, n: drum_loop(137, at, n, RATE), slot.loop_start, WIDTH, PARAMS)
        # The same to a pixel level: the cache keys a place in the bar to the sample.
        difference = np.abs(np.asarray(loops.image(slot), int) - np.asarray(expected, int))
        assert difference.max() <= 1 and difference.mean() < 0.05
    # 137 BPM: a bar is 175.18 columns, so successive clips start at different places in it.
    assert len({loops.key(slot) for slot in slots}) > 1


def test_a_tempo_change_starts_the_grid_again_at_that_clip():
    layout = ClipLayout(PARAMS, WIDTH, 100, lambda seconds: 120 if seconds < 20 else 90)
    slots = [layout.slot(n) for n in range(10)]
    changed = next(slot for slot in slots if slot.bpm == 90)
    assert changed.loop_start == 0  # a downbeat at its first column
    assert all(slot.start == previous.start + previous.advance for previous, slot in zip(slots, slots[1:]))
    assert layout.centre(changed) >= 20 > layout.centre(slots[changed.index - 1])


def test_enough_clips_are_laid_out_to_cover_a_duration():
    frames = 90 * RATE
    n = clips_to_cover(PARAMS, WIDTH, 100, frames, lambda seconds: 128)
    layout = ClipLayout(PARAMS, WIDTH, 100, lambda seconds: 128)
    slots = [layout.slot(i) for i in range(n)]
    assert (slots[-1].start + WIDTH) * PARAMS.hop_length >= frames > (slots[-2].start + WIDTH) * PARAMS.hop_length


def test_a_user_loop_is_fitted_to_whole_bars_and_a_poor_fit_refused():
    bar = BEATS_PER_BAR * 60 / 110 * RATE
    loop = loop_audio(110, np.zeros(int(2 * bar * 1.03)), RATE)
    assert len(loop) == round(2 * bar)
    with pytest.raises(RiffstreamError, match="not close to a whole number of bars"):
        loop_audio(110, np.zeros(int(1.5 * bar)), RATE)


def test_a_slot_with_no_tempo_has_no_loop():
    with pytest.raises(ValueError):
        LoopImages(PARAMS, WIDTH).image(Slot(0, 0, 412))


# ---------------------------------------------------------------- the stream's beat, end to end


def _arguments(cache, out, *args, duration="90") -> list:
    return ["drums", "--model", "tiny", "--width", str(WIDTH), "--steps", "2", "--no-progress", "--cache-dir", cache,
            "--duration", duration, "--no-play", "--out", out, *args]


def _render(cache, out, *args, duration="90"):
    command = [sys.executable, "-m", "riffstream", *map(str, _arguments(cache, out, *args, duration=duration))]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _seams(bpm, seconds):
    """(start, end) seconds of every seam's overlap in a render at ``bpm``."""
    layout = ClipLayout(PARAMS, WIDTH, 100, lambda _: bpm)
    n = clips_to_cover(PARAMS, WIDTH, 100, round(seconds * RATE), lambda _: bpm)
    slots = [layout.slot(i) for i in range(n)]
    return [(layout.seconds(b.start), layout.seconds(a.start + WIDTH)) for a, b in zip(slots, slots[1:])]


@pytest.mark.slow
@pytest.mark.parametrize("bpm", [128, 93])
def test_a_bpm_render_keeps_its_tempo_and_its_beat_across_every_seam(tiny_exported, tmp_path, bpm):
    out = tmp_path / "beat.wav"
    result = _render(tiny_exported, out, "--bpm", str(bpm), "--strength", "0")
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(out)
    fit = fit_beats(audio, rate, bpm)
    assert abs(fit.bpm / bpm - 1) < 0.01
    seams = _seams(bpm, len(audio) / rate)
    assert len(seams) >= 20
    two_beats = 120 / bpm
    across = [b - a for a, b in zip(fit.onsets, fit.onsets[1:]) if any(a < end and b > start for start, end in seams)]
    assert len(across) >= 20
    # Within half a 10-ms column, the grid's resolution: the tracker's own jitter is about 1 ms.
    assert np.max(np.abs(np.array(across) - two_beats)) <= 0.005
    # No drift: every kick is within half a column of the nominal grid through the first.
    assert np.max(np.abs(fit.drift(bpm))) <= 0.005


@pytest.mark.slow
def test_a_user_loop_with_bpm_replaces_the_drums(tiny_exported, tmp_path):
    bpm = 110
    # Two bars of a loop, recorded at 48 kHz and 1% long: fitted back to whole bars at 44.1 kHz.
    bar = BEATS_PER_BAR * 60 / bpm
    loop = drum_loop(bpm, 0, round(2 * bar * RATE), RATE)
    import scipy.signal

    recorded = scipy.signal.resample(loop, round(len(loop) * 48000 / RATE * 1.01))
    soundfile.write(tmp_path / "loop.flac", recorded, 48000)
    out = tmp_path / "looped.wav"
    result = _render(tiny_exported, out, "--bpm", str(bpm), "--strength", "0", "--init-audio",
                     str(tmp_path / "loop.flac"), duration="40")
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(out)
    assert abs(fit_beats(audio, rate, bpm).bpm / bpm - 1) < 0.01


@pytest.mark.slow
def test_tempo_locked_clips_run_through_the_model_on_the_grid(tiny_exported, tmp_path):
    out, folder = tmp_path / "model.wav", tmp_path / "clips"
    result = _render(tiny_exported, out, "--bpm", "137", "--strength", "0.5", "--save-spectrograms", str(folder),
                     duration="20")
    assert result.returncode == 0, result.stderr
    import json

    records = [json.loads(line) for line in (folder / "clips.jsonl").read_text().splitlines()]
    layout = ClipLayout(PARAMS, WIDTH, 100, lambda _: 137)
    assert [r["start"] for r in records] == [round(layout.seconds(layout.slot(n).start), 2) for n in range(len(records))]
    assert all(r["bpm"] == 137 for r in records)
    assert math.isclose(soundfile.info(out).duration, 20, abs_tol=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--bpm", "10"], "--bpm"),
    (["--bpm", "120", "--continuation"], "--continuation"),
    (["--strength", "0"], "--strength 0"),
    (["--bpm", "40", "--width", "128"], "no whole number of beats fits"),
])
def test_unusable_tempo_options_get_one_line(tiny_exported, tmp_path, args, message, capsys, no_model_load):
    assert_one_line_error(*run_cli(capsys, *_arguments(tiny_exported, tmp_path / "x.wav", *args, duration="10")), message)
    assert not (tmp_path / "x.wav").exists()


def test_a_loop_far_from_whole_bars_is_refused_naming_the_file(tiny_exported, tmp_path, capsys, no_model_load):
    soundfile.write(tmp_path / "odd.wav", drum_loop(120, 0, round(1.5 * 2 * RATE), RATE), RATE)
    line = assert_one_line_error(*run_cli(capsys, *_arguments(tiny_exported, tmp_path / "x.wav", "--bpm", "120",
                                                              "--init-audio", tmp_path / "odd.wav", duration="10")),
                                 "whole number of bars")
    assert "odd.wav" in line
