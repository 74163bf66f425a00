"""Stitching clips into one stream: length, coherent crossfades, seams and loudness on real music."""

from __future__ import annotations


import numpy as np
import pyloudnorm
import pytest
from PIL import Image

from riffstream import SpectrogramParams, audio_to_image
from riffstream.errors import RiffstreamError
from riffstream.stitch import ClipStitcher, crossfade, overlap_frames, stitch_images, stitched_length, true_peak
from tests.realmusic import music_or_skip, windows_as_images

PARAMS = SpectrogramParams()
WIDTH = 512


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return music_or_skip(16.0, offset=30.0, track="frontiers")


def seam_error_db(original: np.ndarray, stitched: np.ndarray, seams: list[int], near: bool) -> float:
    """Spectral convergence over 50-ms blocks near (<= 250 ms) or far (> 1 s) from the seams."""
    block = 2205
    n = min(original.size, stitched.size) // block * block
    ref = np.abs(np.fft.rfft(original[:n].reshape(-1, block) * np.hanning(block), axis=1))
    rec = np.abs(np.fft.rfft(stitched[:n].reshape(-1, block) * np.hanning(block), axis=1))
    gain = np.sum(ref * rec) / np.sum(rec * rec)
    centres = (np.arange(n // block) + 0.5) * block
    distance = np.min(np.abs(centres[:, None] - np.array(seams)[None, :]), axis=1) / 44100
    mask = distance <= 0.25 if near else distance > 1.0
    mask[:4] = mask[-4:] = False
    return float(10 * np.log10(np.sum((ref - gain * rec)[mask] ** 2) / np.sum(ref[mask] ** 2)))


def test_stitched_length_is_clips_minus_overlaps() -> None:
    t = np.arange(6 * 44100) / 44100
    image = audio_to_image(0.2 * np.sin(2 * np.pi * 330 * t), 44100).crop((0, 0, WIDTH, 512))
    stitcher = ClipStitcher(PARAMS, crossfade=0.5)
    parts = [stitcher.add(image) for _ in range(3)] + [stitcher.finish()]
    assert [p.shape[1] for p in parts] == [(512 - 50) * 441] * 3 + [50 * 441]
    assert sum(p.shape[1] for p in parts) == stitched_length(512 * 441, 3, 50 * 441)
    assert overlap_frames(PARAMS, 0.5) == 50


def test_crossfade_of_identical_signals_is_transparent_and_of_unrelated_ones_keeps_power() -> None:
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((1, 22050)).astype(np.float32)
    np.testing.assert_allclose(crossfade(signal, signal), signal, rtol=1e-5, atol=1e-6)
    other = rng.standard_normal((1, 22050)).astype(np.float32)
    mixed = crossfade(signal, other)
    middle = slice(9000, 13000)
    assert np.mean(mixed[0, middle] ** 2) == pytest.approx(1.0, abs=0.08)


def test_phase_continuation_makes_seams_like_the_interior_on_real_music(music: np.ndarray) -> None:
    overlap = overlap_frames(PARAMS, 0.5)
    images = windows_as_images(music, PARAMS, 3, overlap)
    step = (WIDTH - overlap) * PARAMS.hop_length
    seams = [k * step + overlap * PARAMS.hop_length // 2 for k in (1, 2)]
    joined = stitch_images(images, PARAMS, crossfade=0.5, loudness=None)[0]
    spliced = stitch_images(images, PARAMS, crossfade=0.5, loudness=None, continuity=False)[0]
    assert joined.size == stitched_length(WIDTH * 441, 3, overlap * 441)
    continued_gap = seam_error_db(music, joined, seams, True) - seam_error_db(music, joined, seams, False)
    independent_gap = seam_error_db(music, spliced, seams, True) - seam_error_db(music, spliced, seams, False)
    assert continued_gap < 2.0
    assert independent_gap > continued_gap + 3.0


def test_loudness_holds_minus_14_lufs_and_true_peak_under_minus_1_dbtp_on_real_music(music: np.ndarray) -> None:
    overlap = overlap_frames(PARAMS, 0.5)
    quiet = music * 0.05  # far too quiet on purpose
    images = windows_as_images(quiet, PARAMS, 3, overlap)
    audio = stitch_images(images, PARAMS, crossfade=0.5)[0]
    meter = pyloudnorm.Meter(44100)
    step = (WIDTH - overlap) * PARAMS.hop_length
    for k in range(3):
        assert meter.integrated_loudness(audio[k * step : k * step + WIDTH * 441].astype(np.float64)) == pytest.approx(
            -14.0, abs=1.0)
    assert 20 * np.log10(true_peak(audio[None]).max()) < -1.0


def test_clips_with_other_spectrogram_parameters_are_refused() -> None:
    stitcher = ClipStitcher(PARAMS)
    image = Image.new("RGB", (128, 256), (100, 100, 100))
    image.getexif()[11040] = 256
    with pytest.raises(RiffstreamError, match="same spectrogram parameters"):
        stitcher.add(image)
