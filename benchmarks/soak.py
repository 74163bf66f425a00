"""Hours of serving: does anything grow, fail or fall behind?

Starts ``riffstream serve`` on the tiny model (recording to a file with ``--out``), and beside it
one long render to a file, then keeps listeners joining and leaving for ``--seconds``
(an hour by default): up to ``--listeners`` at once, each picking MP3 or Ogg at random,
listening 1 to 20 s and hanging up. Every ``--sample`` seconds it reads the server's resident
memory (/proc) and ``/api/status``.

Reports the server's resident memory at the start (after a warm-up) and the end, its slope over
the run (least squares, MB per hour), listener errors (refused, cut off, no audio), the stream's
loops and real-time factor, and whether the long render and the recording ended whole. Ends with one
JSON line. A benchmark, not a test: run it on an idle machine.

    .venv/bin/python benchmarks/soak.py --seconds 3600
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import machine  # noqa: E402
from benchmarks.serve import log, status  # noqa: E402
from tests.serving import free_port  # noqa: E402

WARM_UP = 20.0


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Listeners:
    """Listeners joining and leaving on their own threads; counts what went wrong."""

    def __init__(self, port: int, most: int, chance: random.Random) -> None:
        self.port, self.most, self.chance = port, most, chance
        self.lock = threading.Lock()
        self.active = 0
        self.served = {"mp3": 0, "ogg": 0}
        self.errors: list[str] = []

    def listen(self, kind: str, seconds: float) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(f"GET /stream.{kind} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
                received, ends = 0, time.monotonic() + seconds
                head = b""
                while time.monotonic() < ends:
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("the server hung up")
                    if not head:
                        head = data[:16]
                        if not head.startswith(b"HTTP/1.1 200"):
                            raise ConnectionError(f"answered {head!r}")
                    received += len(data)
                if received < 1000 * seconds:  # 128 kbit/s MP3 or Opus: far more than 1 KB a second
                    raise ConnectionError(f"{received} bytes in {seconds:.1f} s")
            with self.lock:
                self.served[kind] += 1
        except OSError as error:
            with self.lock:
                self.errors.append(f"{kind}: {error}")
        finally:
            with self.lock:
                self.active -= 1

    def churn(self, until: float) -> None:
        """Start listeners at random moments until ``until``, never more than ``most`` at once."""
        while time.monotonic() < until:
            with self.lock:
                room = self.active < self.most
                if room:
                    self.active += 1
            if room:
                kind = self.chance.choice(["mp3", "ogg"])
                threading.Thread(target=self.listen, args=(kind, self.chance.uniform(1, 20)), daemon=True).start()
            time.sleep(self.chance.uniform(0.05, 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0)
    parser.add_argument("--listeners", type=int, default=20, help="most at once")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    args = parser.parse_args()
    info = machine()
    log(f"machine: {info}")
    folder = Path(tempfile.mkdtemp(prefix="riffstream-soak-"))
    port = free_port()
    riffstream = [sys.executable, "-m", "riffstream"]
    server = subprocess.Popen(
        [*riffstream, "serve", "lofi hip hop", "--model", "tiny", "--port", str(port), "--seed", "1", "--no-progress",
         "--max-listeners", str(args.listeners + 5), "--out", str(folder / "recording.flac")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    render_seconds = max(10.0, args.seconds * 0.5)  # at the tiny model's pace it ends well within the run
    render = subprocess.Popen(
        [*riffstream, "ambient drone", "--model", "tiny", "--duration", f"{render_seconds:.0f}", "--no-play",
         "--no-progress", "--seed", "2", "--threads", "1", "--out", str(folder / "render.flac")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if status(port)["stream_time"] > 5:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        log(f"serving; warming up for {WARM_UP:.0f} s")
        time.sleep(WARM_UP)
        first = status(port)
        began = time.monotonic()
        crowd = Listeners(port, args.listeners, random.Random(7))
        churn = threading.Thread(target=crowd.churn, args=(began + args.seconds,), daemon=True)
        churn.start()
        while time.monotonic() < began + args.seconds:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            samples.append((time.monotonic() - began, resident_mb(server.pid)))
            if len(samples) % 30 == 1:
                log(f"{samples[-1][0]:7.0f} s: {samples[-1][1]:.0f} MB resident, {crowd.active} listening, "
                    f"{sum(crowd.served.values())} served, {len(crowd.errors)} errors")
            time.sleep(args.sample)
        churn.join()
        time.sleep(21)  # the last listeners hang up
        render_out, render_err = render.communicate(timeout=3600)
        last = status(port)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
        server.wait(60)
        served_for = time.monotonic() - started
        if render.poll() is None:
            os.killpg(render.pid, signal.SIGKILL)
    server_log = server.stderr.read().decode()

    seconds = np.array([t for t, _ in samples])
    memory = np.array([m for _, m in samples])
    slope = float(np.polyfit(seconds, memory, 1)[0] * 3600) if len(samples) > 2 else 0.0
    made = last["made_seconds"] - first["made_seconds"]
    model = last["model_seconds"] - first["model_seconds"]
    recording = soundfile.info(str(folder / "recording.flac")).duration if (folder / "recording.flac").exists() else 0
    rendered = soundfile.info(str(folder / "render.flac")).duration if (folder / "render.flac").exists() else 0
    result = {
        **info, "benchmark": "soak", "model": "tiny (random weights)", "seconds": args.seconds,
        "most_listeners": args.listeners, "listeners_served": crowd.served, "listener_errors": len(crowd.errors),
        "rss_start_mb": round(float(memory[0]), 1), "rss_end_mb": round(float(memory[-1]), 1),
        "rss_max_mb": round(float(memory.max()), 1), "rss_slope_mb_per_hour": round(slope, 1),
        "loops": last["loops"] - first["loops"], "model_real_time_factor": round(made / model, 3) if model else None,
        "server_exit": server.returncode, "server_wall_s": round(served_for, 1), "made_s": last["made_seconds"],
        "stream_time_s": last["stream_time"], "recording_s": round(recording, 2),
        "render_exit": render.returncode, "render_s": round(rendered, 2), "render_expected_s": round(render_seconds, 2),
    }
    log(f"resident memory {result['rss_start_mb']} -> {result['rss_end_mb']} MB "
        f"(max {result['rss_max_mb']}, slope {result['rss_slope_mb_per_hour']} MB/h); "
        f"listeners served {crowd.served}, errors {len(crowd.errors)} {crowd.errors[:3]}; loops {result['loops']}; "
        f"model {result['model_real_time_factor']}x real time; render exit {render.returncode}, "
        f"{rendered:.1f} of {render_seconds:.0f} s; recording {recording:.1f} s; server exit {server.returncode}")
    if render.returncode:
        log(render_err.decode()[-1000:])
    if server.returncode not in (0, 130):
        log(server_log[-2000:])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
