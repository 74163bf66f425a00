"""What a command brings with it, read and checked before any model loads: a timeline with the command
line's defaults, an audio loop for a tempo lock, an audio file as every clip's starting image, MIDI files
rendered and placed at stream time."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.signal
from PIL import Image

from riffstream.errors import RiffstreamError
from riffstream.midi import find_soundfont, fluidsynth, read_midi, render_midi
from riffstream.sinks import read_audio
from riffstream.spectrogram import SpectrogramParams, audio_to_image
from riffstream.stream import tempi
from riffstream.tempo import TempoMap, loop_audio
from riffstream.timeline import Timeline, read_timeline

if TYPE_CHECKING:
    from riffstream.session.plan import GenerationRequest
    from riffstream.stream import StreamOptions


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


@dataclass(frozen=True)
class MidiTrack:
    """MIDI files rendered and placed at stream time: the audio (mono at the spectrogram rate), the tempo map
    (the files' tempi where they play, the timeline's elsewhere), and where the last one ends, seconds."""

    audio: np.ndarray
    tempo: TempoMap
    end: float


def midi_track(init_midi: str | None, soundfont: str | None, timeline: Timeline | None) -> MidiTrack | None:
    """``--init-midi`` (from 0:00), or a timeline's ``init_midi`` entries (each from its time until the next
    one), rendered with FluidSynth and placed in time; None when neither is given."""
    placed = [(0.0, init_midi, None)] if init_midi is not None else []
    if timeline is not None:
        if placed and any(entry.init_midi for entry in timeline.entries):
            raise RiffstreamError("give MIDI files in the timeline (init_midi) or on the command line, not both")
        placed += [(entry.time, entry.init_midi, f"{timeline.source}:{entry.line}: ")
                   for entry in timeline.entries if entry.init_midi]
    if not placed:
        if soundfont is not None:
            raise RiffstreamError("--soundfont plays --init-midi: give the MIDI file too")
        return None
    font, rate = find_soundfont(soundfont), SpectrogramParams().sample_rate
    fluidsynth()
    own = [(0.0, timeline.bpm)] + [(e.time, e.bpm) for e in timeline.entries if e.bpm] if timeline else [(0.0, None)]
    tempo, pieces, end = [], [], 0.0
    for number, (start, path, where) in enumerate(placed):
        until = placed[number + 1][0] if number + 1 < len(placed) else math.inf
        try:
            score = read_midi(path)
            audio = render_midi(path, font, rate).mean(axis=0)
        except RiffstreamError as error:
            raise RiffstreamError(f"{where or ''}{error}") from None
        audio = audio[: round(min(len(audio) / rate, until - start) * rate)]
        stop = start + len(audio) / rate
        pieces.append((round(start * rate), audio))
        tempo = [change for change in tempo if change[0] < start]
        tempo += [(start + at, bpm) for at, bpm in score.tempo.changes if start + at < stop]
        if stop < until and timeline is not None:  # the timeline's tempo again; without one the last tempo holds
            tempo += [(stop, timeline.bpm_at(stop))] + [(at, bpm) for at, bpm in own if stop < at < until]
        end = max(end, stop)
    before = [(at, bpm) for at, bpm in own if at < placed[0][0]]
    changes = [c for n, c in enumerate(before + tempo) if n == 0 or c[1] != (before + tempo)[n - 1][1]]
    track = np.zeros(max(offset + len(audio) for offset, audio in pieces), np.float32)
    for offset, audio in pieces:
        track[offset : offset + len(audio)] = audio
    return MidiTrack(track, TempoMap(tuple(changes)), end)


def stream_tempo(options: StreamOptions) -> TempoMap | None:
    """The tempo a stream's notes are written on: its MIDI files' tempo map, else its timeline's tempi at their
    entries' times, else ``--bpm``; None without a tempo lock."""
    if options.tempo_map is not None:
        return options.tempo_map
    if options.timeline is not None and options.timeline.uses_bpm:
        timeline = options.timeline
        return TempoMap(((0.0, timeline.bpm_at(0.0)),) + tuple((e.time, e.bpm) for e in timeline.entries[1:] if e.bpm))
    return TempoMap(((0.0, options.bpm),)) if options.bpm is not None else None
