"""The station: one running stream and its broadcast, told to many listeners.

The stream's live audio leaves the ring buffer through a
:class:`~riffstream.stream.RealTimeClock`, which hands it to a
:class:`~riffstream.sinks.broadcast.Broadcast` (MP3 and Ogg Opus, each encoded once).
Every listener reads the same encoded chunks with a cursor of its own, so all hear the same
music, as on a radio, and memory stays flat however many come and go; one that falls behind
or stops reading is dropped. Everything here runs on the server's event loop; the stream's
threads reach it only through ``loop.call_soon_threadsafe``. The station reads the stream
only through its public API: ``status()``, ``subscribe()``, and the steering calls the routes make.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from riffstream.errors import RiffstreamError
from riffstream.server.icecast import run_source
from riffstream.sinks.broadcast import Broadcast, EncodedStream, FellBehind

if TYPE_CHECKING:
    from riffstream.server.serve import ServeOptions
    from riffstream.stream import ClipEvent, RealTimeClock, Stream

#: Recent audio a new listener gets at once, seconds: a player starts on it within a second.
BURST_SECONDS = 2.0
#: A listener whose socket takes no bytes for this long (seconds) is dropped.
SEND_TIMEOUT = 5.0
#: A listener this far (seconds of audio) behind the live point is dropped.
MAX_LAG_SECONDS = 10.0
#: Longest prompt or negative prompt, characters (CLIP reads 77 tokens; this leaves room).
PROMPT_CHARS = 300
#: Most denoising steps a control call may ask for.
MAX_STEPS = 50
#: Spectrograms kept for /api/clips, and recent clips sent to a new event subscriber.
KEEP_CLIPS, RECENT_CLIPS = 32, 8
#: Events queued for one subscriber before it is dropped as stalled.
EVENT_QUEUE = 256
#: Seconds between status events, and between keep-alive comments on a quiet event stream.
STATUS_EVERY, KEEPALIVE_EVERY = 1.0, 15.0
#: Socket send buffer for listeners, bytes: small, so a stalled listener is noticed in seconds.
SEND_BUFFER = 64 * 1024


class _Listener:
    """One audio listener: its format, where it joined, and whether it is stuck sending."""

    def __init__(self, name: str, task: asyncio.Task | None) -> None:
        self.name, self.task = name, task
        self.sending_since: float | None = None


class RecentNotes(Protocol):
    """What ``/api/midi`` serves from (:class:`~riffstream.sinks.midi.MidiWriter` is one)."""

    def recent(self, seconds: float) -> bytes:
        """A MIDI file of the notes of the last ``seconds`` of the stream."""


class Station:
    """A running stream, its broadcast and what the server tells about them."""

    def __init__(self, stream: Stream, clock: RealTimeClock, broadcast: Broadcast, options: ServeOptions,
                 log: Callable[[str], None] = print) -> None:
        self.stream, self.clock, self.broadcast, self.options = stream, clock, broadcast, options
        self.log = log
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.closing = False
        self.listeners: set[_Listener] = set()
        self.event_streams = 0
        self.clips: OrderedDict[int, Any] = OrderedDict()
        self._pngs: OrderedDict[int, bytes] = OrderedDict()
        self.recent: deque[dict] = deque(maxlen=RECENT_CLIPS)
        self.listener_starts: OrderedDict[str, dict] = OrderedDict()
        self._subscribers: set[asyncio.Queue] = set()
        self._wakers: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task] = []
        #: The stream's notes, for /api/midi (None: not transcribed).
        self.midi: RecentNotes | None = None

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Hook into the stream and the broadcast, start the stream and the station's own tasks."""
        self.loop = asyncio.get_running_loop()
        for name, encoded in self.broadcast.streams.items():
            self._wakers[name] = asyncio.Event()
            encoded.on_append.append(lambda name=name: self._call(self._wake, name))
        self.stream.subscribe(lambda event: self._call(self._on_clip, event))
        self.stream.subscribe_cuts(lambda live_frame: self._call(self._on_cut, live_frame))
        self.stream.start()
        self._tasks.append(asyncio.create_task(self._tick()))
        if self.options.icecast is not None:
            self._tasks.append(asyncio.create_task(self._icecast(self.options.icecast_format)))

    async def stop(self) -> None:
        """End the listeners, stop the stream (the clock closes the broadcast) and the tasks."""
        self.end_listeners()
        for task in self._tasks:
            task.cancel()
        await asyncio.to_thread(self.stream.stop)

    def end_listeners(self) -> None:
        """Let every listener and event stream finish (any thread)."""
        self.closing = True
        self._call(self._wake_all)
        self._call(self._publish, None, None)

    def _call(self, callback, *args) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(callback, *args)

    async def _tick(self) -> None:
        last_status = last_wake = 0.0
        while True:
            try:
                self.stream.poll()
            except BaseException as error:  # the stream failed: the server ends and says why
                self.error = error
                self.end_listeners()
                raise
            now = time.monotonic()
            if now - last_wake >= 0.5:
                last_wake = now
                self._wake_all()
                self._drop_stuck(now)
            if now - last_status >= STATUS_EVERY:
                last_status = now
                self._publish("status", self.status())
            await asyncio.sleep(0.1)

    async def _icecast(self, fmt: str) -> None:
        encoded = self.broadcast.streams[fmt]
        stop = asyncio.Event()

        async def subscribe() -> AsyncIterator[bytes]:
            yield encoded.header
            async for chunk in self.chunks(encoded, 0.0):
                yield chunk.data

        try:
            await run_source(self.options.icecast, subscribe, encoded.media_type, self.log, stop)
        except RiffstreamError as error:
            self.log(f"icecast: {error}; no longer pushing to it")

    # ------------------------------------------------------------------ events from the stream's threads

    def _wake(self, name: str) -> None:
        waker = self._wakers[name]
        self._wakers[name] = asyncio.Event()
        waker.set()

    def _wake_all(self) -> None:
        for name in list(self._wakers):
            self._wake(name)

    def _on_clip(self, event: ClipEvent) -> None:
        clip = event.clip
        record = {
            "index": clip.index,
            "start": round(self.clock.stream_frame(event.live_frame) / self.clock.sample_rate, 3),
            "duration": round(event.seconds, 3), "prompt_a": clip.prompt_a, "prompt_b": clip.prompt_b,
            "alpha": round(clip.alpha, 4), "seed_a": clip.seed_a, "seed_b": clip.seed_b, "loop": event.loop,
            "model_s": round(event.model_seconds, 3),
            "png": f"/api/clips/{clip.index}.png",
        }
        self.clips[clip.index] = event.image
        while len(self.clips) > KEEP_CLIPS:
            self.clips.popitem(last=False)
        self.recent.append(record)
        self._publish("clip", record)

    def _on_cut(self, live_frame: int) -> None:
        """A steer took back the stream from ``live_frame`` on: the clips announced from there are not heard."""
        start = round(self.clock.stream_frame(live_frame) / self.clock.sample_rate, 3)
        for record in [record for record in self.recent if record["start"] >= start]:
            self.recent.remove(record)
        self._publish("cut", {"start": start})

    def _publish(self, name: str | None, data: dict | None) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((name, data))
            except asyncio.QueueFull:  # a stalled subscriber: drop it
                self._subscribers.discard(queue)

    # ------------------------------------------------------------------ what is said about it

    def status(self) -> dict:
        """What the page and programs want to know, as JSON-able data: the stream's status, the listeners."""
        now = self.stream.status()
        heard = now.heard
        counts = {name: 0 for name in self.broadcast.streams}
        for listener in self.listeners:
            counts[listener.name] += 1
        return {
            "clip": heard.index if heard else None,
            "prompt_a": heard.prompt_a if heard else now.first_prompt,
            "prompt_b": heard.prompt_b if heard else now.first_prompt,
            "alpha": round(heard.alpha, 4) if heard else 0.0,
            "seed_a": heard.seed_a if heard else now.first_seed,
            "seed_b": heard.seed_b if heard else now.first_seed,
            "queued": list(now.queued),
            "heard_in_s": None if now.heard_in is None else round(now.heard_in, 2),
            "steer": self.stream.options.steer,
            "ahead_s": round(now.ahead_seconds, 2),
            "real_time_factor": round(now.real_time_factor, 3),
            "made_seconds": round(now.made_seconds, 3),
            "model_seconds": round(now.model_seconds, 3),
            "listeners": counts,
            "behind": now.behind,
            "loops": now.loops,
            "stream_time": round(self.clock.stream_seconds, 3),
            "underruns": self.clock.underruns,
            "silence_s": round(self.clock.silence_frames / self.clock.sample_rate, 3),
            "settings": now.settings,
            "limits": {"prompt_chars": PROMPT_CHARS, "steps": [1, MAX_STEPS]},
            "token_required": self.options.token is not None,
        }

    def png(self, index: int) -> bytes | None:
        """Clip ``index``'s spectrogram as PNG, while it is kept."""
        if index in self._pngs:
            return self._pngs[index]
        image = self.clips.get(index)
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        self._pngs[index] = buffer.getvalue()
        while len(self._pngs) > KEEP_CLIPS:
            self._pngs.popitem(last=False)
        return self._pngs[index]

    # ------------------------------------------------------------------ listening

    async def chunks(self, encoded: EncodedStream, burst: float) -> AsyncIterator:
        """The encoded stream's chunks from about ``burst`` seconds back, then live, until it ends."""
        cursor = encoded.join_point(burst)
        while not self.closing:
            waker = self._wakers[encoded.name]
            chunks = encoded.read(cursor)
            if not chunks:
                if encoded.ended:
                    return
                await waker.wait()
                continue
            cursor += len(chunks)
            for chunk in chunks:
                yield chunk

    def _drop_stuck(self, now: float) -> None:
        for listener in list(self.listeners):
            if listener.sending_since is not None and now - listener.sending_since > SEND_TIMEOUT:
                listener.sending_since = None
                if listener.task is not None:
                    listener.task.cancel()

    def listener_started(self, listener_id: str | None, name: str, start: float) -> None:
        """Tell the page named ``listener_id`` where its audio began on the stream's time."""
        if listener_id is None:
            return
        record = {"id": listener_id, "format": name, "start": round(start, 3)}
        self.listener_starts[listener_id] = record
        while len(self.listener_starts) > 4 * self.options.max_listeners:
            self.listener_starts.popitem(last=False)
        self._publish("listener", record)

    def full(self) -> bool:
        """Whether the station has its most listeners (audio and event streams together)."""
        return len(self.listeners) + self.event_streams >= self.options.max_listeners

    async def listen(self, name: str, listener_id: str | None, send, receive) -> None:
        """Send one listener the stream: header, a burst of recent audio, then live chunks."""
        encoded = self.broadcast.streams[name]
        listener = _Listener(name, asyncio.current_task())
        self.listeners.add(listener)
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._send(listener, send, encoded.header)
            first = True
            async for chunk in self.chunks(encoded, BURST_SECONDS):
                if gone.is_set():
                    break
                if encoded.latest_time - chunk.time > MAX_LAG_SECONDS:
                    break
                if first:
                    self.listener_started(listener_id, name, chunk.time)
                    first = False
                await self._send(listener, send, chunk.data)
        except (FellBehind, OSError):
            pass
        except asyncio.CancelledError:
            # Dropped by _drop_stuck (or the server is going away): end this response only.
            task = asyncio.current_task()
            if task is not None and task.uncancel() > 0 and not self.closing:
                raise
        finally:
            watcher.cancel()
            self.listeners.discard(listener)

    @staticmethod
    async def _send(listener: _Listener, send, data: bytes) -> None:
        if not data:
            return
        listener.sending_since = time.monotonic()
        await send({"type": "http.response.body", "body": data, "more_body": True})
        listener.sending_since = None

    async def events(self, listener_id: str | None) -> AsyncIterator[str]:
        """Server-sent events: status now and then, each clip, and this listener's start."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=EVENT_QUEUE)
        self._subscribers.add(queue)
        self.event_streams += 1
        try:
            yield _sse("status", self.status())
            for record in list(self.recent):
                yield _sse("clip", record)
            if listener_id in self.listener_starts:
                yield _sse("listener", self.listener_starts[listener_id])
            while not self.closing:
                try:
                    name, data = await asyncio.wait_for(queue.get(), KEEPALIVE_EVERY)
                except asyncio.TimeoutError:
                    if queue not in self._subscribers:
                        return
                    yield ": keep-alive\n\n"
                    continue
                if name is None:
                    return
                if name == "listener" and data["id"] != listener_id:
                    continue
                yield _sse(name, data)
        finally:
            self._subscribers.discard(queue)
            self.event_streams -= 1


def _sse(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
