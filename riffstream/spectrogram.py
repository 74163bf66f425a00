"""Spectrogram parameters and Riffusion's image format.

A Riffusion spectrogram image is a mel-scaled STFT magnitude: normalised to its maximum,
raised to ``power_for_image`` (0.25), scaled to 0..255, inverted (loud is dark) and flipped
so that low frequencies sit at the bottom. Mono images are grey (R = G = B); stereo
images keep the left channel in G and the right in B. The parameters travel in EXIF
under Riffusion's tag numbers, so images move freely between the two programs.

Everything here is a pure function of (data, params).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Mapping

import numpy as np
import scipy.fft
import scipy.signal
from PIL import Image, UnidentifiedImageError

from riffstream.checks import check_input_file
from riffstream.errors import RiffstreamError

#: Riffusion reads int16-scaled samples, so the magnitudes it stores in EXIF are 32768
#: times ours (we use float samples in [-1, 1]). Converting at the boundary keeps the
#: MAX_VALUE tag meaning the same loudness in both programs.
INT16_SCALE = 32768.0


class ExifTag(IntEnum):
    """EXIF tag numbers that Riffusion uses for the spectrogram parameters."""

    SAMPLE_RATE = 11000
    STEREO = 11005
    STEP_SIZE_MS = 11010
    WINDOW_DURATION_MS = 11020
    PADDED_DURATION_MS = 11030
    NUM_FREQUENCIES = 11040
    MIN_FREQUENCY = 11050
    MAX_FREQUENCY = 11060
    POWER_FOR_IMAGE = 11070
    MAX_VALUE = 11080


@dataclass(frozen=True)
class SpectrogramParams:
    """How audio maps to a spectrogram image; Riffusion's defaults.

    With the defaults one pixel column is 10 ms, so a 512-pixel-wide image is 5.12 s.
    """

    stereo: bool = False
    sample_rate: int = 44100
    step_size_ms: int = 10
    window_duration_ms: int = 100
    padded_duration_ms: int = 400
    num_frequencies: int = 512
    min_frequency: int = 0
    max_frequency: int = 10000
    mel_scale_norm: str | None = None
    mel_scale_type: str = "htk"
    power_for_image: float = 0.25
    #: Mel magnitude of a black pixel when the image carries no MAX_VALUE tag, in
    #: float-sample units. Riffusion's default of 30e6 is in int16 units.
    max_value: float = 30e6 / INT16_SCALE

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.step_size_ms <= 0 or self.window_duration_ms <= 0:
            raise RiffstreamError(f"invalid spectrogram parameters: {self}")
        if self.padded_duration_ms < self.window_duration_ms:
            raise RiffstreamError("padded duration must be at least the window duration")
        if not 0 <= self.min_frequency < self.max_frequency <= self.sample_rate / 2:
            raise RiffstreamError(
                f"frequency range {self.min_frequency}..{self.max_frequency} Hz does not fit "
                f"sample rate {self.sample_rate}"
            )
        if self.num_frequencies <= 0 or self.power_for_image <= 0:
            raise RiffstreamError(f"invalid spectrogram parameters: {self}")

    @property
    def n_fft(self) -> int:
        """FFT length of the analysis, with the window zero-padded to it."""
        return int(self.padded_duration_ms / 1000.0 * self.sample_rate)

    @property
    def win_length(self) -> int:
        """Length of the Hann window in samples."""
        return int(self.window_duration_ms / 1000.0 * self.sample_rate)

    @property
    def hop_length(self) -> int:
        """Samples between successive columns of the image."""
        return int(self.step_size_ms / 1000.0 * self.sample_rate)

    @property
    def channels(self) -> int:
        return 2 if self.stereo else 1

    def duration_of(self, width: int) -> float:
        """Seconds of audio in an image ``width`` pixels wide."""
        return width * self.hop_length / self.sample_rate

    def to_exif(self) -> dict[int, Any]:
        """The parameters as Riffusion's EXIF tags."""
        return {
            ExifTag.SAMPLE_RATE: self.sample_rate,
            ExifTag.STEREO: self.stereo,
            ExifTag.STEP_SIZE_MS: self.step_size_ms,
            ExifTag.WINDOW_DURATION_MS: self.window_duration_ms,
            ExifTag.PADDED_DURATION_MS: self.padded_duration_ms,
            ExifTag.NUM_FREQUENCIES: self.num_frequencies,
            ExifTag.MIN_FREQUENCY: self.min_frequency,
            ExifTag.MAX_FREQUENCY: self.max_frequency,
            ExifTag.POWER_FOR_IMAGE: float(self.power_for_image),
            ExifTag.MAX_VALUE: float(self.max_value * INT16_SCALE),
        }

    @classmethod
    def from_exif(cls, exif: Mapping[int, Any], base: SpectrogramParams | None = None) -> SpectrogramParams:
        """Parameters from an image's EXIF tags; tags that are absent keep ``base``'s values."""
        base = base or cls()
        fields: dict[str, Any] = {}
        for tag, name, kind in (
            (ExifTag.SAMPLE_RATE, "sample_rate", int),
            (ExifTag.STEREO, "stereo", bool),
            (ExifTag.STEP_SIZE_MS, "step_size_ms", int),
            (ExifTag.WINDOW_DURATION_MS, "window_duration_ms", int),
            (ExifTag.PADDED_DURATION_MS, "padded_duration_ms", int),
            (ExifTag.NUM_FREQUENCIES, "num_frequencies", int),
            (ExifTag.MIN_FREQUENCY, "min_frequency", int),
            (ExifTag.MAX_FREQUENCY, "max_frequency", int),
            (ExifTag.POWER_FOR_IMAGE, "power_for_image", float),
        ):
            if int(tag) in exif:
                fields[name] = kind(exif[int(tag)])
        if int(ExifTag.MAX_VALUE) in exif and float(exif[int(ExifTag.MAX_VALUE)]) > 0:
            fields["max_value"] = float(exif[int(ExifTag.MAX_VALUE)]) / INT16_SCALE
        try:
            return dataclasses.replace(base, **fields)
        except (TypeError, ValueError) as error:
            raise RiffstreamError(f"the image's spectrogram parameters are unusable: {error}") from None


def _hz_to_mel(freq: np.ndarray | float, scale: str) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    if scale == "slaney":
        f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
        min_log_mel = min_log_hz / f_sp
        return np.where(
            freq >= min_log_hz,
            min_log_mel + np.log(np.maximum(freq, 1e-12) / min_log_hz) / logstep,
            freq / f_sp,
        )
    raise RiffstreamError(f"unknown mel scale {scale!r}: use 'htk' or 'slaney'")


def _mel_to_hz(mels: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


def analysis_params(params: SpectrogramParams) -> SpectrogramParams:
    """``params`` without the per-image max value: the key for caches of transforms."""
    return dataclasses.replace(params, max_value=SpectrogramParams.max_value)


def mel_filterbank(params: SpectrogramParams, n_fft: int | None = None) -> np.ndarray:
    """Triangular mel filters, shape (num_frequencies, n_fft // 2 + 1), float64.

    The same filters as torchaudio's ``melscale_fbanks`` (which Riffusion uses), evaluated
    on the bin frequencies of an ``n_fft``-point DFT (default: the params' padded FFT).
    """
    return _mel_filterbank(analysis_params(params), n_fft or params.n_fft)


@functools.lru_cache(maxsize=8)
def _mel_filterbank(params: SpectrogramParams, n_fft: int) -> np.ndarray:
    bin_freqs = np.linspace(0.0, params.sample_rate // 2, n_fft // 2 + 1)
    mel_points = np.linspace(
        _hz_to_mel(params.min_frequency, params.mel_scale_type),
        _hz_to_mel(params.max_frequency, params.mel_scale_type),
        params.num_frequencies + 2,
    )
    edges = _mel_to_hz(mel_points, params.mel_scale_type)
    widths = np.diff(edges)
    slopes = edges[None, :] - bin_freqs[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    if params.mel_scale_norm == "slaney":
        filters *= (2.0 / (edges[2:] - edges[:-2]))[None, :]
    elif params.mel_scale_norm is not None:
        raise RiffstreamError(f"unknown mel norm {params.mel_scale_norm!r}: use None or 'slaney'")
    filters.setflags(write=False)
    return filters.T


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window makes by default."""
    return scipy.signal.get_window("hann", length, fftbins=True)


def frame_signal(samples: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Windowed analysis frames, shape (..., frames, win_length), centred as torch.stft does.

    The signal is reflect-padded by n_fft // 2; frame m is centred on sample m * hop.
    Only the win_length samples under the window are returned: the zero padding up to
    n_fft changes a frame's DFT by a linear phase, not its magnitude.
    """
    pad = params.n_fft // 2
    if samples.shape[-1] <= pad:
        raise RiffstreamError(
            f"audio is too short: at least {params.padded_duration_ms / 2000:.2f} s is needed"
        )
    widths = [(0, 0)] * (samples.ndim - 1) + [(pad, pad)]
    padded = np.pad(samples, widths, mode="reflect")
    offset = (params.n_fft - params.win_length) // 2
    n_frames = 1 + samples.shape[-1] // params.hop_length
    windows = np.lib.stride_tricks.sliding_window_view(padded[..., offset:], params.win_length, axis=-1)
    return windows[..., : n_frames * params.hop_length : params.hop_length, :] * hann_window(params.win_length)


def mel_from_audio(samples: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Mel magnitudes, shape (channels, num_frequencies, frames), as Riffusion computes them."""
    frames = frame_signal(np.atleast_2d(samples).astype(np.float64), params)
    magnitudes = np.abs(scipy.fft.rfft(frames, n=params.n_fft, axis=-1, workers=-1))
    return np.einsum("mf,ctf->cmt", mel_filterbank(params), magnitudes, optimize=True)


def image_from_mel(mel: np.ndarray, params: SpectrogramParams) -> Image.Image:
    """Encode mel magnitudes (channels, frequencies, frames) as a Riffusion image with EXIF."""
    max_value = float(np.max(mel))
    if not np.isfinite(max_value) or max_value <= 0:
        raise RiffstreamError("the audio is silent: there is nothing to draw")
    # The same arithmetic as Riffusion, truncation included, so both make identical bytes.
    data = (255 - np.power(mel / max_value, params.power_for_image) * 255).astype(np.uint8)
    if data.shape[0] == 1:
        rgb = np.repeat(data[0][:, :, None], 3, axis=2)
    else:
        rgb = np.stack([np.zeros_like(data[0]), data[0], data[1]], axis=-1)
    image = Image.fromarray(np.ascontiguousarray(rgb[::-1]), mode="RGB")
    exif = image.getexif()
    exif.update(dataclasses.replace(params, max_value=max_value).to_exif())
    return image


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file, with one-line errors for missing or broken files."""
    path = check_input_file(path, "image", "image")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy() if not image.getexif() else _with_exif(image)
    except UnidentifiedImageError:
        raise RiffstreamError(f"{path} is not an image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RiffstreamError(f"{path} is a corrupt image: {error}") from None


def _with_exif(image: Image.Image) -> Image.Image:
    """A detached copy of ``image`` that keeps its EXIF tags."""
    copy = image.copy()
    copy.getexif().update(image.getexif())
    return copy


def params_for_image(image: Image.Image, params: SpectrogramParams | None = None) -> SpectrogramParams:
    """The parameters an image was made with: its EXIF tags over ``params`` (or the defaults)."""
    return SpectrogramParams.from_exif(image.getexif(), base=params)


def mel_from_image(image: Image.Image, params: SpectrogramParams) -> np.ndarray:
    """Decode a Riffusion image to mel magnitudes, shape (channels, frequencies, frames)."""
    if image.height != params.num_frequencies:
        raise RiffstreamError(
            f"the image is {image.height} pixels high, but the spectrogram parameters need "
            f"{params.num_frequencies}"
        )
    rgb = np.asarray(image.convert("RGB"))[::-1].transpose(2, 0, 1)
    data = rgb[[1, 2]] if params.stereo else rgb[:1]
    level = (255.0 - data.astype(np.float32)) / 255.0
    return np.power(level, 1.0 / params.power_for_image) * np.float32(params.max_value)


def audio_to_image(samples: np.ndarray, sample_rate: int, params: SpectrogramParams | None = None) -> Image.Image:
    """Spectrogram image of audio, shape (samples,) or (channels, samples), float in [-1, 1].

    The audio is resampled to the params' rate if needed, and mixed to mono (or a mono
    input duplicated) to match ``params.stereo``.
    """
    params = params or SpectrogramParams()
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim == 2 and samples.shape[0] > samples.shape[1]:
        raise RiffstreamError("audio must be shaped (channels, samples), not (samples, channels)")
    samples = np.atleast_2d(samples)
    if samples.size == 0:
        raise RiffstreamError("the audio is empty")
    if sample_rate != params.sample_rate:
        ratio = math.gcd(int(sample_rate), params.sample_rate)
        samples = scipy.signal.resample_poly(samples, params.sample_rate // ratio, int(sample_rate) // ratio, axis=-1)
    if params.stereo and samples.shape[0] == 1:
        samples = np.repeat(samples, 2, axis=0)
    elif not params.stereo and samples.shape[0] > 1:
        samples = samples.mean(axis=0, keepdims=True)
    elif samples.shape[0] > 2:
        samples = samples[:2]
    return image_from_mel(mel_from_audio(samples, params), params)
