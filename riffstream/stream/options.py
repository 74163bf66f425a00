"""What a stream plays and how it joins its clips: :class:`StreamOptions` and the checks that need no model.

Everything here is plain data and pure functions, so the session layer can check a command
completely before any model loads, and the journal can record exactly what decides the audio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.fingerprint import NOT_RECORDED, fingerprint
from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION
from riffstream.spectrogram import SpectrogramParams
from riffstream.stitch import DEFAULT_CROSSFADE, DEFAULT_LOUDNESS, overlap_frames
from riffstream.tempo import TempoMap, beat_grid, check_bpm
from riffstream.timeline import Timeline

if TYPE_CHECKING:
    from PIL import Image

#: The ways to steer endless play: turn at once, or after the transition in progress.
STEER_MODES = ("now", "smooth")
#: Default img2img strength, as Riffusion's seed images used.
DEFAULT_STRENGTH = 0.75
#: Fade-in at the very start and fade-out at the very end, seconds: no click at either edge.
EDGE_FADE = 0.01


@dataclass(frozen=True)
class StreamOptions:
    """What to generate and how to join it (everything but the model and the sinks).

    Every field decides the audio, and so is part of :meth:`fingerprint`, unless its metadata is
    :data:`~riffstream.fingerprint.NOT_RECORDED`: a new option is recorded by resumable renders without being listed anywhere.
    """

    prompts: tuple[str, ...]
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    clips_per_transition: int = DEFAULT_CLIPS_PER_TRANSITION
    crossfade: float | None = None  # None: DEFAULT_CROSSFADE, or a quarter of a narrower clip
    loudness: float | None = DEFAULT_LOUDNESS
    #: A spectrogram every clip starts from (img2img), e.g. of an audio loop, to lock the tempo.
    init_image: Image.Image | None = None
    #: How much of each clip img2img repaints: 1.0 ignores the init image; 0 keeps it as it is (no model).
    strength: float = DEFAULT_STRENGTH
    #: Tempo lock: clips start on this tempo's beat grid, each from a drum loop (or ``loop``) cut to where it starts.
    bpm: float | None = None
    #: The user's loop (mono, at the params' sample rate) that tempo-locked clips start from, instead of drums.
    loop: np.ndarray | None = None
    #: A plan in time: prompts, transitions and per-entry options; it replaces ``prompts`` for planning.
    timeline: Timeline | None = None
    #: Audio placed at stream time (mono, at the params' sample rate; an --init-midi render): each clip it reaches
    #: starts from it over the stream time the clip covers, as a tempo-locked clip starts from its loop.
    track: np.ndarray | None = None
    #: Tempo changes in stream time (a MIDI file's tempo map); it replaces ``bpm`` and the timeline's tempi.
    tempo_map: TempoMap | None = None
    #: Start each clip from the end of the previous one (img2img), keeping the shared overlap.
    continuation: bool = False
    duration: float | None = None
    save_spectrograms: Path | None = field(default=None, metadata=NOT_RECORDED)
    prebuffer: float | None = field(default=None, metadata=NOT_RECORDED)
    #: Most audio (seconds) live play buffers ahead of the listener; None: three clips for endless play, the
    #: whole render (a minute at least) for a finite one. Less makes typed prompts heard sooner, more rides
    #: out a stall without looping the last clip.
    max_ahead: float | None = field(default=None, metadata=NOT_RECORDED)
    #: How a steer is taken in endless play: "now" turns at once and takes back audio not yet heard;
    #: "smooth" waits for the transition in progress, and what is made plays out (Riffusion's app).
    steer: str = field(default="now", metadata=NOT_RECORDED)
    params: SpectrogramParams = field(default_factory=SpectrogramParams)

    @property
    def tempo_locked(self) -> bool:
        """Whether clips lock to a tempo (``bpm``, or tempi in the timeline)."""
        return (self.bpm is not None or (self.timeline is not None and self.timeline.uses_bpm)
                or (self.tempo_map is not None and bool(self.tempo_map.tempi)))

    def bpm_at(self, seconds: float) -> float | None:
        """The tempo in force at ``seconds`` of a plan followed to the end (None: no tempo lock there)."""
        if self.tempo_map is not None:
            return self.tempo_map.bpm_at(seconds)
        return self.timeline.bpm_at(seconds) if self.timeline is not None else self.bpm

    def fingerprint(self) -> dict:
        """Everything that decides the audio, as JSON-able values (pictures and loops as digests): what a
        resumable render records, and a resume must match."""
        return fingerprint(self)


def crossfade_seconds(options: StreamOptions, clip_width: int) -> float:
    """The crossfade in force: the option, else the default, shortened for narrow clips."""
    if options.crossfade is not None:
        return options.crossfade
    return min(DEFAULT_CROSSFADE, options.params.duration_of(clip_width) / 4)


def validate(options: StreamOptions, clip_width: int) -> None:
    """Check options that need no model: fail fast, before loading anything."""
    params = options.params
    clip_s = params.duration_of(clip_width)
    if not options.prompts or not all(p.strip() for p in options.prompts):
        raise RiffstreamError("empty prompt: give text such as \"lofi hip hop to smooth jazz\"")
    check_number(options.seed, "seed", checks.SEED)
    for name, limits in (("duration", checks.DURATION), ("steps", checks.STEPS), ("guidance", checks.GUIDANCE),
                         ("prebuffer", checks.PREBUFFER), ("loudness", checks.LOUDNESS),
                         ("crossfade", checks.CROSSFADE)):
        if getattr(options, name) is not None:
            check_number(getattr(options, name), name, limits)
    check_number(options.clips_per_transition, "clips per transition", checks.CLIPS_PER_TRANSITION)
    if options.steer not in STEER_MODES:
        raise RiffstreamError(f"--steer must be one of {', '.join(STEER_MODES)}, not {options.steer!r}")
    tempo_locked = options.tempo_locked
    if not (options.strength == 0 and (options.init_image is not None or options.track is not None or tempo_locked)):
        check_number(options.strength, "strength", checks.STRENGTH)  # 0 with a starting image: no model
    if options.bpm is not None:
        check_bpm(options.bpm)
    if options.loop is not None and not tempo_locked:
        raise RiffstreamError("a loop to start from needs a tempo: give --bpm (or bpm in the timeline)")
    if tempo_locked and options.continuation:
        raise RiffstreamError("--continuation and a tempo both choose where each clip starts from: use one")
    if tempo_locked and options.init_image is not None:
        raise RiffstreamError("under a tempo lock every clip starts from the loop: give it as the loop, not an init image")
    if not 0 <= crossfade_seconds(options, clip_width) <= clip_s / 2 - EDGE_FADE:
        raise RiffstreamError(f"crossfade must be between 0 and {clip_s / 2 - EDGE_FADE:.2f} s for {clip_s:.2f}-s clips")
    if options.track is not None and options.init_image is not None:
        raise RiffstreamError("--init-midi and --init-audio both give what clips start from: use one")
    for bpm in tempi(options.bpm, options.timeline, options.tempo_map):
        beat_grid(bpm, params, clip_width, overlap_frames(params, crossfade_seconds(options, clip_width)))


def tempi(bpm: float | None, timeline: Timeline | None, tempo_map: TempoMap | None = None) -> list[float]:
    """Every tempo a stream locks to: a tempo map's (a MIDI file's), else ``bpm`` (the command line's), or a
    timeline's (where it overrides its default)."""
    if tempo_map is not None:
        return tempo_map.tempi
    return timeline.tempi if timeline is not None else [bpm] if bpm is not None else []


def refuse_remote_continuation(options: StreamOptions) -> None:
    """Continuation chains each clip to the one before: its clips cannot be made apart, on remote workers."""
    if options.continuation:
        raise RiffstreamError("--continuation chains each clip to the one before, so its clips cannot be made "
                              "apart: it runs on one machine, without --ray")
