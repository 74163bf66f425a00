"""Stitching clips into one stream: length, coherent crossfades, seams and loudness on real music."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from riffstream import SpectrogramParams, audio_to_image
from riffstream.errors import RiffstreamError
from riffstream.loudness import measure
from riffstream.stitch import DEFAULT_LOUDNESS, ClipStitcher, crossfade, overlap_frames, stitch_images, stitched_length
from tests.fidelity import seam_report
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_far_too_quiet_stream_is_brought_to_the_default_target_with_true_peaks_under_minus_1_dbtp(
        music: np.ndarray) -> None:
    overlap = overlap_frames(PARAMS, 0.5)
    images = windows_as_images(music * 0.05, PARAMS, 3, overlap)
    heard = measure(stitch_images(images, PARAMS, crossfade=0.5), 44100)
    assert heard.integrated == pytest.approx(DEFAULT_LOUDNESS, abs=1.0)
    assert heard.true_peak <= -1.0


def test_clips_with_other_spectrogram_parameters_are_refused() -> None:
    stitcher = ClipStitcher(PARAMS)
    image = Image.new("RGB", (128, 256), (100, 100, 100))
    image.getexif()[11040] = 256
    with pytest.raises(RiffstreamError, match="same spectrogram parameters"):
        stitcher.add(image)


def clip_loudness(audio: np.ndarray, clips: int, overlap: int) -> np.ndarray:
    """Integrated loudness of each clip's stretch of a stitched (or original) signal, LUFS."""
    step = (WIDTH - overlap) * PARAMS.hop_length
    return np.array([measure(audio[k * step : k * step + WIDTH * 441], 44100).integrated for k in range(clips)])


@pytest.mark.slow
def test_level_follows_the_music_across_seams_when_images_carry_none(music: np.ndarray) -> None:
    # A 12-dB crescendo cut into images that all record one level (the first window's), as
    # level-less images do: every image alone looks equally loud.
    overlap = overlap_frames(PARAMS, 1.0)
    rising = music * np.float64(10 ** (np.linspace(-12, 0, music.size) / 20))
    first = windows_as_images(rising, PARAMS, 1, overlap)[0].getexif()[11080]
    images = windows_as_images(rising, PARAMS, 3, overlap, level=False)
    for image in images:
        image.getexif()[11080] = first
    audio = stitch_images(images, PARAMS, crossfade=1.0, loudness=None)[0]
    heard, played = clip_loudness(audio, 3, overlap), clip_loudness(rising, 3, overlap)
    np.testing.assert_allclose(np.diff(heard), np.diff(played), atol=1.0)
    assert heard[-1] - heard[0] > 6.0


@pytest.mark.slow
def test_whole_stream_of_levelless_images_stays_faithful_with_default_options(music: np.ndarray) -> None:
    overlap = overlap_frames(PARAMS, 1.0)
    images = windows_as_images(music, PARAMS, 3, overlap, level=False)
    audio = stitch_images(images, PARAMS)[0]
    step = (WIDTH - overlap) * PARAMS.hop_length
    seams = np.array([k * step + overlap * PARAMS.hop_length / 2 for k in (1, 2)])
    report = seam_report(music[: audio.size], audio, seams, 44100)
    assert report["sc_db"] < -16.0
    assert report["seam_minus_interior_db"] < 1.0


@pytest.mark.slow
def test_unrelated_clips_of_arbitrary_level_come_out_steady(music: np.ndarray) -> None:
    # Clips that share no sound (as independently generated ones), each at its own level.
    overlap = overlap_frames(PARAMS, 0.5)
    other = music_or_skip(16.0, offset=20.0, track="tt2")
    pieces = [(music if k % 2 else other)[k * 30000 : k * 30000 + WIDTH * 441] * gain
              for k, gain in enumerate((1.0, 0.05, 0.5, 0.02, 1.0))]
    images = []
    for piece, level in zip(pieces, (1.0, 0.2, 3.0, 0.1, 5.0)):
        full = audio_to_image(piece, 44100)
        images.append(full.crop((0, 0, WIDTH, 512)))
        images[-1].getexif()[11080] = full.getexif()[11080] * level  # a meaningless level, as a model's
    audio = stitch_images(images, PARAMS, crossfade=0.5)[0]
    assert np.all(np.abs(clip_loudness(audio, 5, overlap) - DEFAULT_LOUDNESS) <= 1.5)
    assert measure(audio, 44100).true_peak <= -1.0


@pytest.mark.slow
def test_a_fading_pieces_loudness_range_survives_and_its_whole_meets_the_target() -> None:
    # The close of an orchestral track, which fades for two minutes: the old 20-s follower
    # levelled the fade, and a 60-s band held every minute flat.
    overlap = overlap_frames(PARAMS, 1.0)
    clips = 36
    music = music_or_skip(stitched_length(WIDTH * 441, clips, overlap * 441) / 44100, offset=275.0,
                          track="frontiers")
    audio = stitch_images(windows_as_images(music, PARAMS, clips, overlap, level=False), PARAMS)[0]
    original, heard = measure(music, 44100), measure(audio, 44100)
    assert original.loudness_range > 5.0  # a dynamic piece, or this test shows nothing
    assert heard.loudness_range == pytest.approx(original.loudness_range, abs=1.0)
    assert heard.integrated == pytest.approx(DEFAULT_LOUDNESS, abs=1.0)
    assert heard.true_peak <= -1.0
