"""The stream: model -> spectrogram images -> audio -> crossfade -> file and ring buffer -> sound card.

Four stages run at once, and this is the only module with threads:

1. **Producer** (thread): walks the :class:`~riffstream.planner.Journey`, lerping prompt
   embeddings and slerping seed noise, and has the model's UNet denoise one clip's latents.
2. **Decoder** (thread): the VAE decodes each clip's latents into a spectrogram image while
   the UNet already denoises the next clip, so the UNet never waits for the decoder or the
   audio stage (on a small CPU the two share the cores; on a GPU the audio stage is free).
3. **Consumer** (thread): turns each image into audio and joins it to the previous clip
   with :class:`~riffstream.stitch.ClipStitcher` (phase continued across the overlap,
   correlation-aware equal-power crossfade, steady loudness), then writes it to every
   :class:`~riffstream.sinks.Sink` (an output file, ...) and to the :class:`RingBuffer`
   (:class:`StreamEnds` cuts the stream to its exact duration and fades its very edges).
4. **Clock**: something that takes the ring buffer's audio at the pace it is heard. Either
   the sound card (:class:`~riffstream.sinks.Player`, in PortAudio's thread: its callback
   only copies from the ring buffer), or :class:`RealTimeClock` (a thread of its own), which
   hands each block to live sinks such as :class:`~riffstream.sinks.broadcast.Broadcast`.
   On underrun either plays silence and counts it.

The main thread (:meth:`Stream.run`) starts them, shows progress, decides when playing
may start, and stops everything within a second on Ctrl-C or SIGTERM, leaving the
output file valid with every finished clip in it. Only the consumer writes the file; once
:meth:`Stream.stop` returns it writes no more, so the caller may close the file. A model
call in progress cannot be interrupted: its thread is left to end on its own, unused.

When the model is slower than real time:

* a finite ``duration`` starts playing only once the measured production rate says the
  buffer will not run dry before the end (``prebuffer_s`` overrides that);
* endless play starts after the first clip and, whenever the buffer is about to run
  dry, **loops the last clip** (crossfaded, as Riffusion's web app held its last clip)
  until the next one is ready. The output file never contains these repeats.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION, Clip, Journey, blend_embedding, lerp, parse_blend, slerp
from riffstream.spectrogram import SpectrogramParams
from riffstream.stitch import DEFAULT_CROSSFADE, DEFAULT_LOUDNESS, ClipStitcher, overlap_frames
from riffstream.journal import FinishedClip
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
#: Clips waiting between stages (latents for the decoder, images for the consumer).
QUEUE_CLIPS = 2
#: How often (seconds) waiting threads look at the stop flag.
POLL = 0.02
#: Block the real-time clock hands to live sinks, seconds.
CLOCK_BLOCK = 0.05
#: A clock this far behind its schedule (seconds) starts a new one instead of rushing to catch up.
CLOCK_SLIP = 1.0


class _Stopped(Exception):
    """Raised inside the model's step callback to abandon a clip when the stream stops."""


class StreamEnds:
    """Gives the stream its exact length and click-free ends, block by block.

    The first ``edge_fade`` samples fade in and the last fade out. ``push`` returns the
    samples that are final so far, holding back ``edge_fade`` of them for a fade-out that
    may still come; ``finish`` returns the rest. With ``total`` the output is exactly that
    many samples long, and ends (with its fade-out) inside the push that reaches it.
    """

    def __init__(self, channels: int, edge_fade: int, total: int | None = None) -> None:
        self.channels, self.edge_fade, self.total = channels, edge_fade, total
        self._held: np.ndarray | None = None
        self.emitted = 0
        self.done = False

    def _ramp(self, frames: int) -> np.ndarray:
        return np.arange(1, frames + 1, dtype=np.float32) / np.float32(max(frames, 1))

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add the next block (channels, n); returns the samples that are now final."""
        block = np.atleast_2d(np.asarray(block, dtype=np.float32))
        if self.done:
            return np.zeros((self.channels, 0), np.float32)
        if self._held is None:
            body = block.copy()
            fade = min(self.edge_fade, body.shape[1])
            body[:, :fade] *= self._ramp(fade)
        else:
            body = np.concatenate([self._held, block], axis=1)
        if self.total is not None and self.emitted + body.shape[1] >= self.total:
            return self._end(body[:, : self.total - self.emitted])
        split = max(0, body.shape[1] - self.edge_fade)
        ready, self._held = body[:, :split], body[:, split:]
        self.emitted += ready.shape[1]
        return ready

    def finish(self) -> np.ndarray:
        """The held-back end, faded out; the stream is over after this."""
        if self.done or self._held is None:
            self.done = True
            return np.zeros((self.channels, 0), np.float32)
        return self._end(self._held)

    def _end(self, tail: np.ndarray) -> np.ndarray:
        tail = tail.copy()
        fade = min(self.edge_fade, tail.shape[1])
        if fade:
            tail[:, tail.shape[1] - fade :] *= self._ramp(fade)[::-1]
        self.emitted += tail.shape[1]
        self._held, self.done = None, True
        return tail


def continuation_seed(previous_latents: np.ndarray, overlap: int, scale: int = 8) -> np.ndarray:
    """The latents a continued clip starts from (img2img): the previous clip's latent columns
    under its last ``overlap`` image columns, then those columns mirrored, tiled to the clip's
    width, so the seed runs on without a jump and keeps the previous clip's sound.

    Working on latents rather than on the decoded image spares a VAE encode per clip and
    lets the producer start the next clip before the decoder has painted this one.
    """
    width = previous_latents.shape[-1]
    columns = min(width, max(1, -(-overlap // scale)))
    tail = previous_latents[..., width - columns :]
    mirrored = np.concatenate([tail, tail[..., ::-1]], axis=-1)
    repeats = -(-width // mirrored.shape[-1])
    return np.ascontiguousarray(np.tile(mirrored, repeats)[..., :width])


def keep_overlap(previous: Image.Image, image: Image.Image, overlap: int) -> Image.Image:
    """``image`` with its first ``overlap`` columns replaced by the previous clip's last ones,
    so that the two clips agree exactly where they are crossfaded."""
    from PIL import Image

    if not overlap:
        return image
    pixels = np.array(image.convert("RGB"))
    before = np.asarray(previous.convert("RGB"))
    pixels[:, :overlap] = before[:, before.shape[1] - overlap :]
    return Image.fromarray(pixels)


@dataclass(frozen=True)
class ClipJob:
    """One clip to make, as the stream planned it: what :func:`denoise_job` needs, and nothing of the stream.

    ``init_image`` is the starting image (the init audio's or the tempo loop's); ``init_latents``
    the continuation seed, which replaces it. Jobs pickle, so a remote worker can make them.
    """

    clip: Clip
    slot: Slot
    steps: int
    guidance: float
    strength: float
    negative_prompt: str | None
    init_image: Image.Image | None = None
    init_latents: np.ndarray | None = None


def denoise_job(model, job: ClipJob, encoded: dict | None = None,
                on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The latents of ``job``'s clip: prompt (or blend) embeddings lerped, seed noise slerped, and img2img
    from its starting image if it has one. The local stream and Ray workers both run this, so a clip
    is the same wherever it is made. ``encoded`` caches starting images' latents between calls."""
    from riffstream.model import noise_for_seed

    clip = job.clip
    embeds = lerp(blend_embedding(model.encode_prompt, clip.prompt_a),
                  blend_embedding(model.encode_prompt, clip.prompt_b), clip.alpha)
    noise = slerp(noise_for_seed(clip.seed_a, model.latents_shape), noise_for_seed(clip.seed_b, model.latents_shape),
                  clip.alpha)
    init_latents = job.init_latents
    if init_latents is None and job.init_image is not None:
        encoded = {} if encoded is None else encoded
        key = hashlib.sha1(job.init_image.tobytes()).hexdigest()
        if key not in encoded:
            if len(encoded) >= 64:
                encoded.clear()
            encoded[key] = model.encode_image(job.init_image)
        init_latents = encoded[key]
    return model.denoise(embeds, negative_embedding(model, clip, job.negative_prompt), noise, steps=job.steps,
                         guidance=job.guidance, init_latents=init_latents, strength=job.strength, on_step=on_step)


def negative_embedding(model, clip: Clip, negative_prompt: str | None) -> np.ndarray | None:
    """A clip's negative embedding: its ends' (a timeline's) lerped, else ``negative_prompt``'s; None for none."""
    if clip.negative_a is None and clip.negative_b is None:
        return blend_embedding(model.encode_prompt, negative_prompt) if negative_prompt else None
    ends = [blend_embedding(model.encode_prompt, text) if text else model.encode_prompt("")
            for text in (clip.negative_a or negative_prompt, clip.negative_b or negative_prompt)]
    return lerp(ends[0], ends[1], clip.alpha)


class RingBuffer:
    """A preallocated single-producer, single-consumer ring of float32 frames (frames, channels).

    The writer (consumer thread) blocks while it is full; the reader (the audio callback)
    never blocks, never allocates and takes no lock: each side only advances its own
    counter, after copying, so the other side always sees whole frames.
    """

    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity, self.channels = capacity, channels
        self._data = np.zeros((capacity, channels), np.float32)
        self._written = 0
        self._read = 0
        #: Set by the writer once the stream has ended: running empty is then no underrun.
        self.closed = False

    @property
    def available(self) -> int:
        """Frames written and not yet read."""
        return self._written - self._read

    @property
    def written(self) -> int:
        """Frames written since the start."""
        return self._written

    def write(self, frames: np.ndarray, stop: threading.Event) -> bool:
        """Append (n, channels) frames, waiting for room; False if ``stop`` was set first."""
        done = 0
        while done < len(frames):
            room = self.capacity - self.available
            if room == 0:
                if stop.wait(POLL):
                    return False
                continue
            start = self._written % self.capacity
            n = min(room, len(frames) - done, self.capacity - start)
            self._data[start : start + n] = frames[done : done + n]
            self._written += n
            done += n
        return True

    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` frames into ``out``; returns how many (never waits)."""
        n = min(len(out), self._written - self._read)
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start : start + first]
        out[first:n] = self._data[: n - first]
        self._read += n
        return n


class RealTimeClock:
    """Takes audio from the ring buffer at real-time pace and hands it to live sinks, block by block.

    The sound card's :class:`~riffstream.sinks.Player` without a sound card: it has the
    same ``start``/``drain``/``close`` and ``underruns``, and its thread (started by
    :meth:`start`) only copies from the ring and calls the sinks. Silence fills an
    underrun, so listeners hear a steady stream; ``silence_frames`` counts it, which maps
    ring frames to the clock's own time (:meth:`stream_frame`).
    """

    def __init__(self, source: RingBuffer, sample_rate: int, sinks: Sequence[Sink],
                 block_seconds: float = CLOCK_BLOCK) -> None:
        self.source, self.sample_rate, self.sinks = source, sample_rate, list(sinks)
        self.block = np.zeros((max(1, round(block_seconds * sample_rate)), source.channels), np.float32)
        self.underruns = 0
        self.frames_out = 0
        self.silence_frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riffstream-clock", daemon=True)

    @property
    def stream_seconds(self) -> float:
        """Audio handed to the sinks so far, seconds: the clock's own time."""
        return self.frames_out / self.sample_rate

    def stream_frame(self, ring_frame: int) -> int:
        """The clock time (frames) at which ring frame ``ring_frame`` is heard, if no underrun comes first."""
        return ring_frame + self.silence_frames

    def start(self) -> None:
        """Start handing out audio."""
        self._thread.start()

    def _run(self) -> None:
        period = len(self.block) / self.sample_rate
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                copied = self.source.read_into(self.block)
                if copied < len(self.block):
                    if self.source.closed and self.source.available == 0:
                        if copied:
                            self._hand_out(self.block[:copied])
                        break
                    self.block[copied:] = 0
                    self.underruns += 1
                    self.silence_frames += len(self.block) - copied
                self._hand_out(self.block)
                due += period
                late = time.monotonic() - due
                if late > CLOCK_SLIP:
                    due = time.monotonic()
                elif late < 0:
                    self._stop.wait(-late)
        finally:
            for sink in self.sinks:
                sink.close()

    def _hand_out(self, frames: np.ndarray) -> None:
        audio = np.ascontiguousarray(frames.T)
        for sink in self.sinks:
            sink.write(audio)
        self.frames_out += len(frames)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until the source has ended and everything in it has been handed out."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop handing out audio and close the sinks (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        elif self._thread.ident is None:
            for sink in self.sinks:
                sink.close()


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
    #: Most audio (seconds) live play buffers ahead of the listener; None: a minute or more. Less makes
    #: typed prompts heard sooner, more rides out a slow model longer.
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
    finished: bool = False

    def real_time_factor(self, now: float | None = None) -> float:
        """Seconds of audio made per second of wall time since generation began."""
        elapsed = (now or time.monotonic()) - self.started
        return self.audio_seconds / elapsed if elapsed > 0 else 0.0


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
    """One run of the stream: a model, options, sinks for the finished audio, and an optional clock.

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

    def __init__(self, model, options: StreamOptions, sinks: Sequence[Sink] = (),
                 player_factory: Callable[[RingBuffer], object] | None = None, journal: Journal | None = None,
                 finished: Sequence[FinishedClip] = ()) -> None:
        from riffstream.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

        self.model = model
        self.options = options
        self.params = options.params
        self.steps = options.steps or DEFAULT_STEPS
        self.guidance = DEFAULT_GUIDANCE if options.guidance is None else options.guidance
        self.sinks = list(sinks)
        self.clip_width = model.options.width
        validate(options, self.clip_width)
        if model.options.height != self.params.num_frequencies:
            raise RiffstreamError(
                f"the model paints {model.options.height}-pixel-high images, the spectrogram needs {self.params.num_frequencies}"
            )
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
        self._latents: queue.Queue = queue.Queue(maxsize=QUEUE_CLIPS)
        self._images: queue.Queue = queue.Queue(maxsize=QUEUE_CLIPS)
        self._error: BaseException | None = None
        self._write_lock = threading.Lock()
        self._writes_closed = False
        self.ring: RingBuffer | None = None
        self.player = None
        if player_factory is not None:
            ahead = max(60.0, (options.duration or 0) + self.clip_seconds, (options.prebuffer or 0) + self.clip_seconds)
            if options.max_ahead is not None:
                ahead = max(options.max_ahead, (options.prebuffer or 0) + self.clip_seconds)
            self.ring = RingBuffer(round(min(ahead, MAX_AHEAD) * rate), self.params.channels)
            self.player = player_factory(self.ring)
        #: A remote pool of workers (``submit``/``collect``/``cancel``, e.g. a RayPool) instead of a local model.
        self.remote = hasattr(model, "submit")
        if self.remote:
            refuse_remote_continuation(options)
        makers = ([threading.Thread(target=self._guard, args=(self._dispatch,), name="riffstream-dispatch", daemon=True)]
                  if self.remote else
                  [threading.Thread(target=self._guard, args=(self._produce,), name="riffstream-producer", daemon=True),
                   threading.Thread(target=self._guard, args=(self._decode,), name="riffstream-decoder", daemon=True)])
        self._threads = makers + [
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

    # ------------------------------------------------------------------ producer

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except _Stopped:
            pass
        except BaseException as error:  # surfaced in the main thread by run()
            self._error = error
            self.stop_event.set()

    def _check_stop(self, step: int, total: int) -> None:
        if self.stop_event.is_set():
            raise _Stopped

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

    def _plan(self, index: int, previous_latents: np.ndarray | None) -> ClipJob:
        """Plan clip ``index`` (after any change asked for): where it falls, what it is, what it starts from."""
        self._apply_changes(index)
        slot = self.layout.slot(index)
        clip = self.journey.clip(index, self.layout.centre(slot))
        self.next_clip = index + 1
        strength = self.options.strength if clip.strength is None else clip.strength
        init_image = init_latents = None
        if slot.bpm is not None:
            init_image = self.loops.image(slot)
        elif self.options.init_image is not None:
            init_image = self.options.init_image
        if self.options.continuation and previous_latents is not None:
            init_latents = continuation_seed(previous_latents, self.overlap_columns, self.model.vae_scale_factor)
        return ClipJob(clip, slot, self.steps, self.guidance, strength, self.negative_prompt, init_image, init_latents)

    def _made_without_model(self, job: ClipJob) -> FinishedClip | None:
        """A clip that needs no model: replayed from the journal being resumed, or its starting image as it is."""
        if job.clip.index < len(self.finished):
            return self.finished[job.clip.index]
        if job.strength == 0 and job.init_image is not None:
            return FinishedClip(job.init_image)
        return None

    def _produce(self) -> None:
        encoded: dict = {}
        index = 0
        previous = None
        while not self.stop_event.is_set() and (self.total_clips is None or index < self.total_clips):
            job = self._plan(index, previous)
            ready = self._made_without_model(job)
            if ready is not None:
                if not self._put(self._latents, (job.clip, job.slot, ready.image, 0.0)):
                    return
                previous = ready.latents
                index += 1
                continue
            began = time.monotonic()
            marks = [began]
            latents = denoise_job(self.model, job, encoded,
                                  on_step=lambda i, n: (marks.append(time.monotonic()), self._check_stop(i, n)))
            self.stats.denoise_seconds += marks[-1] - began
            first = self.stats.denoise_span[0] if self.stats.denoise_span else began
            self.stats.denoise_span = (first, marks[-1])
            if not self._put(self._latents, (job.clip, job.slot, latents, marks[-1] - began)):
                return
            previous = latents
            index += 1
        self._put(self._latents, None)

    def _dispatch(self) -> None:
        """Remote clips: keep a window of jobs in flight on the pool and hand their images on in order.

        A prompt or setting change re-plans every clip not yet handed on: their work is
        dropped and they are planned again with the change.
        """
        from collections import deque

        pool = self.model
        in_flight: deque = deque()  # (job, handle or FinishedClip)
        index = 0
        while not self.stop_event.is_set():
            if in_flight and (not self.prompt_queue.empty() or not self._changes.empty()):
                for job, handle in in_flight:
                    if not isinstance(handle, FinishedClip):
                        pool.cancel(handle)
                index = in_flight[0][0].clip.index
                self.journey.rewind(index, self.layout.centre(self.layout.slot_of(index - 1)) if index else None)
                self.layout.rewind(index)
                in_flight.clear()
            while len(in_flight) < pool.window and (self.total_clips is None or index < self.total_clips):
                job = self._plan(index, None)
                in_flight.append((job, self._made_without_model(job) or pool.submit(job)))
                index += 1
            if not in_flight:
                break
            job, handle = in_flight[0]
            if isinstance(handle, FinishedClip):
                made = (handle.image, 0.0)
            else:
                made = pool.collect(handle, POLL)
                if made is None:
                    if pool.overdue(handle):  # its worker is lost: send its clips to the others
                        for n, (waiting, sent) in enumerate(in_flight):
                            if not isinstance(sent, FinishedClip) and (n == 0 or pool.sent_to_suspect(sent)):
                                pool.cancel(sent)
                                in_flight[n] = (waiting, pool.submit(waiting))
                    continue
            in_flight.popleft()
            image, seconds = made
            self.stats.denoise_seconds += seconds
            if not self._put(self._images, (job.clip, job.slot, image, None, seconds)):
                return
        self._put(self._images, None)

    # ------------------------------------------------------------------ decoder

    def _decode(self) -> None:
        previous = None
        while (item := self._get(self._latents)) is not None:
            clip, slot, latents, denoise_seconds = item
            began = time.monotonic()
            image = latents if not isinstance(latents, np.ndarray) else self.model.decode(latents)
            decode_seconds = time.monotonic() - began
            self.stats.decode_seconds += decode_seconds
            if self.options.continuation and previous is not None:
                image = keep_overlap(previous, image, self.overlap_columns)
            kept = latents if self.options.continuation and isinstance(latents, np.ndarray) else None
            if not self._put(self._images, (clip, slot, image, kept, denoise_seconds + decode_seconds)):
                return
            previous = image
        self._put(self._images, None)

    def _get(self, source: queue.Queue):
        """The next item, or None once the stream stops (or the stage before has ended)."""
        while not self.stop_event.is_set():
            try:
                return source.get(timeout=POLL)
            except queue.Empty:
                continue
        return None

    def _put(self, target: queue.Queue, item) -> bool:
        while not self.stop_event.is_set():
            try:
                target.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

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
                                f"the model makes {self.stats.real_time_factor():.2f} s of audio per second: "
                                "looping the last clip until the next one is ready"
                            )
                            told_looping = True
                        self.stats.loops += 1
                        if live_clips is None:
                            live_clips = copy.deepcopy(clips) if self.sinks else clips
                        repeat = live_clips.add(last_image, last_overlap)
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
                audio = clips.add(image, overlap)
                self._write(to_file.push(audio))
                if live_clips is not None and live_clips is not clips:
                    audio = live_clips.add(image, overlap)
                self._announce(clip, image, audio.shape[1], model_seconds=model_seconds)
                if live is not None and not self._feed_ring(live.push(audio)):
                    break
                last_image, last_clip, last_overlap = image, clip, overlap
                self.stats.clips += 1
                self.stats.audio_seconds = to_file.emitted / rate
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
        rate = stats.real_time_factor()
        remaining = self.options.duration - stats.audio_seconds
        clip_time = self.clip_seconds / rate if rate > 0 else math.inf
        # Production at `rate` while playing at 1: the buffer's low point is at the end.
        needed = max(clip_time, (1 - rate) * remaining / rate if rate < 1 else 0.0) * 1.2 + LOW_WATER
        return ahead >= needed

    def start(self) -> None:
        """Start the producer, decoder and consumer threads."""
        if self.options.save_spectrograms is not None:
            self.options.save_spectrograms.mkdir(parents=True, exist_ok=True)
        self.stats.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop every thread and the player; True if all ended within ``timeout`` seconds.

        The consumer is joined first, as it flushes the last finished audio to the file; after
        this returns nothing more is written, so the file can be closed even if a thread is
        still inside a model call (which cannot be interrupted; it ends unused).
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


def read_prompts(stream: Stream, fd: int = 0, on_typing: Callable[[str], None] | None = None) -> threading.Thread | None:
    """Queue each line typed on ``fd`` (stdin) as a transition, from a daemon thread.

    Reads the raw descriptor with ``select`` so it never blocks shutdown; a closed,
    missing or finished stdin just ends the thread. Each line sent is also put in
    ``stream.messages`` (``next: 'text'``), so it is shown on a line of its own at once.
    ``on_typing(text)`` gets the line being typed after every keystroke, with backspace
    applied, for a terminal whose own echo is off. Returns the thread, or None when
    ``fd`` cannot be read.
    """
    import os
    import select

    try:
        os.fstat(fd)
    except OSError:
        return None

    def reader() -> None:
        pending = b""
        while not stream.stop_event.is_set():
            try:
                ready, _, _ = select.select([fd], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(fd, 4096)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            pending += chunk.replace(b"\r", b"\n")
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = typed_text(line).strip()
                if text:
                    try:
                        stream.queue_prompt(text)
                        stream.messages.put(f"next: {text!r}")
                    except RiffstreamError as error:
                        stream.messages.put(f"ignored {text!r}: {error}")
            if on_typing is not None:
                on_typing(typed_text(pending))

    thread = threading.Thread(target=reader, name="riffstream-prompts", daemon=True)
    thread.start()
    return thread


def typed_text(keys: bytes) -> str:
    """The text a run of keystrokes leaves: backspace deletes a character, Ctrl-U the whole line."""
    text: list[str] = []
    for char in keys.decode("utf-8", "ignore"):
        if char in "\x7f\b":
            if text:
                text.pop()
        elif char == "\x15":
            text.clear()
        elif char.isprintable():
            text.append(char)
    return "".join(text)
