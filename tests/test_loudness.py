"""The stitcher's fast loudness window, held to pyloudnorm's meter on real music."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest

from riffstream.loudness import LoudnessWindow, integrated_loudness
from tests.realmusic import music_or_skip

RATE = 44100


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return music_or_skip(30.0, offset=20.0, track="frontiers")


def meter(audio: np.ndarray) -> float:
    return float(pyloudnorm.Meter(RATE).integrated_loudness(audio.T.astype(np.float64)))


@pytest.mark.slow
def test_integrated_loudness_of_weighted_power_matches_pyloudnorm_on_real_music(music: np.ndarray) -> None:
    stereo = np.stack([music, 0.5 * np.roll(music, 3000)])
    window = LoudnessWindow(RATE, 60.0)
    for audio in (music[None], stereo, 0.01 * stereo):
        assert integrated_loudness(window.weigh(audio), RATE) == pytest.approx(meter(audio), abs=0.02)


@pytest.mark.slow
def test_a_candidate_gain_is_measured_as_the_gained_audio_would_be(music: np.ndarray) -> None:
    window = LoudnessWindow(RATE, 20.0)
    first, second = music[None, : 15 * RATE], music[None, 15 * RATE :]
    window.push(window.weigh(0.5 * first))
    assert window.filled == pytest.approx(0.75)
    for end in (0.25, 2.0):
        gain = np.exp(np.linspace(np.log(0.5), np.log(end), second.shape[-1]))
        heard = np.concatenate([0.5 * first, second * gain], axis=1)[:, -20 * RATE :]
        assert window.loudness_with(window.weigh(second) * gain**2) == pytest.approx(meter(heard), abs=0.05)


@pytest.mark.slow
def test_the_window_keeps_a_minute_whatever_the_stream_has_played(music: np.ndarray) -> None:
    window = LoudnessWindow(RATE, 10.0)
    quiet = window.weigh(0.01 * music[None, : 7 * RATE + 123])
    for _ in range(3):  # 21 s of quiet music: only the last 10 s count
        window.push(quiet)
    loud = window.weigh(music[None, 7 * RATE : 10 * RATE])
    heard = np.concatenate([0.01 * music[: 7 * RATE + 123], music[7 * RATE : 10 * RATE]])[None, -10 * RATE :]
    assert window.filled == 1.0
    assert window.loudness_with(loud) == pytest.approx(meter(heard), abs=0.05)


def test_silence_and_audio_shorter_than_a_block_have_no_loudness() -> None:
    window = LoudnessWindow(RATE, 60.0)
    assert np.isnan(integrated_loudness(window.weigh(np.zeros((1, RATE))), RATE))
    assert np.isnan(integrated_loudness(window.weigh(np.ones((1, 100))), RATE))
