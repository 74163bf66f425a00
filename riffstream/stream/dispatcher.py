"""The dispatcher: plans each clip, keeps a window of them in flight on the clip source, and hands
them on in order as :class:`ReadyClip` records.

It walks the :class:`~riffstream.planner.Journey` through :class:`~riffstream.stream.steering.Steering`,
which hands it prompts and settings asked for while the stream runs; a change re-plans the clips
the source has not started. Clips a resumed journal already holds, and clips that need no model
(a starting image kept as it is), are handed on without the source.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from riffstream.journal import FinishedClip
from riffstream.planner import Clip
from riffstream.stream.options import StreamOptions
from riffstream.stream.ring import POLL, put_until
from riffstream.stream.sources import ClipJob, ClipSource, MadeClip, keep_overlap
from riffstream.stream.status import StreamStats
from riffstream.stream.steering import Steering
from riffstream.tempo import ClipLayout, LoopImages, Slot, loop_image, placed_audio

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class ReadyClip:
    """A made clip, in stream order, ready to be joined: what it plays, where it falls, its spectrogram,
    the latents the next clip continues from (continuation only), and what the model spent on it."""

    clip: Clip
    slot: Slot
    image: Image.Image
    latents: np.ndarray | None = None
    model_seconds: float = 0.0


class Dispatcher:
    """Plans clips and keeps ``source.window`` of them in flight; :meth:`run` is its thread.

    ``total_clips`` ends a finite render (None: endless). ``finished`` clips, from a journal being
    resumed, are handed on in place of the model's. Made clips go to ``ready``, then None at the end.
    """

    def __init__(self, source: ClipSource, options: StreamOptions, steering: Steering, layout: ClipLayout,
                 guidance: float, overlap_columns: int, total_clips: int | None, finished: Sequence[FinishedClip],
                 stats: StreamStats, ready: queue.Queue, stop: threading.Event) -> None:
        self.source, self.options, self.steering, self.layout = source, options, steering, layout
        self.guidance, self.overlap_columns, self.total_clips = guidance, overlap_columns, total_clips
        self.finished, self.stats, self.ready, self.stop = list(finished), stats, ready, stop
        self.loops = LoopImages(options.params, source.options.width, options.loop)

    def plan(self, index: int, previous: MadeClip | None) -> ClipJob:
        """Plan clip ``index`` (after any change asked for): where it falls, what it is, what it starts from.

        ``previous`` is the clip before it, once made; a continued clip whose previous clip is still
        being made starts from the latents its source made last.
        """
        steering, options = self.steering, self.options
        steering.apply(index)
        slot = self.layout.slot(index)
        clip = steering.journey.clip(index, self.layout.centre(slot))
        steering.next_clip = index + 1
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
                if in_flight and self.steering.waiting():
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
                if not put_until(self.ready, ReadyClip(job.clip, job.slot, made.image, latents, made.model_seconds),
                                 self.stop):
                    return
                handed = made
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

    def _count(self, made: MadeClip) -> None:
        """Add what the model spent on ``made`` to the stream's figures."""
        stats = self.stats
        stats.denoise_seconds += made.denoise_seconds
        stats.decode_seconds += made.decode_seconds
        if made.denoise_span is not None:
            first = stats.denoise_span[0] if stats.denoise_span else made.denoise_span[0]
            stats.denoise_span = (first, made.denoise_span[1])
