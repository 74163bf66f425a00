"""What a command brings with it, read and checked before any model loads: a timeline with the command
line's defaults, an audio loop for a tempo lock, an audio file as every clip's starting image."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np
import scipy.signal
from PIL import Image

from riffstream.errors import RiffstreamError
from riffstream.sinks import read_audio
from riffstream.spectrogram import SpectrogramParams, audio_to_image
from riffstream.stream import tempi
from riffstream.tempo import loop_audio
from riffstream.timeline import Timeline, read_timeline

if TYPE_CHECKING:
    from riffstream.session.plan import GenerationRequest


def timeline_with_defaults(request: GenerationRequest) -> Timeline:
    """``request.timeline``'s plan, with the request's bpm, seed, strength and negative prompt as its defaults
    (an entry's own values still win)."""
    if request.prompt:
        raise RiffstreamError("give the prompts in the timeline or on the command line, not both")
    timeline = read_timeline(request.timeline)
    overrides = {"bpm": request.bpm, "seed": request.seed, "strength": request.strength,
                 "negative_prompt": request.negative_prompt}
    return dataclasses.replace(timeline, **{key: value for key, value in overrides.items() if value is not None})


def _sound(path: str) -> tuple[np.ndarray, int]:
    samples, sample_rate = read_audio(path)
    if not np.any(samples):
        raise RiffstreamError(f"{path} is silent: it cannot seed the clips")
    return samples, sample_rate


def read_loop(path: str, timeline: Timeline | None, bpm: float | None) -> np.ndarray:
    """The user's loop for a tempo lock: mono at the spectrogram rate, checked to fit whole bars at every tempo."""
    samples, sample_rate = _sound(path)
    mono = np.atleast_2d(samples).astype(np.float64).mean(axis=0)
    rate = SpectrogramParams().sample_rate
    if sample_rate != rate:
        common = math.gcd(int(sample_rate), rate)
        mono = scipy.signal.resample_poly(mono, rate // common, int(sample_rate) // common)
    for tempo in tempi(bpm, timeline):
        try:
            loop_audio(tempo, mono, rate)
        except RiffstreamError as error:
            raise RiffstreamError(f"{path}: {error}") from None
    return mono.astype(np.float32)


def init_image_from_audio(path: str | None, width: int) -> Image.Image | None:
    """The spectrogram of an audio loop, tiled or cut to the clip width, for img2img (None without one)."""
    if path is None:
        return None
    samples, sample_rate = _sound(path)
    pixels = np.asarray(audio_to_image(samples, sample_rate))
    repeats = -(-width // pixels.shape[1])
    return Image.fromarray(np.ascontiguousarray(np.tile(pixels, (1, repeats, 1))[:, :width]))
