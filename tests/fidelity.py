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


def seam_report(original: np.ndarray, stitched: np.ndarray, seam_centres: np.ndarray, rate: int = 44100,
                seam_zone: float = 0.25, far: float = 1.0) -> dict:
    """Spectral convergence of a stitched stream (scale-invariant over the whole, below 10 kHz,
    4096/512 STFT): overall, within ``seam_zone`` s of a seam centre, and more than ``far`` s from any."""
    n = min(original.size, stitched.size)
    hop, size = 512, 4096
    freqs, times, ref = scipy.signal.stft(original[:n], fs=rate, nperseg=size, noverlap=size - hop, boundary=None)
    _, _, rec = scipy.signal.stft(stitched[:n], fs=rate, nperseg=size, noverlap=size - hop, boundary=None)
    keep = freqs < 10000
    ref, rec = np.abs(ref[keep]), np.abs(rec[keep])
    gain = np.sum(ref * rec) / np.sum(rec * rec)
    error = np.sum((ref - gain * rec) ** 2, axis=0)
    power = np.sum(ref**2, axis=0)
    distance = np.min(np.abs(times[:, None] - seam_centres[None, :] / rate), axis=1)
    edges = (times > 0.2) & (times < times[-1] - 0.2)
    near, interior = edges & (distance <= seam_zone), edges & (distance > far)

    def sc(mask: np.ndarray) -> float:
        return float(10 * np.log10(error[mask].sum() / power[mask].sum()))

    return {"sc_db": sc(edges), "seam_sc_db": sc(near), "interior_sc_db": sc(interior),
            "seam_minus_interior_db": sc(near) - sc(interior)}
