"""The consumer: joins the clips the dispatcher hands on into one stream of audio, in order.

Each :class:`~riffstream.stream.dispatcher.ReadyClip` is kept (journal, spectrogram folder),
turned into audio and joined to the one before by :class:`~riffstream.stitch.ClipStitcher`
(phase continued across the overlap, correlation-aware equal-power crossfade, steady loudness),
then written to every :class:`~riffstream.sinks.Sink` and to the ring buffer a clock plays from
(:class:`~riffstream.stream.ring.StreamEnds` cuts the stream to its exact duration and fades its
very edges). Each clip entering the live stream is announced as a :class:`ClipEvent`.

When live play is about to run dry it loops the last clip (crossfaded, as Riffusion's web app
held its last clip) until the next one is ready; the output file never contains these repeats.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from riffstream.planner import Clip
from riffstream.stitch import ClipStitcher
from riffstream.stream.options import EDGE_FADE
from riffstream.stream.ring import POLL, RingBuffer, StreamEnds
from riffstream.stream.status import StreamStats

if TYPE_CHECKING:
    from PIL import Image

    from riffstream.journal import Journal
    from riffstream.sinks import Sink
    from riffstream.sinks.spectrograms import SpectrogramFolder
    from riffstream.spectrogram import SpectrogramParams
    from riffstream.stream.dispatcher import ReadyClip
    from riffstream.tempo import ClipLayout

#: Live play loops the last clip when less than this much audio (seconds) is buffered.
LOW_WATER = 1.0


@dataclass(frozen=True)
class ClipEvent:
    """A clip (or a loop of the last one) has entered the live stream.

    ``live_frame`` is the ring buffer frame where its audio begins, ``frames`` its length;
    ``image`` is its spectrogram; ``model_seconds`` the time the model took to make it
    (denoising and decoding; 0 for a loop); ``seconds`` a clip's duration.
    """

    clip: Clip
    image: Image.Image
    live_frame: int
    frames: int
    loop: bool = False
    model_seconds: float = 0.0
    seconds: float = 0.0


class Consumer:
    """Joins ready clips into audio; :meth:`run` is its thread.

    ``ring`` (None: no live play) is what a clock plays from; ``clock_started()`` says whether it
    has begun. ``journal`` keeps every clip past the first ``replayed`` (which it holds already).
    """

    def __init__(self, params: SpectrogramParams, crossfade: float, loudness: float | None, layout: ClipLayout,
                 total_frames: int | None, sinks: Sequence[Sink], ring: RingBuffer | None, journal: Journal | None,
                 replayed: int, spectrograms: SpectrogramFolder | None, stats: StreamStats, ready: queue.Queue,
                 stop: threading.Event, say: Callable[[str], None], clock_started: Callable[[], bool]) -> None:
        self.params, self.crossfade, self.loudness, self.layout = params, crossfade, loudness, layout
        self.total_frames, self.sinks, self.ring, self.journal = total_frames, list(sinks), ring, journal
        self.replayed, self.spectrograms, self.stats, self.ready = replayed, spectrograms, stats, ready
        self.stop, self.say, self.clock_started = stop, say, clock_started
        self.clip_width = layout.width
        self.clip_seconds = params.duration_of(self.clip_width)
        self.edge_frames = round(EDGE_FADE * params.sample_rate)
        self.subscribers: list[Callable[[ClipEvent], None]] = []
        self._write_lock = threading.Lock()
        self._writes_closed = False

    def run(self) -> None:
        """Join clips until the dispatcher's end (None) or a stop; then flush the tails and close the ring."""
        channels, rate = self.params.channels, self.params.sample_rate
        clips = ClipStitcher(self.params, self.crossfade, loudness=self.loudness)
        # Live play joins the same clips, until a loop makes it differ from the file: from then
        # on it has a stitcher of its own (or shares the only one, when there is no file).
        live_clips: ClipStitcher | None = None
        to_file = StreamEnds(channels, self.edge_frames, self.total_frames)
        live = StreamEnds(channels, self.edge_frames, self.total_frames) if self.ring is not None else None
        last: ReadyClip | None = None
        last_overlap = self.layout.overlap
        told_looping = False
        try:
            while not self.stop.is_set():
                try:
                    ready = self.ready.get(timeout=POLL)
                except queue.Empty:
                    if self.stop.is_set():
                        break
                    if (live is not None and last is not None and self.clock_started()
                            and self.ring.available < LOW_WATER * rate):
                        if not told_looping:
                            self.say(f"the model makes {self.stats.production_rate():.2f} s of audio per second: "
                                     "looping the last clip until the next one is ready")
                            told_looping = True
                        self.stats.loops += 1
                        if live_clips is None:
                            live_clips = copy.deepcopy(clips) if self.sinks else clips
                        repeat = live_clips.add(last.image, last_overlap, adaptive=False)
                        if live.total is not None:
                            live.total += repeat.shape[1]
                        self._announce(last.clip, last.image, repeat.shape[1], loop=True)
                        self._feed_ring(live.push(repeat))
                    continue
                if ready is None:
                    break
                self._keep(ready)
                overlap = self.clip_width - ready.slot.advance
                polish = self.can_polish()
                self.stats.unpolished += not polish
                audio = clips.add(ready.image, overlap, polish)
                self._write(to_file.push(audio))
                if live_clips is not None and live_clips is not clips:
                    audio = live_clips.add(ready.image, overlap, polish)
                self._announce(ready.clip, ready.image, audio.shape[1], model_seconds=ready.model_seconds)
                if live is not None and not self._feed_ring(live.push(audio)):
                    break
                last, last_overlap = ready, overlap
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

    def _keep(self, ready: ReadyClip) -> None:
        """Keep the clip where it is asked for: the journal (unless it came from there) and the spectrogram folder."""
        if self.journal is not None and ready.clip.index >= self.replayed:
            self.journal.add(ready.clip.index, ready.image, ready.latents)
        if self.spectrograms is not None:
            self.spectrograms.add(ready.clip, ready.image, self.layout.seconds(ready.slot.start), ready.slot.bpm)

    def can_polish(self) -> bool:
        """Whether the listener can wait while a hard clip takes Griffin-Lim's extra iterations
        (up to 36 more, about 0.5 s on two cores): always in a render, and in a stream whose
        journal must replay to the same bytes; in other live play only while the ring holds
        at least a clip's audio. On two cores that time is the UNet's: a live stream near
        real time would otherwise fall behind on exactly the clips that are hard."""
        return (self.ring is None or self.journal is not None
                or self.ring.available >= self.clip_seconds * self.params.sample_rate)

    def close_writes(self) -> None:
        """Write nothing more to the sinks from now on (the file may be closed once this returns)."""
        with self._write_lock:
            self._writes_closed = True

    def _write(self, audio: np.ndarray) -> None:
        with self._write_lock:
            if not self._writes_closed and audio.shape[1]:
                for sink in self.sinks:
                    sink.write(audio)

    def _announce(self, clip: Clip, image: Image.Image, frames: int, loop: bool = False,
                  model_seconds: float = 0.0) -> None:
        live_frame = (self.ring.written if self.ring is not None
                      else round(self.stats.audio_seconds * self.params.sample_rate))
        event = ClipEvent(clip, image, live_frame, frames, loop, model_seconds, self.clip_seconds)
        for callback in self.subscribers:
            callback(event)

    def _feed_ring(self, audio: np.ndarray) -> bool:
        return self.ring.write(np.ascontiguousarray(audio.T), self.stop)
