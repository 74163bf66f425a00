"""An Icecast 2 source client: pushes the station's encoded stream to an Icecast server.

The source protocol is an HTTP PUT to the mount with Basic auth and ``Expect:
100-continue``; once the server answers, the body is raw bytes for as long as the source
lives. Icecast 2.4 does not decode chunked uploads, so the body is written as it is,
never chunked. Everything here runs on the server's event loop (``asyncio`` streams).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from riffstream.errors import RiffstreamError

#: Seconds to wait for the server to answer the PUT, and for one write to drain.
ANSWER_TIMEOUT, WRITE_TIMEOUT = 10.0, 10.0
#: Reconnection backoff: first wait, longest wait (seconds), and how long a connection must
#: last for the backoff to start again from the first wait.
BACKOFF_FIRST, BACKOFF_MOST, BACKOFF_RESET = 1.0, 30.0, 60.0

_MOUNT = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]{1,200}$")


@dataclass(frozen=True)
class IcecastTarget:
    """Where to push: an Icecast server, a mount, and the source credentials."""

    host: str
    port: int
    mount: str
    user: str
    password: str

    def redacted(self) -> str:
        """The address without the password, for messages."""
        return f"{self.host}:{self.port}{self.mount}"


class IcecastRejected(RiffstreamError):
    """The server refused the source for a reason retrying will not fix (a wrong password)."""


def parse_icecast_url(text: str) -> IcecastTarget:
    """``icecast://[USER:]PASSWORD@HOST[:PORT]/MOUNT`` (or ``http://``) as a target; one line if unusable."""
    shown = re.sub(r"//[^@/]*@", "//…@", text)
    if not text or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise RiffstreamError("an Icecast address has no spaces or control characters: "
                              "icecast://source:PASSWORD@HOST:PORT/MOUNT")
    parts = urlsplit(text)
    if parts.scheme not in ("icecast", "http"):
        raise RiffstreamError(f"not an Icecast address: {shown} (use icecast://source:PASSWORD@HOST:PORT/MOUNT)")
    try:
        port = parts.port or 8000
    except ValueError:
        raise RiffstreamError(f"bad port in the Icecast address {shown}") from None
    if not parts.hostname:
        raise RiffstreamError(f"no host in the Icecast address {shown}")
    if parts.password is None and parts.username is None:
        raise RiffstreamError(f"no source password in the Icecast address {shown} "
                              "(icecast://source:PASSWORD@HOST:PORT/MOUNT)")
    user, password = ("source", parts.username) if parts.password is None else (parts.username, parts.password)
    if not password:
        raise RiffstreamError(f"empty source password in the Icecast address {shown}")
    if not _MOUNT.match(parts.path or "") or parts.query or parts.fragment:
        raise RiffstreamError(f"no usable mount in the Icecast address {shown} (e.g. /riffstream.mp3)")
    return IcecastTarget(parts.hostname, port, parts.path, unquote(user or "source"), unquote(password))


def _request(target: IcecastTarget, content_type: str, name: str) -> bytes:
    credentials = base64.b64encode(f"{target.user}:{target.password}".encode()).decode()
    lines = [f"PUT {target.mount} HTTP/1.1", f"Host: {target.host}:{target.port}",
             f"Authorization: Basic {credentials}", f"Content-Type: {content_type}", "Expect: 100-continue",
             f"Ice-Name: {name}", "Ice-Public: 0", "User-Agent: riffstream", "", ""]
    return "\r\n".join(lines).encode()


async def _open(target: IcecastTarget, content_type: str, name: str):
    """Connect and send the PUT; returns the stream pair once the server says go."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), ANSWER_TIMEOUT)
    try:
        writer.write(_request(target, content_type, name))
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT)
        fields = status_line.decode("latin-1").split(maxsplit=2)
        code = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        if code == 401:
            raise IcecastRejected(f"icecast at {target.host}:{target.port} refused the source password for "
                                  f"{target.mount} (401)")
        if code not in (100, 200):
            reason = fields[2].strip() if len(fields) > 2 else "no answer"
            raise ConnectionError(f"icecast answered {code or '?'} {reason}")
        while (await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT)).strip():
            pass  # the rest of the answer's headers
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def check_source(target: IcecastTarget, content_type: str) -> None:
    """Connect once and check that the server takes these credentials (IcecastRejected if not)."""
    _, writer = await _open(target, content_type, "riffstream")
    writer.close()


async def push(target: IcecastTarget, chunks: AsyncIterator[bytes], content_type: str,
               name: str = "riffstream", on_connected: Callable[[], None] | None = None) -> None:
    """Push ``chunks`` as one source connection; returns when they end, raises when the connection drops."""
    reader, writer = await _open(target, content_type, name)
    if on_connected is not None:
        on_connected()
    try:
        async for data in chunks:
            if reader.at_eof():
                raise ConnectionError("icecast closed the connection")
            writer.write(data)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
    finally:
        writer.close()


async def run_source(target: IcecastTarget, subscribe: Callable[[], AsyncIterator[bytes]], content_type: str,
                     log: Callable[[str], None], stop: asyncio.Event) -> None:
    """Keep pushing until ``stop`` is set, reconnecting with backoff; a refused password is raised."""
    wait = BACKOFF_FIRST
    while not stop.is_set():
        began = time.monotonic()
        try:
            await push(target, subscribe(), content_type,
                       on_connected=lambda: log(f"icecast: streaming to http://{target.redacted()}"))
            return
        except IcecastRejected:
            raise
        except (OSError, ConnectionError, asyncio.TimeoutError) as error:
            if time.monotonic() - began > BACKOFF_RESET:
                wait = BACKOFF_FIRST
            reason = str(error) or type(error).__name__
            log(f"icecast: lost {target.redacted()} ({reason}); retrying in {wait:g} s")
        try:
            await asyncio.wait_for(stop.wait(), wait)
        except asyncio.TimeoutError:
            pass
        wait = min(wait * 2, BACKOFF_MOST)
