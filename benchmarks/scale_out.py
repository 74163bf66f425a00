"""Scale-out: clips made on a local Ray cluster by 1 and 2 workers, a worker's death, and resuming a render.

Tiny model (random weights), 512-column clips, one thread per worker, on this machine's
cores (2 here). Each worker count renders the same clips through the real stream; figures:

- real-time factor (seconds of audio per second, from the first clip asked for to the
  last one stitched) per worker count, and the speed-up of 2 workers over 1;
- time to first audio (workers already loaded);
- the cost of a worker death: one worker is SIGKILLed mid-render (Ray restarts it and
  retries its clip), and the longest gap between clips is set against the usual one;
- the same death while playing at a real clock's pace (a ``RealTimeClock``, as a sound card
  would take the audio): how much silence the listener got, and how long playing waited;
- resume overhead: replaying journalled clips through the stitcher, per finished clip,
  against the time the model took to make one.

The driver, which stitches, shares the cores with the workers, as it would on a laptop.
Usage: python benchmarks/scale_out.py [--clips N] [--steps N]. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine  # noqa: E402
from riffstream.journal import Journal  # noqa: E402
from riffstream.model import ModelOptions, RiffusionModel  # noqa: E402
from riffstream.stream.raypool import RayPool  # noqa: E402
from riffstream.sinks import AudioFileWriter  # noqa: E402
from riffstream.stream import RealTimeClock, Stream, StreamOptions  # noqa: E402

WIDTH = 512


def _options(clips: int, steps: int) -> StreamOptions:
    return StreamOptions(prompts=("lofi", "jazz"), seed=3, steps=steps, duration=clips * 4.12 + 1.0)


def render(source, options: StreamOptions, out: Path, kill_after: int | None = None, pids=(), journal=None,
           finished=(), live: bool = False) -> dict:
    """Render through the stream from ``source`` (a model or a pool), played at real-time pace if ``live``;
    arrival times of clips."""
    arrivals: list[float] = []
    with AudioFileWriter(out, 44100, 1) as writer:
        clock = (lambda ring: RealTimeClock(ring, 44100, [])) if live else None
        stream = Stream(source, options, [writer], clock, journal=journal, finished=finished)

        def arrived(event) -> None:
            arrivals.append(time.monotonic())
            if kill_after is not None and len(arrivals) == kill_after:
                os.kill(pids[0], signal.SIGKILL)

        stream.subscribe(arrived)
        began = time.monotonic()
        stream.run()
        ended = time.monotonic()
    result = {"seconds": ended - began, "first": arrivals[0] - began, "arrivals": arrivals,
              "audio": stream.stats.audio_seconds, "clips": stream.total_clips}
    if live:
        result.update(silence=stream.clock.silence_frames / 44100, loops=stream.stats.loops,
                      waited=ended - began - stream.clock.stream_seconds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12, help="clips per render (default: 12)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per clip (default: 8)")
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    folder = Path(tempfile.mkdtemp())
    model_options = ModelOptions(model="tiny", width=WIDTH, threads=1, cache_dir=folder / "cache", precision="f32")
    RiffusionModel.load(model_options, progress=False)  # export once, outside the timings
    options = _options(args.clips, args.steps)
    results: dict = {}
    for workers in (1, 2):
        pool = RayPool(model_options, workers=workers)
        pids = pool.wait_ready()
        try:
            done = render(pool, options, folder / f"w{workers}.wav")
        finally:
            pool.close()
        rtf = done["audio"] / done["seconds"]
        results[workers] = {"real_time_factor": round(rtf, 3), "first_audio_s": round(done["first"], 2),
                            "seconds": round(done["seconds"], 1)}
        print(f"{workers} worker(s): {done['audio']:.1f} s of audio in {done['seconds']:.1f} s = {rtf:.3f}x real "
              f"time; first audio after {done['first']:.2f} s", flush=True)
    speedup = results[2]["real_time_factor"] / results[1]["real_time_factor"]
    print(f"2 workers / 1 worker: {speedup:.2f}x")

    pool = RayPool(model_options, workers=2)
    pids = pool.wait_ready()
    try:
        death = render(pool, options, folder / "death.wav", kill_after=3, pids=pids)
    finally:
        pool.close()
    gaps = [b - a for a, b in zip(death["arrivals"], death["arrivals"][1:])]
    usual = statistics.median(gaps)
    stall = max(gaps) - usual
    print(f"worker death: longest gap {max(gaps):.2f} s against a usual {usual:.2f} s: {stall:.2f} s of stall; "
          f"{death['clips']} clips, none lost", flush=True)

    pool = RayPool(model_options, workers=2)
    pids = pool.wait_ready()
    try:
        heard = render(pool, options, folder / "heard.wav", kill_after=3, pids=pids, live=True)
    finally:
        pool.close()
    print(f"worker death while playing: {heard['silence']:.2f} s of silence heard, playing waited "
          f"{heard['waited']:.2f} s in all (start included)", flush=True)

    model = RiffusionModel.load(model_options, progress=False)
    out = folder / "resume.wav"
    from riffstream.journal import journal_folder

    journal = Journal.start(out, {"benchmark": True})
    made = render(model, options, out, journal=journal)
    plan_clips = made["clips"]
    _, finished = Journal.resume(out, {"benchmark": True})
    replay = render(model, options, folder / "replayed.wav", finished=finished)
    per_clip = replay["seconds"] / plan_clips
    model_per_clip = made["seconds"] / plan_clips
    print(f"resume: {plan_clips} journalled clips replayed in {replay['seconds']:.2f} s = {per_clip:.3f} s a clip "
          f"(making one took {model_per_clip:.2f} s here)", flush=True)
    journal_folder(out).exists() and Journal(journal_folder(out), {}).finish()

    summary = {
        "benchmark": "scale_out", "model": "tiny (random weights), 512x512 clips", "steps": args.steps,
        "clips": plan_clips, "threads_per_worker": 1,
        "real_time_factor": {str(k): v["real_time_factor"] for k, v in results.items()},
        "speedup_2_over_1": round(speedup, 3),
        "first_audio_s": {str(k): v["first_audio_s"] for k, v in results.items()},
        "worker_death_stall_s": round(stall, 2), "usual_gap_s": round(usual, 2),
        "worker_death_playing": {"silence_s": round(heard["silence"], 2), "wait_s": round(heard["waited"], 2)},
        "resume_overhead_s_per_clip": round(per_clip, 3), "model_s_per_clip_local": round(model_per_clip, 2),
        "targets": {"speedup_2_over_1": 1.7},
        **info,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
