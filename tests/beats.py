"""A small beat tracker for the tempo tests and benchmark: kick onsets, and a beat grid fitted to them.

The kick (beats 1 and 3) is the only voice with its energy below 120 Hz. Its onsets are
found as the peaks of the smoothed low-band energy, which survive the spectrogram's
100-ms window intact (the snare's do not: Griffin-Lim smears them by tens of ms), and
sit a fixed 5 ms after the hit. The tempo is the least-squares slope of onset times
against their beat numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.signal

FRAME = 64  # samples per energy frame: 1.45 ms at 44.1 kHz


def kick_onsets(audio: np.ndarray, sample_rate: int, min_gap: float) -> np.ndarray:
    """Times (seconds) of the energy peaks below 120 Hz, at least ``min_gap`` seconds apart."""
    mono = np.atleast_2d(np.asarray(audio, np.float64)).mean(axis=0)
    low = scipy.signal.sosfiltfilt(scipy.signal.butter(4, 120, fs=sample_rate, output="sos"), mono)
    frames = len(low) // FRAME
    energy = scipy.ndimage.uniform_filter1d((low[: frames * FRAME].reshape(frames, FRAME) ** 2).mean(axis=1), 5)
    peaks, _ = scipy.signal.find_peaks(energy, distance=max(1, int(min_gap * sample_rate / FRAME)),
                                       prominence=0.1 * energy.max())
    return (peaks + 0.5) * FRAME / sample_rate


@dataclass(frozen=True)
class BeatFit:
    """A beat grid fitted to onsets: tempo, and how far the onsets stray from it."""

    bpm: float
    first: float
    onsets: np.ndarray
    beats: np.ndarray  # each onset's beat number
    residuals: np.ndarray  # onset time less the fitted grid's, seconds

    @property
    def worst(self) -> float:
        """The largest distance of an onset from the fitted grid, seconds."""
        return float(np.max(np.abs(self.residuals)))

    def drift(self, nominal_bpm: float) -> np.ndarray:
        """Each onset's distance from the *nominal* grid through the first onset, seconds."""
        return self.onsets - (self.onsets[0] + self.beats * 60.0 / nominal_bpm)


def fit_beats(audio: np.ndarray, sample_rate: int, nominal_bpm: float) -> BeatFit:
    """Fit a beat grid to the kicks of ``audio`` (every second beat), numbering beats from ``nominal_bpm``."""
    period = 60.0 / nominal_bpm
    times = kick_onsets(audio, sample_rate, 1.2 * period)
    if len(times) < 4:
        raise AssertionError(f"only {len(times)} onsets found: no beat to fit")
    beats = np.round((times - times[0]) / period).astype(int)
    slope, intercept = np.polyfit(beats, times, 1)
    return BeatFit(60.0 / slope, float(intercept), times, beats, times - (intercept + slope * beats))


def attacks(audio: np.ndarray, sample_rate: int, min_gap: float) -> np.ndarray:
    """Times (seconds) of the hits of a clean signal (the loop as synthesised, not a reconstruction):
    for each peak of the band below 300 Hz (kick and snare), at least ``min_gap`` apart, the first
    frame before it whose energy reaches a tenth of the peak's."""
    mono = np.atleast_2d(np.asarray(audio, np.float64)).mean(axis=0)
    low = scipy.signal.sosfiltfilt(scipy.signal.butter(4, 300, fs=sample_rate, output="sos"), mono)
    frames = len(low) // FRAME
    energy = (low[: frames * FRAME].reshape(frames, FRAME) ** 2).mean(axis=1)
    peaks, _ = scipy.signal.find_peaks(energy, distance=max(1, int(min_gap * sample_rate / FRAME)),
                                       prominence=0.01 * energy.max())
    found = []
    for peak in peaks:
        frame = peak
        while frame > 0 and energy[frame - 1] >= 0.1 * energy[peak]:
            frame -= 1
        found.append(frame)
    return np.array(found) * FRAME / sample_rate
