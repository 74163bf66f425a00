"""How many listeners `riffstream serve` takes on two cores, and what they cost the generator.

Starts `riffstream serve` with the tiny model, measures the model's speed (seconds of audio
made per second the model works) with no listeners, then connects N MP3 listeners at once
from a separate process and measures again while they listen. Each listener must receive
audio at least as fast as real time (none falls behind); a late listener's wait for sound
is timed; the server's CPU time per listener comes from /proc.

    python benchmarks/serve.py [--listeners 200] [--seconds 30]

Prints its figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import machine  # noqa: E402
from tests.serving import free_port  # noqa: E402

MP3_FRAME_SECONDS = 1152 / 44100


def mp3_parser():
    """FFmpeg's MPEG audio parser: ``parse(data)`` returns the frames completed so far, one packet each."""
    return av.CodecContext.create("mp3", "r")


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as response:
        return json.load(response)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ClipLog:
    """Every clip event the server sends, with the time it arrived (a thread reading /api/events)."""

    def __init__(self, port: int) -> None:
        self.clips: list[tuple[float, dict]] = []
        self._response = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=60)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        name = None
        for raw in self._response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "clip":
                record = json.loads(line[6:])
                if not record["loop"]:
                    self.clips.append((time.monotonic(), record))

    def model_speed(self, began: float, ended: float) -> tuple[float, int]:
        """(seconds of audio per second of model time, clips) for the clips made between two times."""
        window = [record for at, record in self.clips if began <= at < ended]
        starts = sorted(record["start"] for _, record in self.clips)
        spacing = statistics.median(b - a for a, b in zip(starts, starts[1:]))
        worked = statistics.mean(record["model_s"] for record in window)
        return spacing / worked, len(window)


def measure(port: int, clips: ClipLog, seconds: float) -> tuple[float, int, float]:
    """(model speed, clips, real-time factor of the stream) over a window of ``seconds``."""
    before, began = status(port), time.monotonic()
    time.sleep(seconds)
    after, ended = status(port), time.monotonic()
    speed, count = clips.model_speed(began, ended)
    return speed, count, (after["made_seconds"] - before["made_seconds"]) / (ended - began)


async def listener(port: int, seconds: float, results: list[dict]) -> None:
    """One MP3 listener over a raw socket: how much audio it got, and how late it ever fell."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream.mp3 HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    began = time.monotonic()
    frames, parser, worst_lag = 0, mp3_parser(), 0.0
    first_audio = None
    while (elapsed := time.monotonic() - began) < seconds:
        try:
            data = await asyncio.wait_for(reader.read(65536), 2.0)
        except asyncio.TimeoutError:
            data = b""
        if not data and reader.at_eof():
            break
        frames += len(parser.parse(data)) if data else 0
        if first_audio is None and frames:
            first_audio = time.monotonic() - began
        if elapsed > 3.0:  # after the burst, what was received must keep up with the clock
            worst_lag = max(worst_lag, elapsed - frames * MP3_FRAME_SECONDS)
    writer.close()
    results.append({"audio_s": frames * MP3_FRAME_SECONDS, "listened_s": time.monotonic() - began,
                    "worst_lag_s": worst_lag, "first_audio_s": first_audio})


async def crowd(port: int, count: int, seconds: float) -> list[dict]:
    results: list[dict] = []
    await asyncio.gather(*(listener(port, seconds, results) for _ in range(count)))
    return results


async def late_listener(port: int) -> tuple[float, float]:
    """(time to the first whole MP3 frame, time to a second of audio) for a listener joining now."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream.mp3 HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    frames, parser, first = 0, mp3_parser(), None
    while frames * MP3_FRAME_SECONDS < 1.0:
        frames += len(parser.parse(await reader.read(65536)))
        if first is None and frames:
            first = time.monotonic() - began
    writer.close()
    return first, time.monotonic() - began


def crowd_process(port: int, count: int, seconds: float, out: Path) -> subprocess.Popen:
    """The listeners run in a process of their own, so the server's CPU time is its own."""
    code = ("import asyncio, json, sys; sys.path.insert(0, sys.argv[4]); from benchmarks.serve import crowd; "
            "r = asyncio.run(crowd(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))); "
            "open(sys.argv[5], 'w').write(json.dumps(r))")
    return subprocess.Popen([sys.executable, "-c", code, str(port), str(count), str(seconds),
                             str(Path(__file__).resolve().parent.parent), str(out)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listeners", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measuring window")
    args = parser.parse_args()
    info = machine()
    log(f"machine: {info}")
    port = free_port()
    cache = Path(tempfile.mkdtemp(prefix="riffstream-bench-serve-"))
    command = [sys.executable, "-m", "riffstream", "serve", "lofi hip hop", "--model", "tiny", "--port", str(port),
               "--max-listeners", str(args.listeners + 10), "--seed", "1", "--no-progress", "--cache-dir", str(cache)]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                if status(port)["stream_time"] > 5:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        clips = ClipLog(port)
        log("warming up for 10 s ...")
        time.sleep(10)

        cpu_before = cpu_seconds(server.pid)
        speed_alone, clips_alone, rtf_alone = measure(port, clips, args.seconds)
        cpu_alone = (cpu_seconds(server.pid) - cpu_before) / args.seconds
        log(f"no listeners: model speed {speed_alone:.3f}x real time over {clips_alone} clips, stream {rtf_alone:.3f}x, "
            f"server CPU {cpu_alone:.3f} s/s")

        listen_for = args.seconds + 10
        out = cache / "crowd.json"
        crowd_run = crowd_process(port, args.listeners, listen_for, out)
        time.sleep(5)  # all connected, bursts sent
        cpu_before = cpu_seconds(server.pid)
        speed_crowd, clips_crowd, rtf_crowd = measure(port, clips, args.seconds)
        cpu_crowd = (cpu_seconds(server.pid) - cpu_before) / args.seconds
        listeners_seen = sum(status(port)["listeners"].values())
        first_frame, first_second = asyncio.run(late_listener(port))
        crowd_run.wait(listen_for + 60)
        results = json.loads(out.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)

    behind = [r for r in results if r["worst_lag_s"] > 1.0 or r["audio_s"] < r["listened_s"] - 0.5]
    worst = max(results, key=lambda r: r["worst_lag_s"])
    per_listener_ms = 1000 * (cpu_crowd - cpu_alone) / max(1, args.listeners)
    ratio = speed_crowd / speed_alone
    log(f"{args.listeners} listeners ({listeners_seen} counted by the server): model speed {speed_crowd:.3f}x "
        f"over {clips_crowd} clips ({100 * (ratio - 1):+.1f}% against none), stream {rtf_crowd:.3f}x, server CPU {cpu_crowd:.3f} s/s")
    log(f"listeners behind: {len(behind)} of {len(results)}; worst lag {worst['worst_lag_s']:.3f} s; "
        f"server CPU per listener {per_listener_ms:.2f} ms/s")
    log(f"late listener: first frame after {first_frame:.3f} s, a second of audio after {first_second:.3f} s")
    summary = {
        **info, "benchmark": "serve", "model": "tiny (random weights)", "listeners": args.listeners,
        "listeners_connected": len(results), "listeners_counted": listeners_seen, "listeners_behind": len(behind),
        "worst_listener_lag_s": round(worst["worst_lag_s"], 3),
        "model_speed_alone": round(speed_alone, 4), "model_speed_with_listeners": round(speed_crowd, 4),
        "model_speed_ratio": round(ratio, 4),
        "clips_measured": [clips_alone, clips_crowd], "stream_rtf_alone": round(rtf_alone, 4),
        "stream_rtf_with_listeners": round(rtf_crowd, 4),
        "server_cpu_alone_s_per_s": round(cpu_alone, 4), "server_cpu_with_listeners_s_per_s": round(cpu_crowd, 4),
        "server_cpu_ms_per_listener_per_s": round(per_listener_ms, 3),
        "late_listener_first_frame_s": round(first_frame, 3), "late_listener_one_second_s": round(first_second, 3),
        "targets": {"listeners": 200, "model_speed_ratio_min": 0.95, "late_listener_s": 1.5},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
