"""The HTTP face of a station: the page, the audio streams, the JSON API and its events.

Every input is bounded: prompt length, request body size, control calls per client, and the
number of listeners; going over gets a 4xx with a one-line reason. Control calls (``POST``)
need the station's token when it has one.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from riffstream.errors import RiffstreamError
from riffstream.server import CONTROL_WINDOW
from riffstream.server.station import KEEP_CLIPS, MAX_STEPS, PROMPT_CHARS, Station

STATIC = Path(__file__).with_name("static")
#: Most minutes of notes /api/midi gives (the station keeps ten).
MIDI_MINUTES = 10
#: Largest request body, bytes.
MAX_BODY = 16 * 1024

_LISTENER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class RateLimit:
    """At most ``calls`` per ``window`` seconds per client, with a bounded table of clients."""

    def __init__(self, calls: int, window: float, clients: int = 4096) -> None:
        self.calls, self.window, self.clients = calls, window, clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        """Whether ``client`` may make a call now (and count it if so)."""
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
    rate_limit = RateLimit(station.options.control_calls, CONTROL_WINDOW)

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
        if not rate_limit.allow(client):
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

    @app.get("/api/midi", response_class=Response, summary="The notes of the last minutes as a MIDI file",
             responses={200: {"content": {"audio/midi": {}}}, 404: {"description": "notes are not transcribed"}})
    def midi(minutes: Annotated[float, Query(gt=0, le=MIDI_MINUTES)] = 5.0):
        if station.midi is None:
            raise HTTPException(404, "this station does not transcribe notes: install Basic Pitch's model "
                                     "(pip install --no-deps basic-pitch==0.4.0)")
        return Response(station.midi.recent(minutes * 60), media_type="audio/midi",
                        headers={"content-disposition": 'attachment; filename="riffstream.mid"'})

    @app.post("/api/prompt", status_code=202, response_model=Queued, dependencies=[Depends(control)],
              summary="Queue a transition to a prompt", responses=CONTROL_RESPONSES)
    async def prompt(body: PromptIn) -> Queued:
        text = _text(body.prompt, "prompt")
        try:
            station.stream.queue_prompt(text)
        except RiffstreamError as error:
            raise HTTPException(422, str(error)) from None
        return Queued(queued=text)

    @app.post("/api/settings", response_model=SettingsOut, dependencies=[Depends(control)],
              summary="Change seed, clips per transition, steps or negative prompt for clips to come",
              responses=CONTROL_RESPONSES)
    async def settings(body: SettingsIn) -> SettingsOut:
        negative = body.negative_prompt
        if "negative_prompt" in body.model_fields_set:
            negative = _text(negative, "negative prompt") if (negative or "").strip() else ""
        try:
            settings = station.stream.change_settings(seed=body.seed, clips_per_transition=body.clips_per_transition,
                                                      steps=body.steps, negative_prompt=negative)
        except RiffstreamError as error:
            raise HTTPException(422, str(error)) from None
        return SettingsOut(settings=settings)

    return app
