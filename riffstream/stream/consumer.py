"""The consumer: joins the clips the dispatcher hands on into one stream of audio, in order.

Each :class:`~riffstream.stream.dispatcher.ReadyClip` is kept (journal, spectrogram folder),
turned into audio and joined to the one before by :class:`~riffstream.stitch.ClipStitcher`
(phase continued across the overlap, correlation-aware equal-power crossfade, steady loudness),
then written to the ring buffer a clock plays from (:class:`~riffstream.stream.ring.StreamEnds`
cuts the stream to its exact duration and fades its very edges). Each clip entering the live
stream is announced as a :class:`ClipEvent`.

When live play is about to run dry it loops the last clip (crossfaded, as Riffusion's web app
held its last clip) until the next one is ready.

What the sinks get depends on the stream. A render (a finite duration, or no live play) writes
every clip as it is joined: the file is the render, loops never in it. Endless live play can be
steered, and a steer takes back audio not yet heard (:meth:`Consumer.cut`: the joiner goes back
to where it was after the last clip kept, so the new path joins on with the usual crossfade and
phase), so there the sinks get what the clock took from the ring: what was heard.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from riffstream.planner import Clip
from riffstream.stitch import ClipStitcher
from riffstream.stream.options import EDGE_FADE
from riffstream.stream.ring import POLL, CutPoint, CutRequest, RingBuffer, StreamEnds
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
#: A cut keeps at least this much audio (seconds) ahead of the reader: more than one read of the
#: sound card's (2048 frames), so the audio it takes back was never read.
CUT_GUARD = 0.1


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


@dataclass
class _Joined:
    """The joiner's state after a clip (or loop) entered the live stream: what a cut there goes back to."""

    point: CutPoint
    stitcher: ClipStitcher
    ends: StreamEnds
    last: ReadyClip
    overlap: int


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
        #: Whether the sinks get what was heard (endless live play, which steering may cut), not what was joined.
        self.records_heard = ring is not None and ring.records
        self.subscribers: list[Callable[[ClipEvent], None]] = []
        #: Called with the ring frame the live stream was cut at (clips announced from there on are gone).
        self.cut_subscribers: list[Callable[[int], None]] = []
        self._write_lock = threading.Lock()
        self._writes_closed = False
        self._recorder = HeardRecorder(ring, self._write, self.edge_frames) if self.records_heard else None
        self._cut_lock = threading.Lock()
        self._cut_requests: deque[CutRequest] = deque()
        self._cuts: list[CutRequest] = []  # taken, newest last: what they drop
        self._joined: deque[_Joined] = deque()  # states at the cut points still ahead of the reader
        self._points: tuple[CutPoint, ...] = ()
        self._numbers = 0
        self._crop_next: tuple[int, int] | None = None  # (clip, columns): cut short when it is joined
        self._joining: int | None = None  # the clip being joined and fed to the ring

    # ------------------------------------------------------------------ the dispatcher's thread

    def cut_points(self) -> tuple[CutPoint, ...]:
        """Where the live stream can be cut now, in stream order (ahead of what is heard)."""
        return self._points

    def heard_frame(self) -> int:
        """The ring frame being heard (0 without live play)."""
        return self.ring.read if self.ring is not None else 0

    def cut(self, request: CutRequest) -> None:
        """Ask for a cut: the joiner takes it before the next clip (a clip being fed to the ring is abandoned)."""
        with self._cut_lock:
            self._cut_requests.append(request)

    # ------------------------------------------------------------------ the consumer's thread

    def run(self) -> None:
        """Join clips until the dispatcher's end (None) or a stop; then flush the tails and close the ring."""
        channels, rate = self.params.channels, self.params.sample_rate
        self._clips = ClipStitcher(self.params, self.crossfade, loudness=self.loudness)
        # A render's live play joins the same clips, until a loop makes it differ from the file: from
        # then on it has a stitcher of its own (or shares the only one, when there is no file).
        self._live_clips: ClipStitcher | None = self._clips if self.records_heard else None
        to_file = StreamEnds(channels, self.edge_frames, self.total_frames)
        self._live = StreamEnds(channels, self.edge_frames, self.total_frames) if self.ring is not None else None
        self._last: ReadyClip | None = None
        self._last_overlap = self.layout.overlap
        told_looping = False
        try:
            while not self.stop.is_set():
                self._take_cuts()
                self._record()
                try:
                    ready = self.ready.get(timeout=POLL)
                except queue.Empty:
                    if self.stop.is_set():
                        break
                    live = self._live
                    if (live is not None and self._last is not None and self.clock_started()
                            and self.ring.available < LOW_WATER * rate):
                        if not told_looping:
                            self.say(f"the model makes {self.stats.production_rate():.2f} s of audio per second: "
                                     "looping the last clip until the next one is ready")
                            told_looping = True
                        self._loop()
                    continue
                if ready is None:
                    break
                self._take_cuts()
                if self._dropped(ready):
                    continue
                if self.records_heard:
                    self._skip_repeats()
                began = time.monotonic()
                self._keep(ready)
                overlap = self.clip_width - ready.slot.advance
                polish = self.can_polish()
                self.stats.unpolished += not polish
                image, self._joining = ready.image, ready.clip.index
                if self._crop_next is not None and self._crop_next[0] == ready.clip.index:
                    image, self._crop_next = _cropped(image, self._crop_next[1] + overlap), None
                audio = self._clips.add(image, overlap, polish)
                if not self.records_heard:
                    self._write(to_file.push(audio))
                if self._live_clips is not None and self._live_clips is not self._clips:
                    audio = self._live_clips.add(ready.image, overlap, polish)
                self.stats.last_audio_seconds = time.monotonic() - began
                self.stats.last_model_seconds = ready.model_seconds
                self._last, self._last_overlap = ready, overlap
                self.stats.clips += 1
                made = to_file.emitted if not self.records_heard else self._live.emitted + audio.shape[1]
                self.stats.arrived(made / rate)
                if self.stats.first_audio is None:
                    self.stats.first_audio = time.monotonic() - self.stats.started
                self._announce(ready.clip, image, audio.shape[1], model_seconds=ready.model_seconds)
                fed = self._live is None or self._feed_live(audio, ready.clip.index)
                self._joining = None
                if not fed:
                    if self.stop.is_set():
                        break
                    continue
                self._turned(ready)
        finally:
            tail = self._clips.finish()
            if not self.records_heard:
                self._write(to_file.push(tail))
                self._write(to_file.finish())
                self.stats.audio_seconds = to_file.emitted / rate
            live = self._live
            if live is not None:
                live_tail = tail if self._live_clips is None or self._live_clips is self._clips else (
                    self._live_clips.finish())
                if live_tail.shape[1]:
                    self._feed_ring(live.push(live_tail))
                self._feed_ring(live.finish())
                if self.records_heard:
                    self.stats.audio_seconds = live.emitted / rate
            self.stats.finished = True
            if self.ring is not None:
                self.ring.closed = True

    def _loop(self) -> None:
        """Repeat the last clip in live play (crossfaded on), while the next one is late."""
        self.stats.loops += 1
        if self._live_clips is None:
            self._live_clips = copy.deepcopy(self._clips) if self.sinks else self._clips
        repeat = self._live_clips.add(self._last.image, self._last_overlap, adaptive=False)
        if self._live.total is not None:
            self._live.total += repeat.shape[1]
        self._announce(self._last.clip, self._last.image, repeat.shape[1], loop=True)
        self._feed_live(repeat, self._last.clip.index, loop=True)

    def _feed_live(self, audio: np.ndarray, index: int, loop: bool = False) -> bool:
        """Feed joined audio to the ring and mark a cut point after it; False if a stop or a cut came first
        (the cut has then been taken)."""
        if not self._feed_ring(self._live.push(audio), index):
            return False
        if self.records_heard:
            self._numbers += 1
            point = CutPoint(self._numbers, index, self.ring.written, loop)
            self._joined.append(_Joined(point, copy.deepcopy(self._clips), copy.deepcopy(self._live),
                                        self._last, self._last_overlap))
            self._publish_points()
        return True

    def _publish_points(self) -> None:
        """Forget cut points the reader has passed (the newest is kept: the state the next clip joins)."""
        heard = self.ring.read + round(CUT_GUARD * self.params.sample_rate)
        while len(self._joined) > 1 and self._joined[0].point.frame < heard:
            self._joined.popleft()
        self._points = tuple(joined.point for joined in self._joined)

    def _dropped(self, ready: ReadyClip) -> bool:
        """Whether a cut taken since ``ready`` was planned drops it."""
        return any(cut.generation > ready.generation and ready.clip.index >= cut.first for cut in self._cuts)

    def _turned(self, ready: ReadyClip) -> None:
        """Note how long the newest steer took, once its first clip is joined."""
        newest = self._cuts[-1] if self._cuts else None
        if newest is not None and ready.generation == newest.generation and ready.clip.index == newest.first:
            self.stats.last_steer_seconds = time.monotonic() - newest.asked_at

    def _take_cuts(self) -> bool:
        """Take the cuts asked for; True if one took audio back."""
        with self._cut_lock:
            requests, self._cut_requests = list(self._cut_requests), deque()
        took = False
        for request in requests:
            self._cuts.append(request)
            del self._cuts[:-8]
            if request.point is not None:
                took |= self._go_back(request.point, request.crop)
            elif request.crop is not None:  # the clip before the new path is cut short when it is joined
                newest = self._joined[-1].point if self._joined else None
                if newest is not None and newest.index == request.first - 1 and not newest.loop:
                    took |= len(self._joined) > 1 and self._go_back(self._joined[-2].point.number, request.crop)
                elif self._joining != request.first - 1:  # (one being joined now is kept whole)
                    self._crop_next = (request.first - 1, request.crop)
        return took

    def _skip_repeats(self) -> None:
        """A clip is ready while repeats of the last one wait in the ring (the model fell behind): take back
        those not needed to cover its joining, so that it is heard as soon as it can be."""
        rate = self.params.sample_rate
        needed = self.ring.read + (self.stats.last_audio_seconds * 1.25 + CUT_GUARD + LOW_WATER / 2) * rate
        joined = list(self._joined)
        back = None
        for earlier, later in reversed(list(zip(joined, joined[1:]))):
            if not later.point.loop or earlier.point.frame < needed:
                break
            back = earlier
        if back is not None:
            self._go_back(back.point.number, steer=False)

    def _go_back(self, number: int, crop: int | None = None, steer: bool = True) -> bool:
        """Take the live stream back to cut point ``number`` (or the first later one the reader has not
        come too near); the joiner continues from its state there, after joining again the first ``crop``
        columns of what followed it, if asked. True if audio was taken back."""
        guard = self.ring.read + round(CUT_GUARD * self.params.sample_rate)
        kept = [joined for joined in self._joined if joined.point.number >= number and joined.point.frame >= guard]
        if not kept or kept[0].point.frame >= self.ring.written:
            return False
        back = kept[0]
        following = kept[1] if crop is not None and back.point.number == number and len(kept) > 1 else None
        while self._joined and self._joined[-1] is not back:
            self._joined.pop()
        self.ring.truncate(back.point.frame)
        self._clips = self._live_clips = copy.deepcopy(back.stitcher)
        self._live = copy.deepcopy(back.ends)
        self._last, self._last_overlap = back.last, back.overlap
        self.stats.cuts += steer
        self._publish_points()
        for callback in self.cut_subscribers:
            callback(back.point.frame)
        if following is not None:
            self._join_cropped(following.last, following.overlap, crop)
        return True

    def _join_cropped(self, ready: ReadyClip, overlap: int, columns: int) -> None:
        """Join the first ``columns`` of ``ready``'s clip (and the overlap the next clip crossfades over)."""
        image = _cropped(ready.image, columns + overlap)
        audio = self._clips.add(image, overlap, adaptive=False)
        self._last, self._last_overlap = ready, overlap
        self._announce(ready.clip, image, audio.shape[1])
        self._feed_live(audio, ready.clip.index)

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

    # ------------------------------------------------------------------ the sinks

    def _record(self) -> None:
        """Hand the sinks what the clock has taken from the ring since last time (endless live play)."""
        if self._recorder is not None:
            self._recorder.take()

    def close_writes(self) -> None:
        """Write nothing more to the sinks from now on (the file may be closed once this returns). A
        recording of what was heard gets the last of it first, faded out."""
        if self._recorder is not None:
            self._recorder.finish()
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

    def _feed_ring(self, audio: np.ndarray, index: int | None = None) -> bool:
        """Write to the ring, recording what is heard while it waits; False on a stop, or where a cut asked
        for meanwhile took back the clip ``index`` being written."""
        def wait() -> bool:
            self._record()
            with self._cut_lock:
                pending = index is not None and any(request.first <= index for request in self._cut_requests)
            return pending and self._take_cuts()

        return self.ring.write(np.ascontiguousarray(audio.T), self.stop, wait)


class HeardRecorder:
    """Hands the sinks what the clock took from the ring (endless live play: what was heard), holding
    back the last few milliseconds for the fade that ends the file. Any thread may call it."""

    def __init__(self, ring: RingBuffer, write: Callable[[np.ndarray], None], edge_frames: int) -> None:
        self.ring, self.write, self.edge_frames = ring, write, edge_frames
        self._lock = threading.Lock()
        self._tail = np.zeros((ring.channels, 0), np.float32)

    def take(self) -> None:
        """Write what was heard since the last call, but its last ``edge_frames``."""
        with self._lock:
            heard = np.concatenate([self._tail, self.ring.take_played().T], axis=1)
            split = max(0, heard.shape[1] - self.edge_frames)
            self._tail = heard[:, split:]
            if split:
                self.write(heard[:, :split])

    def finish(self) -> None:
        """Write the rest of what was heard, fading out over its end."""
        self.take()
        with self._lock:
            tail, self._tail = self._tail, self._tail[:, :0]
            if tail.shape[1]:
                self.write(tail * np.linspace(1.0, 0.0, tail.shape[1], dtype=np.float32))


def _cropped(image: Image.Image, columns: int) -> Image.Image:
    """The first ``columns`` of a clip's spectrogram, with its parameters (EXIF) kept."""
    cropped = image.crop((0, 0, min(columns, image.width), image.height))
    cropped.getexif().update(image.getexif())
    return cropped
