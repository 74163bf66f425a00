"""``riffstream serve`` itself: where it serves (:class:`ServeOptions`), the socket bound before any model
loads, the Icecast check, and :func:`serve`, which runs a :class:`~riffstream.server.station.Station`
behind uvicorn until a signal.

Bound to a loopback address, anyone on the machine may steer the stream. Bound to any other
address, the control calls (``POST``) need the token printed at start; listening needs none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn

from riffstream.errors import RiffstreamError
from riffstream.server import CONTROL_CALLS, DEFAULT_MAX_LISTENERS
from riffstream.server.icecast import check_source
from riffstream.server.routes import create_app
from riffstream.server.station import SEND_BUFFER, RecentNotes, Station
from riffstream.sinks.broadcast import ENCODERS, Broadcast

if TYPE_CHECKING:
    from riffstream.server.icecast import IcecastTarget
    from riffstream.stream import RealTimeClock, Stream


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


def check_icecast(options: ServeOptions, say: Callable[[str], None]) -> None:
    """Fail now, with one line, if the Icecast server refuses the source's password; a server not reachable
    yet is only noted (``say``), as the source keeps trying."""
    try:  # a refused password (IcecastRejected) ends serving with its one line
        asyncio.run(check_source(options.icecast, ENCODERS[options.icecast_format].media_type))
    except OSError as error:  # connection refused, unreachable, timed out: the source retries later
        say(f"note: icecast {options.icecast.redacted()} is not reachable yet ({error}); will keep trying")


def serve(stream: Stream, clock: RealTimeClock, broadcast: Broadcast, options: ServeOptions,
          sock: socket.socket, log: Callable[[str], None] = print,
          on_ready: Callable[[], None] | None = None, midi: RecentNotes | None = None) -> int | None:
    """Run the station until a signal (SIGINT, SIGTERM: returns its number) or a stream error (raised).
    ``midi`` holds the stream's notes for ``/api/midi``."""

    station = Station(stream, clock, broadcast, options, log)
    station.midi = midi
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


