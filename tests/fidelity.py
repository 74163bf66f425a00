"""Spectral convergence, the fidelity measure used by tests and benchmarks."""

from __future__ import annotations

import numpy as np
import scipy.signal


def spectral_convergence_db(original: np.ndarray, reconstructed: np.ndarray, sample_rate: int = 44100,
                            max_frequency: float = 10000.0, trim_seconds: float = 0.1) -> float:
    """Scale-invariant spectral convergence in dB (lower is better).

    Both signals are analysed with a 4096-point, 512-hop STFT, independent of the one
    any reconstruction uses, and compared below ``max_frequency``. The reconstruction is
    scaled by the least-squares gain first, so loudness does not count, and
    ``trim_seconds`` at each end are ignored.
    """
    n = min(original.shape[-1], reconstructed.shape[-1])
    trim = int(trim_seconds * sample_rate)
    original, reconstructed = original[..., trim : n - trim], reconstructed[..., trim : n - trim]
    _, _, ref = scipy.signal.stft(original, nperseg=4096, noverlap=4096 - 512, fs=sample_rate, boundary=None)
    freqs, _, rec = scipy.signal.stft(reconstructed, nperseg=4096, noverlap=4096 - 512, fs=sample_rate, boundary=None)
    keep = freqs < max_frequency
    ref, rec = np.abs(ref[..., keep, :]), np.abs(rec[..., keep, :])
    gain = np.sum(ref * rec) / max(np.sum(rec * rec), 1e-30)
    return float(20 * np.log10(np.linalg.norm(ref - gain * rec) / np.linalg.norm(ref)))
