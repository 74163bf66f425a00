"""The loudness module: its block meter held to libebur128's own integrated loudness, its
limiter to libebur128's true peak, and the follower's policy on real music: the music's
rises and falls kept, slow drift corrected, every five minutes near the target."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.signal

from riffstream.loudness import (
    DRIFT_RATE,
    LIMITER_CEILING,
    TRUE_PEAK_CEILING,
    YOUNG_CORRECTION_DB,
    BlockMeter,
    LoudnessFollower,
    gated_loudness,
    limit_peaks,
    measure,
    true_peak,
)
from tests.realmusic import music_or_skip

RATE = 44100
CLIP = 4 * RATE  # the follower is fed 4-s clips with 0.5-s overlaps, as the stitcher feeds it
OVERLAP = RATE // 2


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return music_or_skip(30.0, offset=20.0, track="frontiers")


def blocks_of(audio: np.ndarray, pieces: list[int]) -> np.ndarray:
    meter, start, found = BlockMeter(RATE, audio.shape[0]), 0, []
    for size in pieces:
        found.append(meter.add(audio[:, start : start + size])[0])
        start += size
    return np.concatenate(found)


@pytest.mark.slow
def test_gated_blocks_fed_in_pieces_match_libebur128s_integrated_loudness(music: np.ndarray) -> None:
    stereo = np.stack([music, 0.5 * np.roll(music, 3000)])
    for audio in (music[None], stereo, 0.01 * stereo):
        pieces = [12345, 4410, 1, 200000, audio.shape[-1]]  # sizes off the 100-ms grid on purpose
        assert gated_loudness(blocks_of(audio, pieces)) == pytest.approx(measure(audio, RATE).integrated, abs=0.01)


@pytest.mark.slow
def test_a_copied_meter_goes_on_as_the_original_would(music: np.ndarray) -> None:
    meter = BlockMeter(RATE, 1)
    meter.add(music[None, : 7 * RATE + 77])
    saved = copy.deepcopy(meter)
    later = music[None, 7 * RATE + 77 : 12 * RATE]
    np.testing.assert_array_equal(meter.add(later)[0], saved.add(later)[0])


def test_silence_and_audio_shorter_than_a_block_have_no_loudness() -> None:
    assert np.isnan(gated_loudness(BlockMeter(RATE, 1).add(np.zeros((1, RATE)))[0]))
    assert BlockMeter(RATE, 1).add(np.ones((1, RATE // 5)))[0].size == 0


@pytest.mark.slow
def test_the_limiter_holds_libebur128s_true_peak_under_the_ceiling(music: np.ndarray) -> None:
    loud = (music * 10 ** (12 / 20) / np.abs(music).max())[None].astype(np.float32)  # peaks at +12 dBFS
    # The stitcher aims 0.2 dB under the ceiling: libebur128's interpolator reads some
    # peaks up to 0.06 dB higher than our 4x estimate.
    limited = limit_peaks(loud, RATE, LIMITER_CEILING)
    assert measure(limited, RATE).true_peak <= TRUE_PEAK_CEILING
    # Limiting it 13 dB adds nothing above 13 kHz, where the stream holds no music (a clipper's
    # splatter there reached 0.16, heard as clicks).
    high_pass = scipy.signal.butter(8, 13000, "highpass", fs=RATE, output="sos")

    def above(audio: np.ndarray) -> float:
        return float(np.abs(scipy.signal.sosfiltfilt(high_pass, audio[0].astype(np.float64))[RATE:-RATE]).max())

    assert above(limited) <= above(loud) + 1e-4
    # Our 4x true-peak estimate agrees with libebur128's within a few tenths of a dB.
    assert 20 * np.log10(true_peak(music[None]).max()) == pytest.approx(measure(music, RATE).true_peak, abs=0.3)
    # Below the ceiling the limiter leaves the audio alone.
    quiet = 0.5 * loud / np.abs(loud).max() * 10 ** (-3 / 20)
    np.testing.assert_array_equal(limit_peaks(quiet, RATE, -1.0), quiet)


def follow(audio: np.ndarray, target: float = -14.0) -> tuple[np.ndarray, list[float]]:
    """``audio`` (mono) fed to a follower as overlapping clips, overlaps crossfaded linearly;
    the output and the follower's gain after each clip."""
    follower, out, gains, start = LoudnessFollower(target, RATE, 1), [], [], 0
    tail = np.zeros((1, 0), np.float32)
    while start + CLIP <= audio.size:
        lead = tail.shape[-1]
        clip = follower.level(audio[None, start : start + CLIP].astype(np.float32), lead, OVERLAP)
        fade = np.linspace(0.0, 1.0, lead)
        out.append(tail * (1 - fade) + clip[:, :lead] * fade)
        out.append(clip[:, lead : CLIP - OVERLAP])
        tail = clip[:, CLIP - OVERLAP :]
        gains.append(follower.gain_db)
        start += CLIP - OVERLAP
    return np.concatenate(out + [tail], axis=1)[0], gains


def loudness_at(audio: np.ndarray, start: float, seconds: float) -> float:
    return measure(audio[int(start * RATE) : int((start + seconds) * RATE)], RATE).integrated


@pytest.mark.slow
def test_a_crescendo_over_30_seconds_survives_the_default_policy(music: np.ndarray) -> None:
    # Music at -14 LUFS for 30 s, then a 10-dB crescendo over the next 30 s.
    level = music / 10 ** ((measure(music, RATE).integrated + 14) / 20)
    rise = 10 ** (np.linspace(0, 10, level.size) / 20)
    audio = np.concatenate([level[: 30 * RATE], level * rise * 0.5])  # 6 dB down, rising to +4
    heard, gains = follow(audio * np.float32(0.3))  # and arrives 10 dB too quiet
    played = measure(audio[30 * RATE :][-5 * RATE :], RATE).integrated - measure(audio[30 * RATE :][: 5 * RATE],
                                                                                   RATE).integrated
    kept = loudness_at(heard, 55, 5) - loudness_at(heard, 30, 5)
    assert kept == pytest.approx(played, abs=1.5)  # the crescendo's 10 dB are heard
    assert loudness_at(heard, 0, 25) == pytest.approx(-14.0, abs=1.0)  # the start was brought to the target
    assert max(np.abs(np.diff(gains))) < 1.0  # and the gain never jumps from clip to clip


@pytest.mark.slow
def test_slow_drift_is_corrected_and_every_five_minutes_stay_within_1_lu(music: np.ndarray) -> None:
    # Twelve minutes that sink by 12 dB, as a stream wandering to quieter prompts does.
    minutes = 12
    source = np.tile(music, int(np.ceil(minutes * 60 * RATE / music.size)))[: minutes * 60 * RATE]
    source = source * 10 ** (np.linspace(0, -12, source.size) / 20) * 0.2
    heard, _ = follow(source)
    windows = [loudness_at(heard, start, 300) for start in range(0, int(heard.size / RATE) - 300, 20)]
    assert max(abs(np.array(windows) + 14.0)) <= 1.0
    assert measure(heard, RATE).true_peak <= -1.0


@pytest.mark.slow
def test_a_young_stream_rising_for_minutes_is_held_back_a_little_at_a_time(music: np.ndarray) -> None:
    # Almost five minutes rising by 6 dB from the target: the young stream's band narrows as
    # its window fills, and holding it all at once dropped the gain by 4.7 dB inside a clip.
    seconds = 290
    source = np.tile(music, int(np.ceil(seconds * RATE / music.size)))[: seconds * RATE]
    source = source * 10 ** (np.linspace(0, 6, source.size) / 20)
    source = source / 10 ** ((measure(source[: 10 * RATE], RATE).integrated + 16) / 20)
    heard, gains = follow(source, target=-16.0)
    assert gains[-1] < gains[0] - 4.0  # the rise was held back
    assert max(np.abs(np.diff(gains))) <= YOUNG_CORRECTION_DB + DRIFT_RATE * CLIP / RATE / 60 + 0.05
    assert measure(heard, RATE).true_peak <= -1.0
