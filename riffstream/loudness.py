"""Integrated loudness (ITU-R BS.1770) of a stream's last minute, fast enough to solve for a gain.

The stitcher keeps every 60-s stretch of its output within a band around the target: for
each clip it needs the loudness of the last 60 s as it would be with the clip at several
candidate gains. pyloudnorm measures one whole signal at a time (about 50 ms for 60 s on
two cores, so a gain search would cost half a second a clip). K-weighting is linear and a
clip's gain changes slowly, so here the weighted power of the output is kept as it is
produced, summed over BS.1770's 100-ms block steps, and a candidate gain only rescales the
new clip's part: about a millisecond an evaluation. The weighting filters are pyloudnorm's,
and ``test_loudness.py`` holds the result to pyloudnorm's meter.
"""

from __future__ import annotations

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
    step = int(STEP_SECONDS * sample_rate)
    return _gated_loudness(_step_sums(power, step), step)


def _step_sums(power: np.ndarray, step: int) -> np.ndarray:
    """Sums of ``power`` over its whole ``step``-sample steps (a last partial step is left out)."""
    whole = power.size // step * step
    return power[:whole].reshape(-1, step).sum(axis=1, dtype=np.float64)


def _gated_loudness(steps: np.ndarray, step: int) -> float:
    """BS.1770's gated loudness of the 400-ms blocks made of every four consecutive 100-ms
    step sums (``step`` samples each)."""
    span = int(round(BLOCK_SECONDS / STEP_SECONDS))
    if steps.size < span:
        return float("nan")
    total = np.concatenate([[0.0], np.cumsum(steps)])
    energy = (total[span:] - total[:-span]) / (span * step)
    with np.errstate(divide="ignore"):
        level = -0.691 + 10 * np.log10(energy)
    loud = energy[level > ABSOLUTE_GATE]
    if loud.size == 0:
        return float("nan")
    relative = -0.691 + 10 * np.log10(loud.mean()) + RELATIVE_GATE
    return float(-0.691 + 10 * np.log10(energy[(level > ABSOLUTE_GATE) & (level > relative)].mean()))


class LoudnessWindow:
    """The K-weighted power of the last ``seconds`` of a stream's output, kept as sums over
    BS.1770's 100-ms block steps (600 numbers a minute), so its memory does not depend on
    the sample rate, and the blocks lie on one grid from the stream's start."""

    def __init__(self, sample_rate: int, seconds: float) -> None:
        self.sample_rate = sample_rate
        self.step = int(STEP_SECONDS * sample_rate)
        self.steps = int(round(seconds / STEP_SECONDS))
        self._filters = k_weighting(sample_rate)
        self._kept = np.zeros(0)  # sums over the window's whole steps
        self._rest = np.zeros(0)  # power of the last, unfinished step

    @property
    def filled(self) -> float:
        """How much of the window the stream has filled so far, 0 to 1."""
        return self._kept.size / self.steps

    def weigh(self, audio: np.ndarray) -> np.ndarray:
        """K-weighted power per sample, summed over channels, of (channels, samples) audio."""
        weighted = audio.astype(np.float64)
        for b, a in self._filters:
            weighted = scipy.signal.lfilter(b, a, weighted, axis=-1)
        return np.square(weighted).sum(axis=0)

    def loudness_with(self, power: np.ndarray) -> float:
        """The window's loudness were ``power`` (from ``weigh``) the stream's next output."""
        return _gated_loudness(self._advanced(power)[0], self.step)

    def push(self, power: np.ndarray) -> None:
        """Append the power (from ``weigh``) of the stream's next output."""
        self._kept, self._rest = self._advanced(power)

    def _advanced(self, power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        joined = np.concatenate([self._rest, power])
        whole = joined.size // self.step * self.step
        kept = np.concatenate([self._kept, _step_sums(joined[:whole], self.step)])[-self.steps :]
        return kept, joined[whole:]
