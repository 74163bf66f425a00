"""The stream's level on a long time scale: measured as EBU R128 measures it, corrected slowly.

One meter serves everything: libebur128 (through ``pyebur128``), the reference
implementation of ITU-R BS.1770 and EBU Tech 3341/3342. ``measure`` reports a finished
signal's integrated loudness, loudness range (LRA) and true peak. ``BlockMeter`` reads
the same library's momentary loudness at every 100-ms step of a stream, which gives the
energy of each of BS.1770's 400-ms gating blocks; ``gated_loudness`` gates any run of
them (the few lines of arithmetic the standard defines), so the follower can ask what a
window of the stream would measure at a candidate gain without filtering it again: a
gain scales a block's energy by its square.

``LoudnessFollower`` is the default policy. The stitcher carries each clip's level from
the one before across their shared overlap, so the stream's contour (crescendos, quiet
passages) is the music's own; the follower leaves it alone and corrects only slow drift:

- its gain tracks the gain that brings the last ``LONG_WINDOW`` seconds (five minutes) to
  the target, moving at most ``DRIFT_RATE`` dB a minute, so rises and falls shorter than
  a few minutes pass through almost untouched;
- wherever that would take the output's last five minutes more than ``HELD_BAND`` LU from
  the target (a long quiet piece after a loud one), it moves just enough to keep them in
  the band; a stream younger than the window has a wider band, narrowing as it fills, and
  moves at most ``YOUNG_CORRECTION_DB`` a clip to stay in it;
- one clip is never brought more than ``CLIP_CEILING`` LU over the target (a loud clip
  after a long quiet stretch is not blasted out);
- a look-ahead limiter holds true peaks under -1 dBTP, and what it takes from the
  loudness is counted, so the long-term loudness is that of what is heard.

The gain glides across each clip's body and is constant over its overlaps, so it never
steps at a seam. Everything here is numpy state, so a stitcher that holds a follower can
be copied (the consumer saves one at every clip to take a steer back to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyebur128
import scipy.ndimage
import scipy.signal

#: BS.1770's gating block, its step (75% overlap), and its absolute and relative gates.
BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0
#: True-peak ceiling in dBTP, the streaming services' and EBU R128's.
TRUE_PEAK_CEILING = -1.0
#: The limiter aims a little under the ceiling: samples at the ceiling can still peak
#: slightly above it between samples.
LIMITER_CEILING = TRUE_PEAK_CEILING - 0.2
#: Look-ahead of the peak limiter, in seconds.
LIMITER_LOOKAHEAD = 0.002
#: Seconds of output whose loudness the follower holds at the target: five minutes, the
#: span over which the stream is asked to be steady.
LONG_WINDOW = 300.0
#: How far, in LU, the last ``LONG_WINDOW`` seconds may stray from the target: within the
#: ±1 LU asked of every five minutes, less a margin for windows not ending at a clip's end.
HELD_BAND = 0.75
#: A stream younger than the window may stray this much further at its start, narrowing as
#: the window fills: a young stream's first minute may rise and fall with its music.
YOUNG_BAND = 2.0
#: Fastest the follower's own gain moves, dB per minute: slower than any musical gesture.
DRIFT_RATE = 1.5
#: Most the held window moves a clip's gain from the follower's, in dB.
HELD_CORRECTION_DB = 12.0
#: The same while the stream is younger than the window. Its band narrows as it fills, and
#: held all at once that narrowing dropped a rising orchestral piece by 6.7 dB inside one
#: clip at 3 3/4 minutes; the five-minute windows asked for begin only once it is full.
YOUNG_CORRECTION_DB = 2.0
#: Loudest one clip is brought, in LU over the target.
CLIP_CEILING = 4.0
#: Quietest the held window turns one clip down to, in LU under the target.
HELD_REACH = 4.0


def _energy_to_lufs(energy: np.ndarray | float) -> np.ndarray | float:
    """BS.1770's loudness (LUFS) of a K-weighted mean-square energy (or an array of them)."""
    with np.errstate(divide="ignore"):
        return -0.691 + 10 * np.log10(energy)


def gated_loudness(energies: np.ndarray) -> float:
    """BS.1770's gated loudness (LUFS) of 400-ms block energies (K-weighted mean square,
    summed over channels); NaN where no block passes the gates."""
    energies = np.asarray(energies, dtype=np.float64)
    level = _energy_to_lufs(energies)
    loud = energies[level > ABSOLUTE_GATE]
    if loud.size == 0:
        return float("nan")
    relative = _energy_to_lufs(loud.mean()) + RELATIVE_GATE
    return float(_energy_to_lufs(energies[(level > ABSOLUTE_GATE) & (level > relative)].mean()))


@dataclass(frozen=True)
class Loudness:
    """A signal's EBU R128 figures: integrated loudness (LUFS), loudness range (LU) and
    true peak (dBTP)."""

    integrated: float
    loudness_range: float
    true_peak: float


def measure(audio: np.ndarray, sample_rate: int) -> Loudness:
    """EBU R128 integrated loudness, loudness range and true peak of (channels, samples) or
    mono audio, by libebur128."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float64))
    mode = (pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_LRA
            | pyebur128.MeasurementMode.MODE_TRUE_PEAK)
    state = pyebur128.R128State(audio.shape[0], sample_rate, mode)
    frames = np.ascontiguousarray(audio.T).ravel()
    chunk = 60 * sample_rate * audio.shape[0]
    for start in range(0, frames.size, chunk):
        piece = frames[start : start + chunk]
        state.add_frames(piece, piece.size // audio.shape[0])
    peak = max(pyebur128.get_true_peak(state, channel) for channel in range(audio.shape[0]))
    with np.errstate(divide="ignore"):
        return Loudness(float(pyebur128.get_loudness_global(state)), float(pyebur128.get_loudness_range(state)),
                        float(20 * np.log10(peak)))


class BlockMeter:
    """The energies of BS.1770's 400-ms gating blocks of a continuous signal fed in pieces,
    one block every 100 ms on one grid from the signal's start.

    libebur128's momentary loudness is the loudness of the last 400 ms; read at each
    100-ms step it is exactly the gating block. The meter keeps the last half second of
    signal (numpy, so it can be copied) and primes a fresh libebur128 state with it for
    each piece: the K-weighting filters settle within it.
    """

    def __init__(self, sample_rate: int, channels: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.step = int(round(STEP_SECONDS * sample_rate))
        self.block = int(round(BLOCK_SECONDS * sample_rate))
        self._kept = int(round(0.5 * sample_rate))
        self._recent = np.zeros((channels, 0))
        self._seen = 0  # samples fed since the start

    def add(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed (channels, n) audio; return the energies of the blocks it completes and,
        for each, the index in ``audio`` of the block's middle (negative where it lies in
        audio fed before)."""
        audio = np.asarray(audio, dtype=np.float64)
        state = pyebur128.R128State(self.channels, self.sample_rate, pyebur128.MeasurementMode.MODE_M)
        self._feed(state, self._recent)
        first = (-self._seen) % self.step or self.step  # samples into ``audio`` of its first step's end
        ends = np.arange(first, audio.shape[-1] + 1, self.step)
        energies, start = [], 0
        for end in ends:
            self._feed(state, audio[:, start:end])
            start = end
            energies.append(10 ** ((pyebur128.get_loudness_momentary(state) + 0.691) / 10))
        self._feed(state, audio[:, start:])
        complete = self._seen + ends >= self.block
        self._seen += audio.shape[-1]
        self._recent = np.concatenate([self._recent, audio], axis=1)[:, -self._kept :]
        return np.array(energies)[complete], (ends - self.block // 2)[complete]

    def _feed(self, state: pyebur128.R128State, audio: np.ndarray) -> None:
        if audio.shape[-1]:
            state.add_frames(np.ascontiguousarray(audio.T).ravel(), audio.shape[-1])


def true_peak(audio: np.ndarray) -> np.ndarray:
    """Per-sample true-peak estimate (4x oversampling, as BS.1770), max over channels."""
    upsampled = np.abs(scipy.signal.resample_poly(audio, 4, 1, axis=-1))
    return upsampled[..., : audio.shape[-1] * 4].reshape(*audio.shape[:-1], -1, 4).max(axis=-1).max(axis=0)


def limit_peaks(audio: np.ndarray, sample_rate: int, ceiling_db: float = TRUE_PEAK_CEILING) -> np.ndarray:
    """Smooth look-ahead gain reduction so that true peaks stay under ``ceiling_db``.

    Fast on purpose: the gain dips for a few milliseconds around each peak. Measured on
    dynamic music brought to -14 LUFS (peaks 4 to 7 dB over the ceiling): a mastering
    limiter's slower release (20 to 80 ms) lost 1 to 2.5 dB of spectral convergence, as
    it turned whole passages down with every peak. A clipper before it gained 4 to 6 dB,
    but a plain one splattered above 13 kHz (heard as clicks), and one band-limited to
    10 kHz moved the beats at a tempo-locked stream's seams by 6 ms, so neither is used.
    """
    ceiling = 10 ** (ceiling_db / 20)
    needed = np.minimum(1.0, ceiling / np.maximum(true_peak(audio), 1e-12))
    if needed.min() >= 1.0:
        return audio
    half = max(1, int(LIMITER_LOOKAHEAD * sample_rate))
    # A minimum filter wider than the smoothing window keeps every peak under the ceiling.
    gain = scipy.ndimage.uniform_filter1d(scipy.ndimage.minimum_filter1d(needed, 4 * half + 1), 2 * half + 1)
    return np.clip(audio * gain, -ceiling, ceiling).astype(np.float32)


class LoudnessFollower:
    """The default loudness policy (see the module's docstring): a slow gain that holds the
    stream's long-term loudness at ``target`` LUFS, the music's own contour kept, then the
    true-peak limiter. Feed it each clip in order with ``level``."""

    def __init__(self, target: float, sample_rate: int, channels: int) -> None:
        self.target = target
        self.sample_rate = sample_rate
        self._meter = BlockMeter(sample_rate, channels)
        self._blocks = int(round(LONG_WINDOW / STEP_SECONDS))
        # The last LONG_WINDOW seconds' block energies: as the music came (before the
        # follower's gain), as heard (gain and limiter), and before the limiter.
        self._music = np.zeros(0)
        self._heard = np.zeros(0)
        self._unlimited = np.zeros(0)
        self._gain_db: float | None = None  # the gain at the end of the last clip

    @property
    def gain_db(self) -> float | None:
        """The follower's gain at the end of the last clip, dB (None before any clip)."""
        return self._gain_db

    def level(self, audio: np.ndarray, lead: int, tail: int) -> np.ndarray:
        """One clip's (channels, n) audio at the follower's gain, true peaks limited.

        The gain is the last clip's over the first ``lead`` samples (the crossfade with
        it), glides in dB across the body and holds over the last ``tail`` samples.
        """
        new = audio[:, lead:]
        music, middles = self._meter.add(new)
        gain = self._preferred(music, new.shape[-1] / self.sample_rate)
        start = gain if self._gain_db is None else self._gain_db
        # The gain in dB is start + (end - start) * glide: the glide is worked out once, and
        # a candidate end gain is tried on the blocks' middles alone.
        glide = _glide(audio.shape[-1], lead, tail)
        glide_at_blocks = glide[np.clip(middles + lead, 0, audio.shape[-1] - 1)]

        def heard_with(end_db: float, kept: np.ndarray) -> float:
            blocks = music * 10 ** ((start + (end_db - start) * glide_at_blocks) / 10) * kept
            return gated_loudness(np.concatenate([self._heard, blocks])[-self._blocks :])

        young = 1.0 - min(1.0, (self._heard.size + music.size) / self._blocks)  # the window's unfilled share
        band = HELD_BAND + YOUNG_BAND * young
        most = YOUNG_CORRECTION_DB if young > 0 else HELD_CORRECTION_DB
        clip_loudness = gated_loudness(music)
        # The held window may move this clip no further than HELD_REACH past the target, nor
        # past the ceiling: a block far under the window is gated out of it, so turning it
        # down further would not bring the window back, only the music down.
        reach = (self.target - HELD_REACH - clip_loudness, self.target + CLIP_CEILING - clip_loudness) if (
            np.isfinite(clip_loudness)) else (-np.inf, np.inf)
        preferred = min(gain, reach[1])
        kept = np.ones_like(music)  # the share of each block's energy the limiter leaves
        for _ in range(2):
            gain = _hold(lambda value: heard_with(value, kept), preferred, self.target, band, reach, most)
            unlimited = audio * (10 ** ((start + (gain - start) * glide) / 20)).astype(np.float32)
            limited = limit_peaks(unlimited, self.sample_rate, LIMITER_CEILING)
            kept = _kept_energy(unlimited[:, lead:], limited[:, lead:], middles, self._meter.block)
            if not abs(heard_with(gain, kept) - self.target) > band or np.all(kept > 0.99):
                break
        scale = 10 ** ((start + (gain - start) * glide_at_blocks) / 10)
        self._music = np.concatenate([self._music, music])[-self._blocks :]
        self._unlimited = np.concatenate([self._unlimited, music * scale])[-self._blocks :]
        self._heard = np.concatenate([self._heard, music * scale * kept])[-self._blocks :]
        self._gain_db = gain
        return limited

    def _preferred(self, music: np.ndarray, seconds: float) -> float:
        """The follower's own gain for a clip of ``seconds`` whose blocks are ``music``:
        towards the gain that brings the last five minutes (this clip's included) to the
        target once the limiter's share is counted, at most ``DRIFT_RATE`` dB a minute."""
        window = np.concatenate([self._music, music])[-self._blocks :]
        taken = gated_loudness(self._unlimited) - gated_loudness(self._heard)
        aim = self.target - gated_loudness(window) + (taken if np.isfinite(taken) else 0.0)
        if self._gain_db is None:
            return aim if np.isfinite(aim) else 0.0
        if not np.isfinite(aim):
            return self._gain_db
        step = DRIFT_RATE * seconds / 60
        return self._gain_db + float(np.clip(aim - self._gain_db, -step, step))


def _kept_energy(unlimited: np.ndarray, limited: np.ndarray, middles: np.ndarray, block: int) -> np.ndarray:
    """The share of each 400-ms block's energy (blocks centred at ``middles``) that the
    limiter left. Unweighted: the limiter's gain is broadband, so the K-weighted share is
    the same to within a few hundredths of a dB."""
    before = np.concatenate([[0.0], np.cumsum(np.square(unlimited, dtype=np.float64).sum(axis=0))])
    after = np.concatenate([[0.0], np.cumsum(np.square(limited, dtype=np.float64).sum(axis=0))])
    low = np.clip(middles - block // 2, 0, unlimited.shape[-1])
    high = np.clip(middles + block // 2, 0, unlimited.shape[-1])
    spent = before[high] - before[low]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spent > 0, (after[high] - after[low]) / spent, 1.0)


def _hold(loudness: Callable[[float], float], gain_db: float, target: float, band: float,
          reach: tuple[float, float], most: float) -> float:
    """``gain_db``, or the gain nearest it at which ``loudness`` lies within ``band`` LU of
    ``target``, searched within ``most`` dB of it and within ``reach`` (loudness rises with
    the gain); the end of that range where no gain in it does."""
    level = loudness(gain_db)
    if not np.isfinite(level) or abs(level - target) <= band:
        return gain_db
    goal = target + np.sign(level - target) * band
    if level > goal:
        low, high = max(gain_db - most, reach[0]), gain_db
    else:
        low, high = gain_db, min(gain_db + most, reach[1])
    if low >= high:
        return gain_db
    for _ in range(14):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if loudness(middle) < goal else (low, middle)
    return 0.5 * (low + high)


def _glide(length: int, lead: int, tail: int) -> np.ndarray:
    """How far a clip's gain has moved from the last clip's to its own, per sample, 0 to 1:
    0 over the first ``lead`` samples, rising linearly across the body, 1 over the last
    ``tail``."""
    body = max(length - lead - tail, 1)
    return np.concatenate([np.zeros(lead), np.linspace(0.0, 1.0, body, endpoint=False),
                           np.ones(max(length - lead - body, 0))])[:length]
