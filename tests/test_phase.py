"""Phase reconstruction: shape, alignment, PGHI, and fidelity on real recorded music."""

from __future__ import annotations


import numpy as np
import pytest

from riffstream import SpectrogramParams, audio_to_image, image_to_audio
from riffstream.phase import griffin_lim, linear_from_mel, pghi_phase
from riffstream.spectrogram import mel_from_audio, mel_from_image
from tests.fidelity import spectral_convergence_db
from tests.realmusic import music_or_skip
from tests.reference import reference_audio_from_mel

PARAMS = SpectrogramParams()


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """5.12 s of real recorded music (fetched from Debian's asc-music package)."""
    return music_or_skip(5.12, offset=20.0, track="frontiers")


def test_a_512_pixel_image_gives_exactly_5_12_seconds_of_float32() -> None:
    t = np.arange(3 * 44100) / 44100
    image = audio_to_image(0.3 * np.sin(2 * np.pi * 440 * t), 44100).crop((0, 0, 512, 512))
    audio = image_to_audio(image)
    assert audio.dtype == np.float32 and audio.shape == (512 * 441,)
    assert np.isfinite(audio).all()


def test_stereo_images_give_two_channels() -> None:
    t = np.arange(44100) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)])
    audio = image_to_audio(audio_to_image(stereo, 44100, SpectrogramParams(stereo=True)))
    assert audio.shape == (2, 101 * 441)
    left, right = (np.abs(np.fft.rfft(channel)) for channel in audio)
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / 44100)
    assert abs(freqs[np.argmax(left)] - 440) < 5 and abs(freqs[np.argmax(right)] - 660) < 5


def test_a_blank_image_gives_silence_not_nan() -> None:
    from PIL import Image

    audio = image_to_audio(Image.new("RGB", (64, 512), (255, 255, 255)))
    assert audio.shape == (64 * 441,) and not audio.any()


@pytest.mark.slow
def test_reconstruction_is_deterministic_and_time_aligned(music: np.ndarray) -> None:
    image = audio_to_image(music, 44100)
    first, second = image_to_audio(image), image_to_audio(image)
    np.testing.assert_array_equal(first, second)
    # Output sample n lines up with input sample n: the loudness envelopes (2.5-ms steps)
    # correlate best at lag 0. Waveforms themselves differ in phase, so compare envelopes.
    step = 110
    n = min(first.size, music.size) // step * step

    def envelope(signal: np.ndarray) -> np.ndarray:
        power = (signal[:n].astype(np.float64) ** 2).reshape(-1, step).mean(axis=1)
        smoothed = np.sqrt(np.convolve(power, np.ones(4) / 4, mode="same"))
        return smoothed - smoothed.mean()

    ours, original = envelope(first), envelope(music)
    lags = np.arange(-20, 21)
    core = slice(40, ours.size - 40)
    correlation = [np.dot(original[core], np.roll(ours, -lag)[core]) for lag in lags]
    assert abs(lags[int(np.argmax(correlation))]) <= 1


@pytest.mark.slow
def test_pghi_recovers_phase_from_a_true_magnitude(music: np.ndarray) -> None:
    # Magnitudes taken from the real audio itself (no mel loss), at the working rate.
    import scipy.signal
    import torch

    from riffstream.phase import _PaddedGrid, _plan, padded_spectrum

    plan = _plan(PARAMS)
    work = scipy.signal.resample_poly(music, plan.down, plan.up)
    padded = np.pad(work, plan.n_fft // 2, mode="reflect").astype(np.float32)[None]
    frames = music.size // PARAMS.hop_length
    fine = _PaddedGrid(plan, 1, frames).forward(torch.from_numpy(padded)).abs().numpy()
    window_grid = np.ascontiguousarray(fine[..., :: plan.factor])  # the window's own DFT bins

    def audio(phase: np.ndarray, iterations: int) -> np.ndarray:
        start = torch.angle(padded_spectrum(window_grid, phase, PARAMS)).numpy()
        return griffin_lim(fine, start, PARAMS, iterations, adaptive=False).audio[0]

    pghi_only = audio(pghi_phase(window_grid, PARAMS), 0)
    zero_phase = audio(np.zeros_like(window_grid), 0)
    refined = audio(pghi_phase(window_grid, PARAMS), 12)
    assert spectral_convergence_db(music, pghi_only) < -18.0
    assert spectral_convergence_db(music, zero_phase) > -8.0
    assert spectral_convergence_db(music, refined) < -27.0


@pytest.mark.slow
def test_mel_inversion_equals_riffusions_least_squares_on_the_coarse_grid(music: np.ndarray) -> None:
    import torch

    from riffstream.spectrogram import mel_filterbank

    mel = mel_from_audio(music, PARAMS)
    ours = linear_from_mel(mel, PARAMS)[0]  # (frames, bins) on the 10-Hz grid
    filters = torch.tensor(mel_filterbank(PARAMS), dtype=torch.float32)
    solution = torch.linalg.lstsq(filters[None], torch.tensor(mel, dtype=torch.float32), driver="gels").solution
    theirs = torch.relu(solution)[0, ::4].T.numpy()  # every 4th bin of the padded FFT
    assert ours.shape[1] <= theirs.shape[1] and not theirs[:, ours.shape[1] :].any()
    np.testing.assert_allclose(ours, theirs[:, : ours.shape[1]], atol=1e-4 * theirs.max())


@pytest.mark.slow
def test_fidelity_on_real_music_beats_riffusions_converter(music: np.ndarray) -> None:
    image = audio_to_image(music, 44100)
    ours = image_to_audio(image)
    reference = reference_audio_from_mel(mel_from_image(image, PARAMS), PARAMS)[0]
    ours_db, reference_db = spectral_convergence_db(music, ours), spectral_convergence_db(music, reference)
    assert ours_db < -22.0
    assert ours_db < reference_db - 2.0


#: Real clips of three other kinds where the earlier converter lost to Riffusion's by 4.5
#: to 8 dB: soft ambient, fast electronic and a band track (packages fetched at run time).
HARD_CLIPS = [("music-game", 85.0), ("tt1", 36.0), ("MadeiraStew", 22.0),
              # The audio-stage corpus's worst clip at a cap of 32 iterations (-0.24 dB), at its exact
              # sample: two samples later it scores half a dB differently.
              ("03_-_Robert_van_Herk_-_Architectural_Contemplations", 1578936 / 44100)]


@pytest.mark.slow
@pytest.mark.parametrize("track, offset", HARD_CLIPS)
def test_no_worse_than_riffusions_converter_on_clips_it_used_to_lose(track: str, offset: float) -> None:
    music = music_or_skip(5.12, offset=offset, track=track)
    image = audio_to_image(music, 44100)
    ours = spectral_convergence_db(music, image_to_audio(image))
    reference = spectral_convergence_db(music, reference_audio_from_mel(mel_from_image(image, PARAMS), PARAMS)[0])
    assert ours <= reference


@pytest.mark.slow
def test_a_hard_clip_goes_on_past_the_base_iterations_unless_held_to_them() -> None:
    from riffstream.phase import DEFAULT_ITERATIONS, reconstruct

    track, offset = HARD_CLIPS[-1]
    mel = mel_from_image(audio_to_image(music_or_skip(5.12, offset=offset, track=track), 44100), PARAMS)
    assert reconstruct(mel, PARAMS).iterations > DEFAULT_ITERATIONS
    assert reconstruct(mel, PARAMS, adaptive=False).iterations == DEFAULT_ITERATIONS


@pytest.mark.slow
def test_a_clip_comes_out_at_the_level_its_image_records(music: np.ndarray) -> None:
    audio = image_to_audio(audio_to_image(music, 44100))
    rms = [np.sqrt(np.mean(signal[4410:-4410].astype(np.float64) ** 2)) for signal in (music[: audio.size], audio)]
    assert abs(20 * np.log10(rms[1] / rms[0])) < 0.5


def test_iterations_go_on_only_while_they_pay() -> None:
    from PIL import Image

    from riffstream.phase import DEFAULT_ITERATIONS, MAX_ITERATIONS, reconstruct

    # Pixel noise, as an untrained model makes: no signal has that spectrogram, and more
    # iterations do not bring one closer.
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 1), dtype=np.uint8).repeat(3, axis=2)
    mel = mel_from_image(Image.fromarray(noise), PARAMS)
    done = reconstruct(mel, PARAMS).iterations
    assert DEFAULT_ITERATIONS <= done < MAX_ITERATIONS
