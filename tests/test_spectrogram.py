"""Riffusion's image format: parameters, EXIF, byte-level interop, mel analysis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from riffstream import SpectrogramParams, audio_to_image
from riffstream.errors import RiffstreamError
from riffstream.spectrogram import (
    INT16_SCALE,
    ExifTag,
    image_from_mel,
    mel_filterbank,
    mel_from_audio,
    mel_from_image,
    params_for_image,
    read_image,
)

RATE = 44100


def tone(freqs: list[float], seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)


# Riffusion's conversion, written out from its published formula (riffusion/util/image_util.py).
def riffusion_image_from_spectrogram(spectrogram: np.ndarray, power: float = 0.25) -> Image.Image:
    data = 255 - (np.power(spectrogram / np.max(spectrogram), power) * 255)
    data = data.astype(np.uint8)
    if data.shape[0] == 1:
        image = Image.fromarray(data[0], mode="L").convert("RGB")
    else:
        image = Image.fromarray(np.array([np.zeros_like(data[0]), data[0], data[1]]).transpose(1, 2, 0), mode="RGB")
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def riffusion_spectrogram_from_image(image: Image.Image, power: float = 0.25, stereo: bool = False,
                                     max_value: float = 30e6) -> np.ndarray:
    data = np.array(image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)).transpose(2, 0, 1)
    data = data[[1, 2]] if stereo else data[0:1]
    return np.power((255 - data.astype(np.float32)) / 255, 1 / power) * max_value


def riffusion_mel(samples_int16_scale: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Riffusion's torchaudio Spectrogram(power=None) + abs + MelScale, with torch ops."""
    waveform = torch.from_numpy(np.atleast_2d(samples_int16_scale).astype(np.float32))
    complex_spec = torch.stft(waveform, n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length,
                              window=torch.hann_window(params.win_length), center=True, pad_mode="reflect",
                              normalized=False, onesided=True, return_complex=True)
    fb = torch.from_numpy(mel_filterbank(params).T.astype(np.float32))
    return torch.matmul(complex_spec.abs().transpose(-1, -2), fb).transpose(-1, -2).numpy()


def test_default_params_are_riffusions() -> None:
    params = SpectrogramParams()
    assert (params.sample_rate, params.hop_length, params.win_length, params.n_fft) == (44100, 441, 4410, 17640)
    assert (params.num_frequencies, params.min_frequency, params.max_frequency) == (512, 0, 10000)
    assert params.mel_scale_type == "htk" and params.mel_scale_norm is None and params.power_for_image == 0.25
    assert not params.stereo
    assert params.duration_of(512) == pytest.approx(5.12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.sample_rate = 1  # type: ignore[misc]


def test_mel_filterbank_has_htk_triangles_up_to_10khz() -> None:
    filters = mel_filterbank(SpectrogramParams())
    assert filters.shape == (512, 8821)
    bin_hz = 2.5
    # Nothing above the top band edge (10 kHz) and every band has some weight.
    assert not filters[:, int(10000 / bin_hz) + 1 :].any()
    assert (filters.sum(axis=1) > 0).all()
    # Band 255's peak sits at the HTK mel midpoint of 0..10 kHz.
    mel_max = 2595 * np.log10(1 + 10000 / 700)
    centre_hz = 700 * (10 ** ((256 * mel_max / 513) / 2595) - 1)
    assert abs(np.argmax(filters[255]) * bin_hz - centre_hz) <= bin_hz
    assert filters.max() <= 1.0


def test_mel_analysis_matches_riffusions_torch_stft() -> None:
    params = SpectrogramParams()
    samples = tone([220.0, 1375.0, 5000.0], seconds=1.3) + 0.01 * np.random.default_rng(0).standard_normal(int(1.3 * RATE))
    ours = mel_from_audio(samples, params)
    theirs = riffusion_mel(samples, params)
    assert ours.shape == theirs.shape == (1, 512, int(1.3 * RATE) // 441 + 1)
    np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * theirs.max())


def test_image_bytes_are_identical_to_riffusions_formula_mono_and_stereo() -> None:
    rng = np.random.default_rng(1)
    for channels in (1, 2):
        params = SpectrogramParams(stereo=channels == 2)
        mel = rng.gamma(0.5, 3.0, size=(channels, 512, 64)).astype(np.float32)
        ours = np.asarray(image_from_mel(mel, params))
        theirs = np.asarray(riffusion_image_from_spectrogram(mel))
        np.testing.assert_array_equal(ours, theirs)
        decoded = mel_from_image(Image.fromarray(ours), dataclasses.replace(params, max_value=1.0))
        np.testing.assert_allclose(decoded, riffusion_spectrogram_from_image(Image.fromarray(ours), stereo=channels == 2,
                                                                            max_value=1.0), rtol=1e-6)


def test_stereo_image_keeps_left_in_green_and_right_in_blue() -> None:
    left, right = tone([440.0]), tone([3000.0])
    image = audio_to_image(np.stack([left, right]), RATE, SpectrogramParams(stereo=True))
    pixels = np.asarray(image)
    assert (pixels[..., 0] == 0).all()
    low_row, high_row = 511 - 40, 511 - 190  # rows near 440 Hz and 3 kHz (low frequencies at the bottom)
    assert pixels[low_row - 15 : low_row + 15, :, 1].min() < pixels[low_row - 15 : low_row + 15, :, 2].min()
    assert pixels[high_row - 15 : high_row + 15, :, 2].min() < pixels[high_row - 15 : high_row + 15, :, 1].min()


def test_png_round_trip_keeps_exif_params_and_magnitudes(tmp_path) -> None:
    params = SpectrogramParams()
    samples = tone([330.0, 660.0, 2500.0], seconds=2.0)
    mel = mel_from_audio(samples, params)
    image = audio_to_image(samples, RATE, params)
    path = tmp_path / "clip.png"
    image.save(path, exif=image.getexif())
    loaded = read_image(path)
    exif = loaded.getexif()
    assert exif[ExifTag.SAMPLE_RATE] == 44100 and exif[ExifTag.STEP_SIZE_MS] == 10
    assert exif[ExifTag.WINDOW_DURATION_MS] == 100 and exif[ExifTag.PADDED_DURATION_MS] == 400
    assert exif[ExifTag.NUM_FREQUENCIES] == 512 and exif[ExifTag.MAX_FREQUENCY] == 10000
    assert exif[ExifTag.POWER_FOR_IMAGE] == 0.25 and not exif[ExifTag.STEREO]
    # The max value is stored in Riffusion's int16 units.
    assert exif[ExifTag.MAX_VALUE] == pytest.approx(mel.max() * INT16_SCALE, rel=1e-6)
    read_params = params_for_image(loaded)
    assert read_params == dataclasses.replace(params, max_value=read_params.max_value)
    assert read_params.max_value == pytest.approx(mel.max(), rel=1e-6)
    decoded = mel_from_image(loaded, read_params)
    loud = mel > mel.max() * 1e-2
    # 8-bit quantisation of mel^0.25: within a few percent where there is sound.
    assert np.median(np.abs(decoded[loud] / mel[loud] - 1)) < 0.02
    assert np.max(np.abs(decoded - mel)) < 0.02 * mel.max()


def test_riffusion_made_image_decodes_at_the_same_loudness() -> None:
    params = SpectrogramParams()
    samples = tone([440.0], seconds=1.0, amplitude=0.25)
    riffusion_spec = riffusion_mel(samples * INT16_SCALE, params)  # Riffusion reads int16-scaled samples
    image = riffusion_image_from_spectrogram(riffusion_spec)
    exif = image.getexif()
    exif.update({int(tag): value for tag, value in params.to_exif().items()})
    exif[ExifTag.MAX_VALUE] = float(riffusion_spec.max())
    decoded = mel_from_image(image, params_for_image(image))
    np.testing.assert_allclose(decoded.max(), mel_from_audio(samples, params).max(), rtol=1e-3)


def test_image_width_follows_duration_and_resampling() -> None:
    assert audio_to_image(tone([440.0], seconds=5.12), RATE).width == 513
    assert audio_to_image(tone([440.0], seconds=2.0, rate=22050), 22050).width == 201
    assert audio_to_image(tone([440.0], seconds=2.0, rate=48000), 48000).width == 201


def test_bad_audio_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(RiffstreamError, match="silent"):
        audio_to_image(np.zeros(RATE), RATE)
    with pytest.raises(RiffstreamError, match="empty"):
        audio_to_image(np.zeros(0), RATE)
    with pytest.raises(RiffstreamError, match="too short"):
        audio_to_image(tone([440.0], seconds=0.1), RATE)


def test_image_of_wrong_height_is_rejected() -> None:
    with pytest.raises(RiffstreamError, match="256 pixels high"):
        mel_from_image(Image.new("RGB", (512, 256)), SpectrogramParams())
