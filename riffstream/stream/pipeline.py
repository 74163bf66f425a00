"""The stream's pipeline: plan clips, have a clip source make them, join them into audio, hand it on.

Three stages run at once, each a thread of the :class:`Stream`:

1. **Dispatcher**: walks the :class:`~riffstream.planner.Journey` (or timeline), plans each
   clip as a :class:`~riffstream.stream.sources.ClipJob`, keeps a window of them in flight
   on the :class:`~riffstream.stream.sources.ClipSource` (this process's model, or Ray
   workers), and hands the made clips on in order. A prompt or setting change re-plans
   the clips the source has not started.
2. **Consumer**: turns each image into audio and joins it to the previous clip with
   :class:`~riffstream.stitch.ClipStitcher` (phase continued across the overlap,
   correlation-aware equal-power crossfade, steady loudness), then writes it to every
   :class:`~riffstream.sinks.Sink` (an output file, ...) and to the
   :class:`~riffstream.stream.ring.RingBuffer` (:class:`~riffstream.stream.ring.StreamEnds`
   cuts the stream to its exact duration and fades its very edges).
3. **Clock**: something that takes the ring buffer's audio at the pace it is heard: the
   sound card's :class:`~riffstream.sinks.Player` or a
   :class:`~riffstream.stream.ring.RealTimeClock`. On underrun either plays silence and
   counts it.

The main thread (:meth:`Stream.run`) starts them, shows progress, decides when playing
may start, and stops everything within a second on Ctrl-C or SIGTERM, leaving the
output file valid with every finished clip in it. Only the consumer writes the file; once
:meth:`Stream.stop` returns it writes no more, so the caller may close the file.

When clips come slower than real time (the rate measured as they arrive, whatever makes them):

* a finite ``duration`` starts playing only once that rate says the buffer will not run
  dry before the end (``prebuffer_s`` overrides that);
* endless play starts after the first clip and, whenever the buffer is about to run
  dry, **loops the last clip** (crossfaded, as Riffusion's web app held its last clip)
  until the next one is ready. The output file never contains these repeats.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.journal import FinishedClip
from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION, Clip, Journey, parse_blend
from riffstream.spectrogram import SpectrogramParams
from riffstream.stitch import DEFAULT_CROSSFADE, DEFAULT_LOUDNESS, ClipStitcher, overlap_frames
from riffstream.stream.ring import POLL, RingBuffer, StreamEnds, put_until
from riffstream.stream.sources import ClipJob, ClipSource, MadeClip, clip_source, keep_overlap
from riffstream.tempo import ClipLayout, LoopImages, Slot, beat_grid, check_bpm, clips_to_cover
from riffstream.timeline import Timeline, TimelineJourney

if TYPE_CHECKING:
    from PIL import Image

    from riffstream.journal import Journal
    from riffstream.sinks import Sink

#: Default img2img strength, as Riffusion's seed images used.
DEFAULT_STRENGTH = 0.75
#: Fade-in at the very start and fade-out at the very end, seconds: no click at either edge.
EDGE_FADE = 0.01
#: Live play loops the last clip when less than this much audio (seconds) is buffered.
LOW_WATER = 1.0
#: Most audio (seconds) the live ring buffer holds ahead of the player.
MAX_AHEAD = 600.0
#: Endless live play keeps at most this many clips of audio ahead of the listener, as Riffusion's app kept
#: three clips: a typed prompt is heard that much sooner, and looping the last clip still rides out a stall.
LIVE_AHEAD_CLIPS = 3
#: Made clips waiting for the consumer.
QUEUE_CLIPS = 2
#: The production rate that play decisions use is measured over the last this many clips (and the wait since).
RATE_CLIPS = 8



@dataclass(frozen=True)
class ClipEvent:
    """A clip (or a loop of the last one) has entered the live stream.

    ``live_frame`` is the ring buffer frame where its audio begins, ``frames`` its length;
    ``image`` is its spectrogram; ``model_seconds`` the time the model took to make it
    (denoising and decoding; 0 for a loop).
    """

    clip: Clip
    image: Image.Image
    live_frame: int
    frames: int
    loop: bool = False
    model_seconds: float = 0.0


@dataclass(frozen=True)
class StreamOptions:
    """What to generate and how to join it (everything but the model and the sinks)."""

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
    #: Start each clip from the end of the previous one (img2img), keeping the shared overlap.
    continuation: bool = False
    duration: float | None = None
    save_spectrograms: Path | None = None
    prebuffer: float | None = None
    #: Most audio (seconds) live play buffers ahead of the listener; None: three clips for endless play, the
    #: whole render (a minute at least) for a finite one. Less makes typed prompts heard sooner, more rides
    #: out a stall without looping the last clip.
    max_ahead: float | None = None
    params: SpectrogramParams = field(default_factory=SpectrogramParams)


@dataclass
class StreamStats:
    """Progress, updated by the stream's threads and read by anyone (times are monotonic seconds)."""

    clips: int = 0
    audio_seconds: float = 0.0
    started: float = 0.0
    first_audio: float | None = None
    #: Time spent in the UNet's denoising loops, and the span from the first loop's start to the last one's end.
    denoise_seconds: float = 0.0
    denoise_span: tuple[float, float] | None = None
    decode_seconds: float = 0.0
    loops: int = 0
    #: Clips live play could not wait to polish: held to the base Griffin-Lim iterations (see Stream._can_polish).
    unpolished: int = 0
    finished: bool = False
    #: (when, audio seconds made by then) as each of the last RATE_CLIPS + 1 clips arrived.
    arrivals: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RATE_CLIPS + 1))

    def real_time_factor(self, now: float | None = None) -> float:
        """Seconds of audio made per second of wall time since generation began."""
        elapsed = (now or time.monotonic()) - self.started
        return self.audio_seconds / elapsed if elapsed > 0 else 0.0

    def arrived(self, audio_seconds: float, now: float | None = None) -> None:
        """Note that a clip has arrived, bringing the audio made so far to ``audio_seconds``."""
        self.audio_seconds = audio_seconds
        self.arrivals.append((now or time.monotonic(), audio_seconds))

    def production_rate(self, now: float | None = None) -> float:
        """Seconds of audio made per second lately: over the last clips and the wait since the newest,
        so that it falls at once when clips stop coming (a worker lost, a slower machine). Never above
        the whole run's rate, so that a lucky burst does not start playing too early."""
        now = now or time.monotonic()
        overall = self.real_time_factor(now)
        if len(self.arrivals) < 2:
            return overall
        (first, made_then), (_, made_now) = self.arrivals[0], self.arrivals[-1]
        return min(overall, (made_now - made_then) / (now - first)) if now > first else overall


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
    tempo_locked = options.bpm is not None or (options.timeline is not None and options.timeline.uses_bpm)
    if options.strength == 0 and (options.init_image is not None or tempo_locked):
        pass  # the starting image as it is: no model
    else:
        check_number(options.strength, "strength", checks.STRENGTH)
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
    for bpm in tempi(options.bpm, options.timeline):
        beat_grid(bpm, params, clip_width, overlap_frames(params, crossfade_seconds(options, clip_width)))


def tempi(bpm: float | None, timeline: Timeline | None) -> list[float]:
    """Every tempo a stream locks to: ``bpm`` (the command line's), or a timeline's (where it overrides its default)."""
    return timeline.tempi if timeline is not None else [bpm] if bpm is not None else []


def refuse_remote_continuation(options: StreamOptions) -> None:
    """Continuation chains each clip to the one before: its clips cannot be made apart, on remote workers."""
    if options.continuation:
        raise RiffstreamError("--continuation chains each clip to the one before, so its clips cannot be made "
                              "apart: it runs on one machine, without --ray")


class Stream:
    """One run of the stream: a clip source, options, sinks for the finished audio, and an optional clock.

    ``source`` makes the clips: a :class:`~riffstream.stream.sources.ClipSource` (a Ray pool,
    say), or a loaded model, which the stream wraps in a
    :class:`~riffstream.stream.sources.LocalSource` of its own and closes when it stops.

    ``sinks`` take the exact, finished audio (an :class:`~riffstream.sinks.AudioFileWriter`,
    or any :class:`~riffstream.sinks.Sink`); the stream writes to them and never closes
    them. ``player_factory(ring)`` makes the clock that takes the live audio from the ring
    buffer: the sound card's :class:`~riffstream.sinks.Player` or a :class:`RealTimeClock`.
    ``on_clip`` callbacks get a :class:`ClipEvent` as each clip enters the live stream (in
    the consumer's thread: they must only hand off). :meth:`queue_prompt` and
    :meth:`change` steer an endless stream while it runs. A ``journal`` keeps every clip
    as it is finished; ``finished`` clips (from a journal being resumed) are replayed
    first, in place of the model, so the sinks get exactly what they got the first time.
    """

    def __init__(self, source: ClipSource | object, options: StreamOptions, sinks: Sequence[Sink] = (),
                 player_factory: Callable[[RingBuffer], object] | None = None, journal: Journal | None = None,
                 finished: Sequence[FinishedClip] = ()) -> None:
        from riffstream.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

        self.source, self._owns_source = clip_source(source)
        self.options = options
        self.params = options.params
        self.steps = options.steps or DEFAULT_STEPS
        self.guidance = DEFAULT_GUIDANCE if options.guidance is None else options.guidance
        self.sinks = list(sinks)
        self.clip_width = self.source.options.width
        validate(options, self.clip_width)
        if self.source.options.height != self.params.num_frequencies:
            raise RiffstreamError(f"the model paints {self.source.options.height}-pixel-high images, "
                                  f"the spectrogram needs {self.params.num_frequencies}")
        rate = self.params.sample_rate
        self.clip_seconds = self.params.duration_of(self.clip_width)
        self.crossfade = crossfade_seconds(options, self.clip_width)
        self.overlap_columns = overlap_frames(self.params, self.crossfade)
        self.crossfade_frames = self.overlap_columns * self.params.hop_length
        self.edge_frames = round(EDGE_FADE * rate)
        self.total_clips = self.total_frames = None
        if options.duration is not None:
            self.total_frames = round(options.duration * rate)
            self.total_clips = clips_to_cover(self.params, self.clip_width, self.overlap_columns, self.total_frames,
                                              self._tempo_at)
        self.layout = ClipLayout(self.params, self.clip_width, self.overlap_columns, self._tempo_at)
        self.loops = LoopImages(self.params, self.clip_width, options.loop)
        if options.timeline is not None:
            advance = self.layout.seconds(self.clip_width - self.overlap_columns)
            self.journey: Journey | TimelineJourney = TimelineJourney(
                options.timeline, advance, options.seed, options.clips_per_transition, self.total_clips,
                options.strength)
        else:
            self.journey = Journey(list(options.prompts), options.seed, options.clips_per_transition, self.total_clips)
        self.journal = journal
        self.finished = list(finished)
        self.stats = StreamStats()
        self.stop_event = threading.Event()
        self.prompt_queue: queue.Queue[str] = queue.Queue()
        self._changes: queue.Queue[dict] = queue.Queue()
        self._requested: dict = {}  # the latest value asked for of each setting changed: what clips to come use
        self.negative_prompt = options.negative_prompt
        self.on_clip: list[Callable[[ClipEvent], None]] = []
        self.next_clip = 0
        self.messages: queue.Queue[str] = queue.Queue()
        self._images: queue.Queue = queue.Queue(maxsize=QUEUE_CLIPS)
        self._error: BaseException | None = None
        self._write_lock = threading.Lock()
        self._writes_closed = False
        self.ring: RingBuffer | None = None
        self.player = None
        if player_factory is not None:
            if options.duration is not None:  # room for the whole render, so production may run ahead freely
                ahead = max(60.0, options.duration + self.clip_seconds)
            else:
                ahead = max(LIVE_AHEAD_CLIPS * self.clip_seconds, 2 * LOW_WATER + self.clip_seconds)
            ahead = max(ahead, (options.prebuffer or 0) + self.clip_seconds)
            if options.max_ahead is not None:
                ahead = max(options.max_ahead, (options.prebuffer or 0) + self.clip_seconds)
            self.ring = RingBuffer(round(min(ahead, MAX_AHEAD) * rate), self.params.channels)
            self.player = player_factory(self.ring)
        if not self.source.chains:
            refuse_remote_continuation(options)
        self._threads = [
            threading.Thread(target=self._guard, args=(self._dispatch,), name="riffstream-dispatch", daemon=True),
            threading.Thread(target=self._guard, args=(self._consume,), name="riffstream-consumer", daemon=True),
        ]

    def _tempo_at(self, seconds: float) -> float | None:
        """The tempo clips centred at ``seconds`` lock to (None: none)."""
        timeline = self.options.timeline
        if timeline is None:
            return self.options.bpm
        if getattr(self, "journey", None) is not None and self.journey.left_timeline:
            seconds = min(seconds, self.journey.left_at)
        return timeline.bpm_at(seconds)

    # ------------------------------------------------------------------ dispatcher

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # surfaced in the main thread by run()
            self._error = error
            self.stop_event.set()

    def queue_prompt(self, text: str) -> None:
        """Queue a transition to ``text``, a prompt or blend (thread-safe; ignored when empty).

        A blend that cannot be read is a one-line RiffstreamError, raised here in the caller's thread.
        """
        if text.strip():
            parse_blend(text.strip())
            self.prompt_queue.put(text.strip())

    def change(self, seed: int | None = None, clips_per_transition: int | None = None,
               steps: int | None = None, negative_prompt: str | None = None) -> None:
        """Change settings for the clips planned from now on (thread-safe); one-line error if a value is unusable.

        None leaves a setting as it is; an empty ``negative_prompt`` clears it. The seed walks on
        from the next waypoint, so a transition in progress ends as planned.
        """
        if seed is not None:
            check_number(seed, "seed", checks.SEED)
        if clips_per_transition is not None:
            check_number(clips_per_transition, "clips per transition", checks.CLIPS_PER_TRANSITION)
            if self.total_clips is not None:
                raise RiffstreamError("the journey of a finite --duration is fixed: its pace cannot change")
        if steps is not None:
            check_number(steps, "steps", checks.STEPS)
        change: dict = {key: value for key, value in
                        (("seed", seed), ("clips_per_transition", clips_per_transition), ("steps", steps))
                        if value is not None}
        if negative_prompt is not None:
            change["negative_prompt"] = negative_prompt.strip() or None
        self._requested.update(change)
        self._changes.put(change)

    def settings(self) -> dict:
        """The settings the clips planned from now on use, changes asked for included."""
        return {"seed": self.journey.seed, "clips_per_transition": self.journey.clips_per_transition,
                "negative_prompt": self.negative_prompt, "steps": self.steps, **self._requested}

    def _apply_changes(self, index: int) -> None:
        """Apply queued prompts and changes before planning clip ``index``."""
        while not self.prompt_queue.empty():
            prompt = self.prompt_queue.get()
            leaving = (isinstance(self.journey, TimelineJourney) and not self.journey.left_timeline
                       and bool(self.journey.upcoming(index)))
            try:
                self.journey.queue(prompt, index)
                self.messages.put(f"queued a transition to {prompt!r}"
                                  + ("; the rest of the timeline is dropped" if leaving else ""))
            except RiffstreamError as error:
                self.messages.put(f"ignored {prompt!r}: {error}")
        while not self._changes.empty():
            change = self._changes.get()
            if "seed" in change:
                self.journey.set_seed(change["seed"], index)
            if "clips_per_transition" in change:
                self.journey.set_clips_per_transition(change["clips_per_transition"], index)
            if "steps" in change:
                self.steps = change["steps"]
            if "negative_prompt" in change:
                self.negative_prompt = change["negative_prompt"]

    def _plan(self, index: int, previous: MadeClip | None) -> ClipJob:
        """Plan clip ``index`` (after any change asked for): where it falls, what it is, what it starts from.

        ``previous`` is the clip before it, once made; a continued clip whose previous clip is still
        being made starts from the latents its source made last.
        """
        self._apply_changes(index)
        slot = self.layout.slot(index)
        clip = self.journey.clip(index, self.layout.centre(slot))
        self.next_clip = index + 1
        strength = self.options.strength if clip.strength is None else clip.strength
        init_image = None
        if slot.bpm is not None:
            init_image = self.loops.image(slot)
        elif self.options.init_image is not None:
            init_image = self.options.init_image
        continues = self.options.continuation and index > 0
        return ClipJob(clip, slot, self.steps, self.guidance, strength, self.negative_prompt, init_image,
                       continue_overlap=self.overlap_columns if continues else 0,
                       previous_latents=previous.latents if continues and previous is not None else None)

    def _made_without_model(self, job: ClipJob) -> MadeClip | None:
        """A clip that needs no model: replayed from the journal being resumed, or its starting image as it is."""
        if job.clip.index < len(self.finished):
            replayed = self.finished[job.clip.index]
            return MadeClip(replayed.image, replayed.latents)
        if job.strength == 0 and job.init_image is not None:
            return MadeClip(job.init_image)
        return None

    def _change_waiting(self) -> bool:
        return not self.prompt_queue.empty() or not self._changes.empty()

    def _dispatch(self) -> None:
        """Keep a window of clips in flight on the source, and hand them on in order as they are made.

        A prompt or setting change takes effect from the first clip the source has not started:
        those clips are dropped and planned again with the change (a clip being made is kept, so a
        slow model loses no work).
        """
        source = self.source
        in_flight: deque[tuple[ClipJob, object]] = deque()  # (job, handle, or the MadeClip that needs no model)
        index = 0
        handed: MadeClip | None = None  # the clip handed on last
        try:
            while not self.stop_event.is_set():
                if in_flight and self._change_waiting():
                    index = self._replan(in_flight, index)
                while len(in_flight) < source.window and (self.total_clips is None or index < self.total_clips):
                    before = in_flight[-1][1] if in_flight else handed
                    job = self._plan(index, before if isinstance(before, MadeClip) else None)
                    in_flight.append((job, self._made_without_model(job) or source.submit(job)))
                    index += 1
                if not in_flight:
                    break
                job, handle = in_flight[0]
                made = handle if isinstance(handle, MadeClip) else source.collect(handle, POLL)
                if made is None:
                    continue
                in_flight.popleft()
                if self.options.continuation and handed is not None:
                    made = replace(made, image=keep_overlap(handed.image, made.image, self.overlap_columns))
                self._count(made)
                latents = made.latents if self.options.continuation else None
                image = (job.clip, job.slot, made.image, latents, made.model_seconds)
                if not put_until(self._images, image, self.stop_event):
                    return
                handed = made
        finally:
            for _, handle in in_flight:
                if not isinstance(handle, MadeClip):
                    source.cancel(handle)
        put_until(self._images, None, self.stop_event)

    def _replan(self, in_flight: deque, index: int) -> int:
        """Drop the clips in flight that the source has not started, rewind the plan to the first of them,
        and return the index to plan next."""
        kept = 0
        while kept < len(in_flight) and (isinstance(in_flight[kept][1], MadeClip)
                                         or self.source.started(in_flight[kept][1])):
            kept += 1
        if kept == len(in_flight):
            return index
        index = in_flight[kept][0].clip.index
        while len(in_flight) > kept:
            _, handle = in_flight.pop()
            if not isinstance(handle, MadeClip):
                self.source.cancel(handle)
        self.journey.rewind(index, self.layout.centre(self.layout.slot_of(index - 1)) if index else None)
        self.layout.rewind(index)
        return index

    def _count(self, made: MadeClip) -> None:
        """Add what the model spent on ``made`` to the stream's figures."""
        stats = self.stats
        stats.denoise_seconds += made.denoise_seconds
        stats.decode_seconds += made.decode_seconds
        if made.denoise_span is not None:
            first = stats.denoise_span[0] if stats.denoise_span else made.denoise_span[0]
            stats.denoise_span = (first, made.denoise_span[1])

    # ------------------------------------------------------------------ consumer

    def _consume(self) -> None:
        channels, rate = self.params.channels, self.params.sample_rate
        clips = ClipStitcher(self.params, self.crossfade, loudness=self.options.loudness)
        # Live play joins the same clips, until a loop makes it differ from the file: from then
        # on it has a stitcher of its own (or shares the only one, when there is no file).
        live_clips: ClipStitcher | None = None
        to_file = StreamEnds(channels, self.edge_frames, self.total_frames)
        live = StreamEnds(channels, self.edge_frames, self.total_frames) if self.ring else None
        last_image = last_clip = None
        last_overlap = self.overlap_columns
        told_looping = False
        try:
            while not self.stop_event.is_set():
                try:
                    item = self._images.get(timeout=POLL)
                except queue.Empty:
                    if self.stop_event.is_set():
                        break
                    if (live is not None and last_image is not None and self.player_started
                            and self.ring.available < LOW_WATER * rate):
                        if not told_looping:
                            self.messages.put(
                                f"the model makes {self.stats.production_rate():.2f} s of audio per second: "
                                "looping the last clip until the next one is ready"
                            )
                            told_looping = True
                        self.stats.loops += 1
                        if live_clips is None:
                            live_clips = copy.deepcopy(clips) if self.sinks else clips
                        repeat = live_clips.add(last_image, last_overlap, adaptive=False)
                        if live.total is not None:
                            live.total += repeat.shape[1]
                        self._announce(last_clip, last_image, repeat.shape[1], loop=True)
                        self._feed_ring(live.push(repeat))
                    continue
                if item is None:
                    break
                clip, slot, image, latents, model_seconds = item
                if self.journal is not None and clip.index >= len(self.finished):
                    self.journal.add(clip.index, image, latents)
                if self.options.save_spectrograms is not None:
                    self._save_spectrogram(clip, slot, image)
                overlap = self.clip_width - slot.advance
                polish = self._can_polish()
                self.stats.unpolished += not polish
                audio = clips.add(image, overlap, polish)
                self._write(to_file.push(audio))
                if live_clips is not None and live_clips is not clips:
                    audio = live_clips.add(image, overlap, polish)
                self._announce(clip, image, audio.shape[1], model_seconds=model_seconds)
                if live is not None and not self._feed_ring(live.push(audio)):
                    break
                last_image, last_clip, last_overlap = image, clip, overlap
                self.stats.clips += 1
                self.stats.arrived(to_file.emitted / rate)
                if self.stats.first_audio is None:
                    self.stats.first_audio = time.monotonic() - self.stats.started
        finally:
            tail = clips.finish()
            self._write(to_file.push(tail))
            self._write(to_file.finish())
            if live is not None:
                live_tail = tail if live_clips is None or live_clips is clips else live_clips.finish()
                if live_tail.shape[1]:
                    self._feed_ring(live.push(live_tail))
                self._feed_ring(live.finish())
            self.stats.audio_seconds = to_file.emitted / rate
            self.stats.finished = True
            if self.ring is not None:
                self.ring.closed = True

    def _can_polish(self) -> bool:
        """Whether the listener can wait while a hard clip takes Griffin-Lim's extra iterations
        (up to 36 more, about 0.5 s on two cores): always in a render, and in a stream whose
        journal must replay to the same bytes; in other live play only while the ring holds
        at least a clip's audio. On two cores that time is the UNet's: a live stream near
        real time would otherwise fall behind on exactly the clips that are hard."""
        return (self.ring is None or self.journal is not None
                or self.ring.available >= self.clip_seconds * self.params.sample_rate)

    def _write(self, audio: np.ndarray) -> None:
        with self._write_lock:
            if not self._writes_closed and audio.shape[1]:
                for sink in self.sinks:
                    sink.write(audio)

    def _announce(self, clip: Clip, image, frames: int, loop: bool = False, model_seconds: float = 0.0) -> None:
        if self.on_clip:
            live_frame = (self.ring.written if self.ring is not None
                          else round(self.stats.audio_seconds * self.params.sample_rate))
            event = ClipEvent(clip, image, live_frame, frames, loop, model_seconds)
            for callback in self.on_clip:
                callback(event)

    def _feed_ring(self, audio: np.ndarray) -> bool:
        return self.ring.write(np.ascontiguousarray(audio.T), self.stop_event)

    def _save_spectrogram(self, clip: Clip, slot: Slot, image) -> None:
        folder = self.options.save_spectrograms
        name = f"clip-{clip.index:05d}.png"
        image.save(folder / name, format="PNG", exif=_exif(self.params))
        record = {"file": name, "prompt_a": clip.prompt_a, "prompt_b": clip.prompt_b, "alpha": clip.alpha,
                  "seed_a": clip.seed_a, "seed_b": clip.seed_b, "start": round(self.layout.seconds(slot.start), 2),
                  "bpm": slot.bpm}
        if clip.strength is not None:
            record["strength"] = clip.strength
        with open(folder / "clips.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ main thread

    player_started = False

    def ahead_seconds(self) -> float:
        """Audio buffered ahead of the player, seconds."""
        return self.ring.available / self.params.sample_rate if self.ring is not None else 0.0

    def ready_to_play(self) -> bool:
        """Whether playing can start now without the buffer running dry before the end."""
        ahead, stats = self.ahead_seconds(), self.stats
        if stats.finished or (self.ring is not None and self.ring.available >= self.ring.capacity - 1):
            return True
        if stats.clips == 0:
            return False
        if self.options.prebuffer is not None:
            return ahead >= self.options.prebuffer
        if self.options.duration is None:
            return True
        rate = stats.production_rate()
        remaining = self.options.duration - stats.audio_seconds
        clip_time = self.clip_seconds / rate if rate > 0 else math.inf
        # Production at `rate` while playing at 1: the buffer's low point is at the end.
        needed = max(clip_time, (1 - rate) * remaining / rate if rate < 1 else 0.0) * 1.2 + LOW_WATER
        return ahead >= needed

    def start(self) -> None:
        """Start the dispatcher and consumer threads."""
        if self.options.save_spectrograms is not None:
            self.options.save_spectrograms.mkdir(parents=True, exist_ok=True)
        self.stats.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop every thread and the player; True if all ended within ``timeout`` seconds.

        The consumer is joined first, as it flushes the last finished audio to the file; after
        this returns nothing more is written, so the file can be closed even if the source is
        still inside a model call (which cannot be interrupted; it ends unused). A source the
        stream made (from a model) is closed; one it was given is its owner's to close.
        """
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in reversed(self._threads):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._write_lock:
            self._writes_closed = True
        if self.player is not None:
            self.player.close()
        if self._owns_source:
            self.source.close(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def poll(self) -> bool:
        """One turn of the main loop: start playing when ready; False once the stream has ended."""
        if self._error is not None:
            raise self._error
        if self.player is not None and not self.player_started and self.ready_to_play():
            self.player.start()
            self.player_started = True
        if not self.stats.finished:
            return True
        if self.player is not None:
            return self.ring.available > 0
        return False

    def run(self, on_tick: Callable[[Stream], None] | None = None, tick: float = 0.1) -> None:
        """Run to the end (or until Ctrl-C / an error), calling ``on_tick(self)`` as it goes."""
        self.start()
        try:
            while self.poll():
                if on_tick is not None:
                    on_tick(self)
                self.stop_event.wait(tick)
            if self.player is not None:
                self.player.drain()
            if on_tick is not None:
                on_tick(self)
        finally:
            self.stop()
        if self._error is not None:
            raise self._error


def _exif(params: SpectrogramParams):
    from PIL import Image

    exif = Image.Exif()
    exif.update(params.to_exif())
    return exif
