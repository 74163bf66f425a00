"""Riffusion's own converter, as the yardstick for speed and fidelity.

Riffusion inverts its images with torchaudio's ``InverseMelScale`` (least squares, then
ReLU) followed by ``GriffinLim`` (32 iterations, momentum 0.99, power 1, random start).
torchaudio's CUDA-only wheel does not load beside the CPU build of torch here, so this
module performs the same torch operations that those two transforms perform. It is used
by tests and benchmarks only, never at run time.
"""

from __future__ import annotations

import numpy as np
import torch

from riffstream.spectrogram import SpectrogramParams, mel_filterbank


def reference_audio_from_mel(mel: np.ndarray, params: SpectrogramParams, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Riffusion's reconstruction of (channels, mels, frames) mel magnitudes."""
    fb = torch.from_numpy(mel_filterbank(params).T.astype(np.float32))  # (freq, mels)
    melspec = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
    linear = torch.relu(torch.linalg.lstsq(fb.transpose(-1, -2)[None], melspec, driver="gels").solution)
    return reference_griffin_lim(linear, params, n_iter=n_iter, seed=seed).numpy()


def reference_griffin_lim(magnitude: torch.Tensor, params: SpectrogramParams, n_iter: int = 32, seed: int = 0,
                          momentum: float = 0.99) -> torch.Tensor:
    """torchaudio.functional.griffinlim with Riffusion's settings."""
    window = torch.hann_window(params.win_length)
    stft_args = dict(n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length, window=window)
    generator = torch.Generator().manual_seed(seed)
    momentum = momentum / (1 + momentum)
    angles = torch.rand(magnitude.shape, dtype=torch.complex64, generator=generator)
    previous = torch.tensor(0.0)
    for _ in range(n_iter):
        inverse = torch.istft(magnitude * angles, **stft_args)
        rebuilt = torch.stft(inverse, center=True, pad_mode="reflect", normalized=False, onesided=True,
                             return_complex=True, **stft_args)
        angles = rebuilt - previous * momentum
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    return torch.istft(magnitude * angles, **stft_args)
