"""The commands that make no stream: converting between audio and spectrogram images, and preparing a model
to play offline. Each returns its closing line; problems are one-line RiffstreamErrors."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from riffstream.errors import RiffstreamError
from riffstream.midi import midi_bytes
from riffstream.model.options import DEFAULT_MODEL, TINY_MODEL
from riffstream.session.plan import GenerationRequest, model_options, preset_for
from riffstream.session.run import model_stack
from riffstream.sinks import check_writable, claim_output, file_format, read_audio, write_audio
from riffstream.spectrogram import SpectrogramParams, audio_to_image, params_for_image, read_image
from riffstream.sinks.midi import check_midi_out
from riffstream.stitch import stitch_images
from riffstream.transcribe import basic_pitch_model, transcribe


def images_to_audio(image_paths: Sequence[str], output: str, crossfade: float, iterations: int,
                    loudness: float | None) -> str:
    """Stitch spectrogram images into one audio file, exactly as the stream stitches its clips."""
    if not image_paths:
        raise RiffstreamError("give one or more spectrogram images, then the audio file to write")
    file_format(output)
    check_writable(output)
    images = [read_image(path) for path in image_paths]
    params = params_for_image(images[0])
    audio = stitch_images(images, params, crossfade=crossfade, iterations=iterations, loudness=loudness)
    if not np.any(audio):
        raise RiffstreamError(f"{' and '.join(image_paths)} hold no sound")
    with claim_output(output, "output file"):
        write_audio(output, audio, params.sample_rate)
    return (f"wrote {output}: {len(images)} clip{'s' * (len(images) > 1)}, "
            f"{audio.shape[-1] / params.sample_rate:.2f} s at {params.sample_rate} Hz")


def audio_to_png(audio_path: str, output: str, stereo: bool) -> str:
    """Draw an audio file as one Riffusion spectrogram image (PNG with its EXIF), written whole or not at all."""
    if not output.lower().endswith(".png"):
        raise RiffstreamError("spectrogram images are written as .png (lossless, with EXIF)")
    check_writable(output)
    samples, sample_rate = read_audio(audio_path)
    if not np.any(samples):
        raise RiffstreamError(f"{audio_path} is silent: there is nothing to draw")
    params = SpectrogramParams(stereo=stereo)
    image = audio_to_image(samples, sample_rate, params)
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        image.save(partial, format="PNG", exif=image.getexif())
        partial.replace(target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise RiffstreamError(f"cannot write {target}: {error}") from None
    return f"wrote {output}: {image.width} x {image.height} pixels, {params.duration_of(image.width):.2f} s"


def audio_to_midi(audio_path: str, output: str) -> str:
    """Transcribe an audio file's notes with Basic Pitch into a Standard MIDI File, written whole or not at all."""
    check_midi_out(output, "audio-to-midi")
    model = basic_pitch_model()
    samples, sample_rate = read_audio(audio_path)
    if not np.any(samples):
        raise RiffstreamError(f"{audio_path} is silent: there are no notes to take")
    rate = SpectrogramParams().sample_rate
    if sample_rate % 22050:  # Basic Pitch listens at 22050 Hz: bring other rates to 44100 first
        import scipy.signal

        common = math.gcd(int(sample_rate), rate)
        samples = scipy.signal.resample_poly(np.atleast_2d(samples), rate // common, int(sample_rate) // common, axis=-1)
        sample_rate = rate
    with model_stack(f"cannot run Basic Pitch's model {model}", lambda line: None):
        notes = transcribe(samples, sample_rate)
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    with claim_output(output, "output file"):
        try:
            partial.write_bytes(midi_bytes(notes))
            partial.replace(target)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise RiffstreamError(f"cannot write {target}: {error.strerror}") from None
    seconds = np.atleast_2d(samples).shape[-1] / sample_rate
    return f"wrote {output}: {len(notes)} notes in {seconds:.2f} s of audio"


def prepare_model(request: GenerationRequest, presets: Sequence[str], say: Callable[[str], None]) -> str:
    """Fetch and export ``request.model`` for each preset, so that it later plays offline (``download``)."""
    name = request.model or DEFAULT_MODEL
    began = time.monotonic()
    exported = []
    with model_stack(f"cannot prepare model {name!r}", say):
        from riffstream.model import resolve_decoder, resolve_ir  # lazily, as in riffstream.session.run
        from riffstream.model.hub import HubUnreachable

        for number, preset in enumerate(presets):
            options = model_options(request, name, preset_for(request, playing=False, name=preset))
            try:
                ir = resolve_ir(options, progress=not request.no_progress, refresh=number == 0)
                resolve_decoder(options, progress=not request.no_progress)
            except HubUnreachable as error:
                if number == 0:
                    raise
                say(f"note: the {preset} preset is not prepared: {error}")
                continue
            exported.append(f"{preset} preset in {ir}")
    play = 'riffstream "lofi to jazz"' + ("" if name == DEFAULT_MODEL else f" --model {name}")
    note = " (a random-weight test model: noise, not music)" if name == TINY_MODEL else ""
    return (f"ready in {time.monotonic() - began:.1f} s: {name}{note} is exported ({'; '.join(exported)}); "
            f"it now plays offline: {play}")
