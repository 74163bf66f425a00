"""The dispatcher: plans each clip, keeps a window of them in flight on the clip source, and hands
them on in order as :class:`ReadyClip` records.

It walks the :class:`~riffstream.planner.Journey` through :class:`~riffstream.stream.steering.Steering`,
which hands it prompts and settings asked for while the stream runs; a change re-plans the clips
the source has not started. A steer that turns ``now`` goes further: it keeps only the audio that
covers the making of the next clip (the last clip's model and audio-stage time, with a margin),
asks the live stream to take back the rest (:class:`LiveCuts`), drops every clip made or in flight
beyond it, and plans again from there. Clips a resumed journal already holds, and clips that need
no model (a starting image kept as it is), are handed on without the source.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from riffstream.journal import FinishedClip
from riffstream.planner import Clip
from riffstream.stream.options import StreamOptions
from riffstream.stream.ring import POLL, CutPoint, CutRequest, put_until
from riffstream.stream.sources import ClipJob, ClipSource, MadeClip, keep_overlap
from riffstream.stream.status import StreamStats
from riffstream.stream.steering import Steering
from riffstream.tempo import ClipLayout, LoopImages, Slot, loop_image, placed_audio

if TYPE_CHECKING:
    from PIL import Image


#: A steer keeps the audio that covers the next clip's making: the time the last steer took from its cut to
#: its first clip joined, or before any steer the last clip's model and audio-stage times scaled by this (they
#: overlap other work, but the first steer also joins a clip cut short), with this margin (seconds) on top,
#: for a model step being abandoned and the machine's noise.
FIRST_STEER_SCALE = 1.15
STEER_MARGIN = 0.5
#: Clips planned and handed on that are remembered: a steer starts from one of them.
REMEMBERED = 32
#: A clip cut short by a steer keeps at least this many columns beyond its crossfades (and loses at least
#: as many), so that it is a clip and not a sliver.
MIN_CROP_COLUMNS = 16


@dataclass(frozen=True)
class ReadyClip:
    """A made clip, in stream order, ready to be joined: what it plays, where it falls, its spectrogram,
    the latents the next clip continues from (continuation only), what the model spent on it, and the
    plan it belongs to (``generation``: steers that turned at once, before it was planned)."""

    clip: Clip
    slot: Slot
    image: Image.Image
    latents: np.ndarray | None = None
    model_seconds: float = 0.0
    generation: int = 0


class LiveCuts(Protocol):
    """Where the joined stream can be cut, and the cut itself (the :class:`~riffstream.stream.consumer.Consumer`)."""

    def cut_points(self) -> tuple[CutPoint, ...]:
        """Places the live stream can be cut now, in order, ahead of what is heard."""

    def heard_frame(self) -> int:
        """The ring frame being heard."""

    def cut(self, request: CutRequest) -> None:
        """Drop clips and take back audio as ``request`` says."""


class Dispatcher:
    """Plans clips and keeps ``source.window`` of them in flight; :meth:`run` is its thread.

    ``total_clips`` ends a finite render (None: endless). ``finished`` clips, from a journal being
    resumed, are handed on in place of the model's. Made clips go to ``ready``, then None at the end.
    """

    def __init__(self, source: ClipSource, options: StreamOptions, steering: Steering, layout: ClipLayout,
                 guidance: float, overlap_columns: int, total_clips: int | None, finished: Sequence[FinishedClip],
                 stats: StreamStats, ready: queue.Queue, stop: threading.Event, live: LiveCuts) -> None:
        self.source, self.options, self.steering, self.layout = source, options, steering, layout
        self.guidance, self.overlap_columns, self.total_clips = guidance, overlap_columns, total_clips
        self.finished, self.stats, self.ready, self.stop, self.live = list(finished), stats, ready, stop, live
        self.loops = LoopImages(options.params, source.options.width, options.loop)
        self.generation = 0
        self._planned: dict[int, Clip] = {}  # recent clips planned, by index
        self._handed: dict[int, MadeClip] = {}  # recent clips handed on, by index

    def plan(self, index: int, previous: MadeClip | None) -> ClipJob:
        """Plan clip ``index`` (after any change asked for): where it falls, what it is, what it starts from.

        ``previous`` is the clip before it, once made; a continued clip whose previous clip is still
        being made starts from the latents its source made last.
        """
        steering, options = self.steering, self.options
        steering.apply(index, self._planned.get(index - 1))
        slot = self.layout.slot(index)
        clip = steering.journey.clip(index, self.layout.centre(slot))
        steering.next_clip = index + 1
        self._planned[index] = clip
        self._planned.pop(index - REMEMBERED, None)
        strength = options.strength if clip.strength is None else clip.strength
        init_image = None
        hop = options.params.hop_length
        if options.track is not None and slot.start * hop < len(options.track):
            init_image = loop_image(lambda at, length: placed_audio(options.track, at, length), slot.start * hop,
                                    self.source.options.width, options.params)
        elif slot.bpm is not None:
            init_image = self.loops.image(slot)
        elif options.init_image is not None:
            init_image = options.init_image
        continues = options.continuation and index > 0
        return ClipJob(clip, slot, steering.steps, self.guidance, strength, steering.negative_prompt, init_image,
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

    def run(self) -> None:
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
            while not self.stop.is_set():
                if self.steering.turns_now() and index > 0:
                    index, handed = self._turn_now(in_flight, index)
                elif in_flight and self.steering.waiting():
                    index = self._replan(in_flight, index)
                while len(in_flight) < source.window and (self.total_clips is None or index < self.total_clips):
                    before = in_flight[-1][1] if in_flight else handed
                    job = self.plan(index, before if isinstance(before, MadeClip) else None)
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
                # A steer that turns at once is taken even while the consumer is full (live play holds its whole
                # look-ahead): the clip waiting here is past anything the cut keeps, which ends at the clips
                # handed on.
                if not put_until(self.ready, ReadyClip(job.clip, job.slot, made.image, latents, made.model_seconds,
                                                       self.generation), self.stop, self.steering.turns_now):
                    if self.stop.is_set():
                        return
                    continue
                handed = made
                self._handed[job.clip.index] = made
                self._handed.pop(job.clip.index - REMEMBERED, None)
        finally:
            for _, handle in in_flight:
                if not isinstance(handle, MadeClip):
                    source.cancel(handle)
        put_until(self.ready, None, self.stop)

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
        self.steering.journey.rewind(index, self.layout.centre(self.layout.slot_of(index - 1)) if index else None)
        self.layout.rewind(index)
        return index

    def _turn_now(self, in_flight: deque, index: int) -> tuple[int, MadeClip | None]:
        """Make room for a steer that turns at once: keep the audio that covers the next clip's making, drop
        the rest (joined or not) and every clip in flight, and rewind the plan to just after what is kept.
        Returns the index to plan next, and the clip handed on before it."""
        first, number, crop = self._where_to_cut()
        if first == 0:  # nothing handed on yet: nothing to turn from
            return self._replan(in_flight, index) if in_flight else index, None
        self.generation += 1
        self.live.cut(CutRequest(self.generation, first, number, crop, time.monotonic()))
        while in_flight:
            _, handle = in_flight.pop()
            if not isinstance(handle, MadeClip):
                self.source.cancel(handle)
        for dropped in [n for n in self._handed if n >= first]:
            del self._handed[dropped]
        self.layout.rewind(first)
        if crop is not None:
            self.layout.shorten(first - 1, crop)
        self.steering.journey.rewind(first, self.layout.centre(self.layout.slot_of(first - 1)))
        return first, self._handed.get(first - 1)

    def _where_to_cut(self) -> tuple[int, int | None, int | None]:
        """Where a steer that turns at once cuts the stream: the first clip of the new path, the cut point the
        live stream goes back to (None: none), and the columns of the clip after it that are kept (None: all
        or none of it).

        The audio kept covers the next clip's making from the moment being heard. Where that ends inside a
        clip that is not heard yet (and that can be joined again before it is), that clip is cut short there;
        under a tempo lock (whole bars) or continuation (the next clip starts from its end) the cut waits for
        the next clip's start."""
        stats, params = self.stats, self.options.params
        rate, hop = params.sample_rate, params.hop_length
        making = stats.last_steer_seconds or (stats.last_model_seconds + stats.last_audio_seconds) * FIRST_STEER_SCALE
        heard = self.live.heard_frame()
        needed = heard + (making + STEER_MARGIN) * rate
        rejoin = heard + (stats.last_audio_seconds + STEER_MARGIN) * rate
        points = self.live.cut_points()
        if points and points[0].frame >= needed:
            return points[0].index + 1, points[0].number, None
        # A tempo lock keeps whole bars; a continued clip starts from where the clip before it ends.
        can_crop = not self.options.tempo_locked and not self.options.continuation
        shortest = self.overlap_columns + MIN_CROP_COLUMNS

        def columns_to(start: int, advance: int) -> int | None:
            """Columns of a clip starting at ring frame ``start`` that reach ``needed``, if it can be cut there."""
            columns = max(shortest, -(-int(needed - start) // hop))
            return columns if can_crop and columns <= advance - MIN_CROP_COLUMNS else None

        for before, point in zip(points, points[1:]):
            if point.frame >= needed:
                columns = columns_to(before.frame, (point.frame - before.frame) // hop)
                if columns is not None and before.frame >= rejoin and not point.loop:
                    return point.index + 1, before.number, columns
                return point.index + 1, point.number, None
        # The live stream ends before ``needed``: cut the next clip handed on short where it falls.
        following = points[-1].index + 1 if points else min(self._handed, default=0)
        if following in self._handed:
            columns = columns_to(points[-1].frame if points else heard, self.layout.slot_of(following).advance)
            if columns is not None:
                return following + 1, None, columns
        return max(self._handed, default=-1) + 1, None, None

    def _count(self, made: MadeClip) -> None:
        """Add what the model spent on ``made`` to the stream's figures."""
        stats = self.stats
        stats.denoise_seconds += made.denoise_seconds
        stats.decode_seconds += made.decode_seconds
        if made.denoise_span is not None:
            first = stats.denoise_span[0] if stats.denoise_span else made.denoise_span[0]
            stats.denoise_span = (first, made.denoise_span[1])
