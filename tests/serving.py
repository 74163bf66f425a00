"""Helpers for tests that start ``riffstream serve`` (the tiny model) and talk to it over loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Options every test server uses: the tiny model, exact f32, few steps, narrow clips, no bar.
FAST_SERVE = ["--model", "tiny", "--precision", "f32", "--preset", "quality", "--steps", "2", "--no-progress"]
#: A first start may export the tiny model (tens of seconds on two cores).
START_TIMEOUT = 180.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on right now.

    Each socket stays bound until all are chosen: ports asked for one at a time can come back equal
    (the kernel may hand a just-released port out again), which once gave Ray's GCS and object manager
    the same port in CI.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@dataclass
class Server:
    """A running ``riffstream serve`` process."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: dict | bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict | bytes]:
        """One HTTP request; (status, parsed JSON or raw bytes)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
        all_headers.update(headers or {})
        try:
            connection.request(method, path, body=data, headers=all_headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(payload)
        return response.status, payload

    def status(self) -> dict:
        code, body = self.request("GET", "/api/status")
        assert code == 200, body
        return body

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving(cache: Path, tmp_path: Path, *args: str, prompt: str = "lofi hip hop") -> Iterator[Server]:
    """Start ``riffstream serve PROMPT`` with the tiny model; wait until it answers; stop it after."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    command = [sys.executable, "-m", "riffstream", "serve", prompt, "--port", str(port), *FAST_SERVE,
               "--cache-dir", str(cache), *args]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"riffstream serve exited: {server.stderr()}"
            assert time.monotonic() < deadline, f"riffstream serve did not start: {server.stderr()}"
            with contextlib.suppress(OSError):
                if server.status()["stream_time"] > 0:
                    break
            time.sleep(0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def read_stream(port: int, path: str, seconds: float, headers: dict[str, str] | None = None) -> bytes:
    """Bytes of an audio stream read for about ``seconds`` (from when the response starts)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    data = bytearray()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            chunk = response.read1(65536)
            if not chunk:
                break
            data += chunk
    finally:
        connection.close()
    return bytes(data)
