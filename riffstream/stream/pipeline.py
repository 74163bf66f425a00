"""The stream: one run of clips made, joined and heard, as three threads over named parts.

1. The :class:`~riffstream.stream.dispatcher.Dispatcher` plans each clip on the
   :class:`~riffstream.planner.Journey` (steered through :class:`~riffstream.stream.steering.Steering`),
   keeps a window in flight on the :class:`~riffstream.stream.sources.ClipSource` (this process's
   model, or Ray workers) and hands them on in order as
   :class:`~riffstream.stream.dispatcher.ReadyClip` records.
2. The :class:`~riffstream.stream.consumer.Consumer` joins them into audio, writes it to the
   sinks (an output file, ...) and to the :class:`~riffstream.stream.ring.RingBuffer`.
3. A :class:`~riffstream.stream.clocks.Clock` takes the ring's audio at the pace it is heard.

:class:`Stream` wires them together and holds the play policy: the main thread
(:meth:`Stream.run`) starts them, decides when playing may start, and stops everything within a
second on Ctrl-C or SIGTERM, leaving the output file valid with every finished clip in it. Only
the consumer writes the file; once :meth:`Stream.stop` returns it writes no more, so the caller
may close the file. Anyone steers and reads it through :meth:`Stream.queue_prompt`,
:meth:`Stream.change_settings`, :meth:`Stream.queued` and :meth:`Stream.status`.

When clips come slower than real time (the rate measured as they arrive, whatever makes them):

* a finite ``duration`` starts playing only once that rate says the buffer will not run
  dry before the end (``prebuffer_s`` overrides that);
* endless play starts after the first clip and, whenever the buffer is about to run
  dry, the consumer **loops the last clip** until the next one is ready.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from riffstream.errors import RiffstreamError
from riffstream.journal import FinishedClip
from riffstream.planner import Clip, Journey, PromptJourney
from riffstream.sinks.spectrograms import SpectrogramFolder
from riffstream.stitch import overlap_frames
from riffstream.stream.clocks import Clock
from riffstream.stream.consumer import LOW_WATER, ClipEvent, Consumer
from riffstream.stream.dispatcher import Dispatcher
from riffstream.stream.options import StreamOptions, crossfade_seconds, refuse_remote_continuation, validate
from riffstream.stream.ring import RingBuffer
from riffstream.stream.sources import ClipModel, ClipSource, clip_source
from riffstream.stream.status import StreamStats, StreamStatus
from riffstream.stream.steering import Steering
from riffstream.tempo import ClipLayout, clips_to_cover
from riffstream.timeline import TimelineJourney

if TYPE_CHECKING:
    from riffstream.journal import Journal
    from riffstream.sinks import Sink

#: Most audio (seconds) the live ring buffer holds ahead of the player.
MAX_AHEAD = 600.0
#: Endless live play keeps at most this many clips of audio ahead of the listener, as Riffusion's app kept
#: three clips: a typed prompt is heard that much sooner, and looping the last clip still rides out a stall.
LIVE_AHEAD_CLIPS = 3
#: Made clips waiting for the consumer.
QUEUE_CLIPS = 2
#: Endless live play records what is heard from the ring: room (seconds) for what was heard and is not yet
#: taken, while the consumer is busy joining a clip.
RECORD_ROOM = 10.0
#: Clips that entered the live stream remembered, to tell which one is being heard.
REMEMBERED_CLIPS = 64


class Stream:
    """One run of the stream: a clip source, options, sinks for the finished audio, and an optional clock.

    ``source`` makes the clips: a :class:`~riffstream.stream.sources.ClipSource` (a Ray pool,
    say), or a loaded model, which the stream wraps in a
    :class:`~riffstream.stream.sources.LocalSource` of its own and closes when it stops.

    ``sinks`` take the exact, finished audio (an :class:`~riffstream.sinks.AudioFileWriter`,
    or any :class:`~riffstream.sinks.Sink`); the stream writes to them and never closes
    them. ``clock_factory(ring)`` makes the clock that takes the live audio from the ring
    buffer: the sound card's :class:`~riffstream.stream.clocks.Player` or a
    :class:`~riffstream.stream.clocks.RealTimeClock`. A ``journal`` keeps every clip as it is
    finished; ``finished`` clips (from a journal being resumed) are replayed first, in place of
    the model, so the sinks get exactly what they got the first time.
    """

    def __init__(self, source: ClipSource | ClipModel, options: StreamOptions, sinks: Sequence[Sink] = (),
                 clock_factory: Callable[[RingBuffer], Clock] | None = None, journal: Journal | None = None,
                 finished: Sequence[FinishedClip] = ()) -> None:
        from riffstream.model import DEFAULT_GUIDANCE, DEFAULT_STEPS

        self.source, self._owns_source = clip_source(source)
        self.options = options
        params = self.params = options.params
        rate = params.sample_rate
        self.clip_width = self.source.options.width
        validate(options, self.clip_width)
        if self.source.options.height != params.num_frequencies:
            raise RiffstreamError(f"the model paints {self.source.options.height}-pixel-high images, "
                                  f"the spectrogram needs {params.num_frequencies}")
        if not self.source.chains:
            refuse_remote_continuation(options)
        self.clip_seconds = params.duration_of(self.clip_width)
        self.crossfade = crossfade_seconds(options, self.clip_width)
        self.overlap_columns = overlap_frames(params, self.crossfade)
        self.crossfade_frames = self.overlap_columns * params.hop_length
        self.total_clips = self.total_frames = None
        if options.duration is not None:
            self.total_frames = round(options.duration * rate)
            self.total_clips = clips_to_cover(params, self.clip_width, self.overlap_columns, self.total_frames,
                                              options.bpm_at)
        self.layout = ClipLayout(params, self.clip_width, self.overlap_columns, self._tempo_at)
        self.journey = self._journey()
        self.stats = StreamStats()
        self.stop_event = threading.Event()
        self._messages: queue.Queue[str] = queue.Queue()
        self.steering = Steering(self.journey, options.steps or DEFAULT_STEPS, options.negative_prompt,
                                 self.total_clips, self._messages.put, options.steer)
        self.ring: RingBuffer | None = None
        self.clock: Clock | None = None
        self.clock_started = False
        if clock_factory is not None:
            ahead = round(self._ring_seconds() * rate)
            # Endless live play can be steered, which takes back audio not yet heard: its sinks record what
            # the clock takes from the ring. A render's sinks get every clip as it is joined.
            records = options.duration is None
            capacity = ahead + round(RECORD_ROOM * rate) if records else ahead
            self.ring = RingBuffer(capacity, params.channels, ahead, records)
            self.clock = clock_factory(self.ring)
        ready: queue.Queue = queue.Queue(maxsize=QUEUE_CLIPS)
        folder = SpectrogramFolder(options.save_spectrograms, params) if options.save_spectrograms else None
        self.consumer = Consumer(params, self.crossfade, options.loudness, self.layout, self.total_frames, sinks,
                                 self.ring, journal, len(finished), folder, self.stats, ready, self.stop_event,
                                 self._messages.put, lambda: self.clock_started)
        guidance = DEFAULT_GUIDANCE if options.guidance is None else options.guidance
        self.dispatcher = Dispatcher(self.source, options, self.steering, self.layout, guidance, self.overlap_columns,
                                     self.total_clips, finished, self.stats, ready, self.stop_event, self.consumer)
        self._entered: deque[ClipEvent] = deque(maxlen=REMEMBERED_CLIPS)
        self.subscribe(self._entered_live)
        self.consumer.cut_subscribers.append(self._cut_live)
        self._error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._guard, args=(self.dispatcher.run,), name="riffstream-dispatch", daemon=True),
            threading.Thread(target=self._guard, args=(self.consumer.run,), name="riffstream-consumer", daemon=True),
        ]

    def _journey(self) -> Journey:
        options = self.options
        if options.timeline is not None:
            advance = self.layout.seconds(self.clip_width - self.overlap_columns)
            return TimelineJourney(options.timeline, advance, options.seed, options.clips_per_transition,
                                   self.total_clips, options.strength)
        return PromptJourney(list(options.prompts), options.seed, options.clips_per_transition, self.total_clips)

    def _tempo_at(self, seconds: float) -> float | None:
        """The tempo clips centred at ``seconds`` lock to (None: none)."""
        return self.options.bpm_at(self.journey.tempo_time(seconds))

    def _ring_seconds(self) -> float:
        """How much audio live play buffers ahead of the clock: room for a whole render, so production may run
        ahead freely; for endless play a few clips, so that a typed prompt is heard soon."""
        options, clip = self.options, self.clip_seconds
        if options.duration is not None:
            ahead = max(60.0, options.duration + clip)
        else:
            ahead = max(LIVE_AHEAD_CLIPS * clip, 2 * LOW_WATER + clip)
        ahead = max(ahead, (options.prebuffer or 0) + clip)
        if options.max_ahead is not None:
            ahead = max(options.max_ahead, (options.prebuffer or 0) + clip)
        return min(ahead, MAX_AHEAD)

    def _guard(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as error:  # surfaced in the main thread by run()
            self._error = error
            self.stop_event.set()

    # ------------------------------------------------------------------ steering and status (any thread)

    def queue_prompt(self, text: str) -> None:
        """Queue a transition to ``text``, a prompt or blend (ignored when empty); a blend that cannot be read
        is a one-line RiffstreamError, raised in the caller's thread."""
        self.steering.queue_prompt(text)

    def change_settings(self, seed: int | None = None, clips_per_transition: int | None = None,
                        steps: int | None = None, negative_prompt: str | None = None) -> dict:
        """Change settings for the clips planned from now on; returns the settings in force (see
        :meth:`~riffstream.stream.steering.Steering.change_settings`)."""
        return self.steering.change_settings(seed, clips_per_transition, steps, negative_prompt)

    def settings(self) -> dict:
        """The settings the clips planned from now on use."""
        return self.steering.settings()

    def queued(self) -> list[str]:
        """Prompts asked for, or still ahead in the journey, that are not heard yet."""
        heard = self._heard()
        return self.steering.queued(heard.index if heard is not None else None)

    def subscribe(self, callback: Callable[[ClipEvent], None]) -> None:
        """Call ``callback(event)`` as each clip enters the live stream (in the consumer's thread: it must only
        hand off)."""
        self.consumer.subscribers.append(callback)

    def take_messages(self) -> list[str]:
        """Lines for the listener that came up since the last call (a prompt queued, looping began)."""
        lines = []
        while not self._messages.empty():
            lines.append(self._messages.get())
        return lines

    def status(self) -> StreamStatus:
        """The stream now, as the terminal and the server show it."""
        stats, heard, entered, now = self.stats, self._heard(), list(self._entered), time.monotonic()
        return StreamStatus(
            clips=stats.clips, elapsed_seconds=now - stats.started, made_seconds=stats.audio_seconds,
            real_time_factor=stats.real_time_factor(now), model_seconds=stats.denoise_seconds + stats.decode_seconds,
            loops=stats.loops, live=self.clock is not None,
            underruns=self.clock.underruns if self.clock is not None else 0, playing=self.clock_started,
            ahead_seconds=self.ahead_seconds(), heard=heard, behind=bool(entered and entered[-1].loop),
            queued=tuple(self.steering.queued(heard.index if heard is not None else None)),
            settings=self.steering.settings(), first_prompt=self.options.prompts[0], first_seed=self.options.seed,
            heard_in=self.heard_in(), cuts=stats.cuts)

    def subscribe_cuts(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(live_frame)`` when a steer takes back the live stream from that ring frame on (the
        clips announced from there are not heard; in the consumer's thread: it must only hand off)."""
        self.consumer.cut_subscribers.append(callback)

    def _entered_live(self, event: ClipEvent) -> None:
        self._entered.append(event)
        if not event.loop:
            self.steering.entered(event.clip)

    def _cut_live(self, live_frame: int) -> None:
        gone = [event for event in self._entered if event.live_frame >= live_frame]
        for event in gone:
            self._entered.remove(event)
        if gone:
            self.steering.taken_back(min(event.clip.index for event in gone))

    def heard_in(self) -> float | None:
        """Seconds until the first clip of the next prompt asked for is heard, once it is in the live stream."""
        index = self.steering.first_entered()
        if index is None or self.ring is None:
            return None
        starts = [event.live_frame for event in self._entered if event.clip.index == index and not event.loop]
        if not starts:
            return None
        return max(0.0, (starts[-1] - self.ring.read) / self.params.sample_rate)

    def _heard(self) -> Clip | None:
        """The clip being heard: the newest to have begun by the clock (the first, before it starts)."""
        entered = list(self._entered)
        if not entered:
            return None
        played = self.ring.read if self.ring is not None else math.inf
        current = entered[0]
        for event in entered:
            if event.live_frame <= played:
                current = event
        return current.clip

    def ahead_seconds(self) -> float:
        """Audio buffered ahead of the clock, seconds."""
        return self.ring.available / self.params.sample_rate if self.ring is not None else 0.0

    # ------------------------------------------------------------------ the main thread

    def ready_to_play(self) -> bool:
        """Whether playing can start now without the buffer running dry before the end."""
        ahead, stats = self.ahead_seconds(), self.stats
        if stats.finished or (self.ring is not None and self.ring.available >= self.ring.ahead - 1):
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
        """Stop every thread and the clock; True if all ended within ``timeout`` seconds.

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
        if self.clock is not None:
            self.clock.close()
        self.consumer.close_writes()
        if self._owns_source:
            self.source.close(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def poll(self) -> bool:
        """One turn of the main loop: start playing when ready; False once the stream has ended."""
        if self._error is not None:
            raise self._error
        if self.clock is not None and not self.clock_started and self.ready_to_play():
            self.clock.start()
            self.clock_started = True
        if not self.stats.finished:
            return True
        if self.clock is not None:
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
            if self.clock is not None:
                self.clock.drain()
            if on_tick is not None:
                on_tick(self)
        finally:
            self.stop()
        if self._error is not None:
            raise self._error
