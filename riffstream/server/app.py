"""The station: one stream, served over HTTP as audio, a JSON API, server-sent events and a page.

Data flows one way. The stream's live audio leaves the ring buffer through a
:class:`~riffstream.stream.RealTimeClock`, which hands it to a
:class:`~riffstream.sinks.broadcast.Broadcast` (MP3 and Ogg Opus, each encoded once).
Every listener reads the same encoded chunks with a cursor of its own, so all hear the same
music, as on a radio, and memory stays flat however many come and go. Everything here runs
on the server's event loop; the stream's threads reach it only through
``loop.call_soon_threadsafe``.

Bound to a loopback address, anyone on the machine may steer the stream. Bound to any other
address, the control calls (``POST``) need the token printed at start; listening needs none.
Every input is bounded: prompt length, request body size, control calls per client, and the
number of listeners; going over gets a 4xx with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import ipaddress
import json
import re
import secrets
import signal
import socket
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from riffstream.errors import RiffstreamError
from riffstream.server import CONTROL_CALLS, CONTROL_WINDOW, DEFAULT_MAX_LISTENERS
from riffstream.sinks.broadcast import Broadcast, EncodedStream, FellBehind

if TYPE_CHECKING:
    from riffstream.server.icecast import IcecastTarget
    from riffstream.stream import ClipEvent, RealTimeClock, Stream

STATIC = Path(__file__).with_name("static")
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
#: Largest request body, bytes.
MAX_BODY = 16 * 1024
#: Spectrograms kept for /api/clips, and recent clips sent to a new event subscriber.
KEEP_CLIPS, RECENT_CLIPS = 32, 8
#: Events queued for one subscriber before it is dropped as stalled.
EVENT_QUEUE = 256
#: Seconds between status events, and between keep-alive comments on a quiet event stream.
STATUS_EVERY, KEEPALIVE_EVERY = 1.0, 15.0
#: Socket send buffer for listeners, bytes: small, so a stalled listener is noticed in seconds.
SEND_BUFFER = 64 * 1024

_LISTENER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the station serves (the stream's own options are a StreamOptions)."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required on control calls when set
    max_listeners: int = DEFAULT_MAX_LISTENERS
    icecast: IcecastTarget | None = None
    icecast_format: str = "mp3"
    control_calls: int = CONTROL_CALLS  # per client per CONTROL_WINDOW seconds

    @property
    def url(self) -> str:
        """The page's address, with the token when one is needed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def needs_token(host: str, token: str | None) -> str | None:
    """The token in force: the one given, a new one when bound beyond loopback, else None."""
    if token is not None:
        if not 8 <= len(token) <= 256 or not token.isprintable() or " " in token:
            raise RiffstreamError("--token must be 8 to 256 printable characters without spaces")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(16)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not (before any model loads)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError) as error:
        raise RiffstreamError(f"cannot serve on {host}:{port}: {error.args[-1]}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: a listener who stops reading blocks within seconds, not minutes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.bind(address)
        sock.listen(1024)
    except OSError as error:
        sock.close()
        reason = "the port is in use (is another riffstream serving?)" if error.errno == 98 else error.strerror
        raise RiffstreamError(f"cannot serve on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


class _Listener:
    """One audio listener: its format, where it joined, and whether it is stuck sending."""

    def __init__(self, name: str, task: asyncio.Task | None) -> None:
        self.name, self.task = name, task
        self.sending_since: float | None = None


class _RateLimit:
    """At most ``calls`` per ``window`` seconds per client, with a bounded table of clients."""

    def __init__(self, calls: int, window: float, clients: int = 4096) -> None:
        self.calls, self.window, self.clients = calls, window, clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        times = self._seen.pop(client, None) or deque()
        while times and now - times[0] > self.window:
            times.popleft()
        allowed = len(times) < self.calls
        if allowed:
            times.append(now)
        self._seen[client] = times
        while len(self._seen) > self.clients:
            self._seen.popitem(last=False)
        return allowed


class Station:
    """A running stream, its broadcast and what the server tells about them."""

    def __init__(self, stream: Stream, clock: RealTimeClock, broadcast: Broadcast, options: ServeOptions,
                 log=print) -> None:
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
        # Prompts typed here, each with the index of the first clip announced carrying it (None
        # until then): the status lists them as queued until that clip is heard. Between the
        # planner taking a prompt and the clip being heard lie the clips in flight and the ring
        # (tens of seconds), when neither the journey nor the prompt queue holds it any more.
        self.typed: deque[list] = deque(maxlen=RECENT_CLIPS)
        self.listener_starts: OrderedDict[str, dict] = OrderedDict()
        self._subscribers: set[asyncio.Queue] = set()
        self._wakers: dict[str, asyncio.Event] = {}
        self.rate_limit = _RateLimit(options.control_calls, CONTROL_WINDOW)
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        """Hook into the stream and the broadcast, start the stream and the station's own tasks."""
        self.loop = asyncio.get_running_loop()
        for name, encoded in self.broadcast.streams.items():
            self._wakers[name] = asyncio.Event()
            encoded.on_append.append(lambda name=name: self._call(self._wake, name))
        self.stream.on_clip.append(lambda event: self._call(self._on_clip, event))
        self.stream.start()
        self._tasks.append(asyncio.create_task(self._tick()))
        if self.options.icecast is not None:
            from riffstream.server.icecast import run_source

            fmt = self.options.icecast_format
            self._tasks.append(asyncio.create_task(self._icecast(run_source, fmt)))

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

    async def _icecast(self, run_source, fmt: str) -> None:
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
        rate = self.stream.params.sample_rate
        clip = event.clip
        record = {
            "index": clip.index, "start": round(self.clock.stream_frame(event.live_frame) / rate, 3),
            "duration": round(self.stream.clip_seconds, 3), "prompt_a": clip.prompt_a, "prompt_b": clip.prompt_b,
            "alpha": round(clip.alpha, 4), "seed_a": clip.seed_a, "seed_b": clip.seed_b, "loop": event.loop,
            "model_s": round(event.model_seconds, 3),
            "png": f"/api/clips/{clip.index}.png",
        }
        self.clips[clip.index] = event.image
        while len(self.clips) > KEEP_CLIPS:
            self.clips.popitem(last=False)
        self.recent.append(record)
        for typed in self.typed:
            if typed[1] is None and clip.prompt_b == typed[0]:
                typed[1] = clip.index
        self._publish("clip", record)

    def _publish(self, name: str | None, data: dict | None) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((name, data))
            except asyncio.QueueFull:  # a stalled subscriber: drop it
                self._subscribers.discard(queue)

    # ------------------------------------------------------------------ what is said about it

    def now_playing(self) -> dict | None:
        """The clip being heard now (the newest to have started by the clock)."""
        heard = self.clock.stream_seconds
        current = None
        for record in self.recent:
            if record["start"] <= heard + 1e-6:
                current = record
        return current or (self.recent[0] if self.recent else None)

    def status(self) -> dict:
        """What the page and programs want to know, as JSON-able data."""
        stream, current = self.stream, self.now_playing()
        counts = {name: 0 for name in self.broadcast.streams}
        for listener in self.listeners:
            counts[listener.name] += 1
        upcoming = stream.journey.upcoming(stream.next_clip)
        heard = current["index"] if current else -1
        reached = [n for n, (_, index) in enumerate(self.typed) if index is not None and index <= heard]
        for _ in range(reached[-1] + 1 if reached else 0):  # heard, or passed over by a later prompt
            self.typed.popleft()
        queued = list(dict.fromkeys([*upcoming, *list(stream.prompt_queue.queue), *(text for text, _ in self.typed)]))
        return {
            "clip": current["index"] if current else None,
            "prompt_a": current["prompt_a"] if current else stream.options.prompts[0],
            "prompt_b": current["prompt_b"] if current else stream.options.prompts[0],
            "alpha": current["alpha"] if current else 0.0,
            "seed_a": current["seed_a"] if current else stream.options.seed,
            "seed_b": current["seed_b"] if current else stream.options.seed,
            "queued": queued,
            "ahead_s": round(stream.ahead_seconds(), 2),
            "real_time_factor": round(stream.stats.real_time_factor(), 3),
            "made_seconds": round(stream.stats.audio_seconds, 3),
            "model_seconds": round(stream.stats.denoise_seconds + stream.stats.decode_seconds, 3),
            "listeners": counts,
            "behind": bool(self.recent and self.recent[-1]["loop"]),
            "loops": stream.stats.loops,
            "stream_time": round(self.clock.stream_seconds, 3),
            "settings": stream.settings(),
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
        if listener_id is None:
            return
        record = {"id": listener_id, "format": name, "start": round(start, 3)}
        self.listener_starts[listener_id] = record
        while len(self.listener_starts) > 4 * self.options.max_listeners:
            self.listener_starts.popitem(last=False)
        self._publish("listener", record)

    def full(self) -> bool:
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


class AudioStream(Response):
    """An endless audio response: the station sends it chunk by chunk to this one listener."""

    def __init__(self, station: Station, name: str, listener_id: str | None) -> None:
        super().__init__(media_type=station.broadcast.streams[name].media_type)
        self.station, self.name, self.listener_id = station, name, listener_id

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache, no-store"),
            (b"x-content-type-options", b"nosniff"), (b"icy-name", b"riffstream")]})
        await self.station.listen(self.name, self.listener_id, send, receive)
        with contextlib.suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---------------------------------------------------------------------- the app

class PromptIn(BaseModel):
    """A transition to queue."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=PROMPT_CHARS, description="what to move to, e.g. 'smooth jazz'")


class SettingsIn(BaseModel):
    """Settings for the clips planned from now on; absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    clips_per_transition: int | None = Field(None, ge=1, le=1000)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    negative_prompt: str | None = Field(None, max_length=PROMPT_CHARS, description="null or '' clears it")


class Queued(BaseModel):
    queued: str


class SettingsOut(BaseModel):
    settings: dict[str, Any]


def _one_line(error: RequestValidationError) -> str:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "request"
    return f"{where}: {first.get('msg', 'invalid request')}"


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise HTTPException(422, f"{what} is empty")
    if _CONTROL_CHARACTERS.search(value):
        raise HTTPException(422, f"{what} has control characters")
    return value


#: What a control call may answer besides success: each a JSON {"detail": one line}.
CONTROL_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not JSON"}, 401: {"description": "the token is needed"},
    403: {"description": "wrong token"}, 411: {"description": "no Content-Length"},
    413: {"description": "body too large"}, 422: {"description": "a value is out of bounds"},
    429: {"description": "too many control calls"},
}


def listener_id(listener: str | None = None) -> str | None:
    """The ``?listener=`` a page names itself by, checked."""
    if listener is not None and not _LISTENER_ID.match(listener):
        raise HTTPException(422, "listener must be 1 to 64 letters, digits, '-' or '_'")
    return listener


def create_app(station: Station) -> FastAPI:
    """The FastAPI app serving ``station``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await station.start()
        try:
            yield
        finally:
            await station.stop()

    app = FastAPI(title="riffstream", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="An endless, evolving AI music stream: listen, follow it, steer it.")

    @app.middleware("http")
    async def bounded_bodies(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a request body needs a Content-Length"}, 411)
            if not length.isdigit() or int(length) > MAX_BODY:
                return JSONResponse({"detail": f"request body over {MAX_BODY} bytes"}, 413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse({"detail": _one_line(error)}, 422)

    def control(request: Request) -> None:
        token = station.options.token
        if token is not None:
            given = request.headers.get("authorization", "")
            if not given:
                raise HTTPException(401, "this station needs its token: send 'Authorization: Bearer TOKEN'",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise HTTPException(403, "wrong token")
        client = request.client.host if request.client else "?"
        if not station.rate_limit.allow(client):
            raise HTTPException(429, f"too many control calls: at most {station.options.control_calls} every "
                                     f"{CONTROL_WINDOW:g} s")

    def room() -> None:
        if station.full():
            raise HTTPException(429, f"the station has its maximum of {station.options.max_listeners} listeners")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/stream.mp3", response_class=Response, summary="The stream as MP3 (every browser plays it)",
             responses={200: {"content": {"audio/mpeg": {}}}, 429: {"description": "too many listeners"}})
    async def stream_mp3(listener: Annotated[str | None, Depends(listener_id)] = None,
                         _: None = Depends(room)):
        return AudioStream(station, "mp3", listener)

    @app.get("/stream.ogg", response_class=Response, summary="The stream as Ogg Opus, 48 kHz",
             responses={200: {"content": {"audio/ogg": {}}}, 429: {"description": "too many listeners"}})
    async def stream_ogg(listener: Annotated[str | None, Depends(listener_id)] = None,
                         _: None = Depends(room)):
        return AudioStream(station, "ogg", listener)

    @app.get("/api/status", summary="Prompts in play and queued, buffer, speed, listeners")
    async def status() -> dict[str, Any]:
        return station.status()

    @app.get("/api/events", response_class=StreamingResponse, summary="Server-sent events: status, clip, listener",
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(listener: Annotated[str | None, Depends(listener_id)] = None, _: None = Depends(room)):
        return StreamingResponse(station.events(listener), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.get("/api/clips/{index}.png", response_class=Response, summary="A recent clip's spectrogram",
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "not kept"}})
    def clip_png(index: Annotated[int, PathParam(ge=0, le=10**9)]):
        data = station.png(index)
        if data is None:
            raise HTTPException(404, f"clip {index} is not kept (the last {KEEP_CLIPS} are)")
        return Response(data, media_type="image/png", headers={"cache-control": "max-age=3600"})

    @app.post("/api/prompt", status_code=202, response_model=Queued, dependencies=[Depends(control)],
              summary="Queue a transition to a prompt", responses=CONTROL_RESPONSES)
    async def prompt(body: PromptIn) -> Queued:
        text = _text(body.prompt, "prompt")
        try:
            station.stream.queue_prompt(text)
        except RiffstreamError as error:
            raise HTTPException(422, str(error)) from None
        station.typed.append([text, None])
        return Queued(queued=text)

    @app.post("/api/settings", response_model=SettingsOut, dependencies=[Depends(control)],
              summary="Change seed, clips per transition, steps or negative prompt for clips to come",
              responses=CONTROL_RESPONSES)
    async def settings(body: SettingsIn) -> SettingsOut:
        negative = body.negative_prompt
        if "negative_prompt" in body.model_fields_set:
            negative = _text(negative, "negative prompt") if (negative or "").strip() else ""
        try:
            station.stream.change(seed=body.seed, clips_per_transition=body.clips_per_transition,
                                  steps=body.steps, negative_prompt=negative)
        except RiffstreamError as error:
            raise HTTPException(422, str(error)) from None
        return SettingsOut(settings=station.stream.settings())

    return app


def serve(stream: Stream, clock: RealTimeClock, broadcast: Broadcast, options: ServeOptions,
          sock: socket.socket, log=print, on_ready=None) -> int | None:
    """Run the station until a signal (SIGINT, SIGTERM: returns its number) or a stream error (raised)."""
    import uvicorn

    station = Station(stream, clock, broadcast, options, log)
    app = create_app(station)
    received: list[int] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            received.append(sig)
            station.end_listeners()
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None and not self.should_exit:
                on_ready()

    config = uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=2, access_log=False,
                            lifespan="on", ws="none")
    server = Server(config)

    async def watch() -> None:
        while not server.should_exit:
            if station.error is not None:
                server.should_exit = True
            await asyncio.sleep(0.1)

    async def main() -> None:
        watcher = asyncio.create_task(watch())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    # uvicorn takes SIGINT and SIGTERM while it serves, then raises them again with the handlers it
    # found: make those harmless, so that the caller learns the signal and ends as it chooses.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if station.error is not None:
        raise station.error
    return received[-1] if received else None


__all__ = ["ServeOptions", "Station", "bind", "create_app", "is_loopback", "needs_token", "serve"]
