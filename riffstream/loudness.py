"""Integrated loudness (ITU-R BS.1770) of a stream's last minute, fast enough to solve for a gain.

The stitcher keeps every 60-s stretch of its output within a band around the target: for
each clip it needs the loudness of the last 60 s as it would be with the clip at several
candidate gains. pyloudnorm measures one whole signal at a time (about 50 ms for 60 s on
two cores, so a gain search would cost half a second a clip). K-weighting is linear and a
clip's gain changes slowly, so here the weighted power of the output is kept as it is
produced, and a candidate gain only rescales the new clip's part: about a millisecond an
evaluation. The weighting filters are pyloudnorm's, and ``test_loudness.py`` holds the
result to pyloudnorm's meter.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyloudnorm
import scipy.signal

#: BS.1770's gating block, its step (75% overlap), and its absolute and relative gates.
BLOCK_SECONDS = 0.4
STEP_SECONDS = 0.1
ABSOLUTE_GATE = -70.0
RELATIVE_GATE = -10.0


def k_weighting(sample_rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (b, a) pairs of BS.1770's K-weighting at ``sample_rate``, as pyloudnorm's meter builds them."""
    stages = [pyloudnorm.IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              pyloudnorm.IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")]
    return [(stage.b, stage.a) for stage in stages]


def integrated_loudness(power: np.ndarray, sample_rate: int) -> float:
    """Gated integrated loudness (LUFS) of K-weighted power per sample, summed over channels.

    NaN where no block passes the gates, or the signal is shorter than one block.
    """
    block, step = int(BLOCK_SECONDS * sample_rate), int(STEP_SECONDS * sample_rate)
    if power.size < block:
        return float("nan")
    total = np.concatenate([[0.0], np.cumsum(power, dtype=np.float64)])
    starts = np.arange(0, power.size - block + 1, step)
    return _gated_loudness((total[starts + block] - total[starts]) / block)


def _gated_loudness(energy: np.ndarray) -> float:
    """BS.1770's gated loudness of blocks' mean K-weighted power."""
    with np.errstate(divide="ignore"):
        level = -0.691 + 10 * np.log10(energy)
    loud = energy[level > ABSOLUTE_GATE]
    if loud.size == 0:
        return float("nan")
    relative = -0.691 + 10 * np.log10(loud.mean()) + RELATIVE_GATE
    return float(-0.691 + 10 * np.log10(energy[(level > ABSOLUTE_GATE) & (level > relative)].mean()))


class LoudnessWindow:
    """The K-weighted power of the last ``seconds`` of a stream's output."""

    def __init__(self, sample_rate: int, seconds: float) -> None:
        self.sample_rate = sample_rate
        self.size = int(seconds * sample_rate)
        self._filters = k_weighting(sample_rate)
        self._power = np.zeros(0)

    @property
    def filled(self) -> float:
        """How much of the window the stream has filled so far, 0 to 1."""
        return self._power.size / self.size

    def weigh(self, audio: np.ndarray) -> np.ndarray:
        """K-weighted power per sample, summed over channels, of (channels, samples) audio."""
        weighted = audio.astype(np.float64)
        for b, a in self._filters:
            weighted = scipy.signal.lfilter(b, a, weighted, axis=-1)
        return np.square(weighted).sum(axis=0)

    def loudness_after(self, samples: int) -> Callable[[np.ndarray], float]:
        """The window's loudness as a function of the power (from ``weigh``) of the next
        ``samples`` samples. The blocks that lie wholly in the kept part are summed once, so
        each call costs only the new part's."""
        block, step = int(BLOCK_SECONDS * self.sample_rate), int(STEP_SECONDS * self.sample_rate)
        samples = min(samples, self.size)
        recent = self._power[self._power.size - (self.size - samples) :] if samples < self.size else self._power[:0]
        length = recent.size + samples
        if length < block:
            return lambda power: float("nan")
        total = np.concatenate([[0.0], np.cumsum(recent, dtype=np.float64)])
        starts = np.arange(0, length - block + 1, step)
        kept = starts + block <= recent.size
        kept_energy = total[starts[kept] + block] - total[starts[kept]]
        moving = starts[~kept]
        from_recent = total[-1] - total[np.minimum(moving, recent.size)]
        first, last = np.maximum(moving - recent.size, 0), moving + block - recent.size

        def loudness(power: np.ndarray) -> float:
            new = np.concatenate([[0.0], np.cumsum(power[-samples:], dtype=np.float64)])
            return _gated_loudness(np.concatenate([kept_energy, from_recent + new[last] - new[first]]) / block)

        return loudness

    def push(self, power: np.ndarray) -> None:
        """Append the power (from ``weigh``) of the stream's next output."""
        self._power = np.concatenate([self._power, power])[-self.size :]
