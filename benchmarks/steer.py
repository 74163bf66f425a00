"""Steering latency: how soon a prompt sent to a running stream is heard.

An endless stream plays at a real clock's pace (a :class:`~riffstream.stream.RealTimeClock`, as
``riffstream serve`` uses; the sound card's clock paces live play the same way). Once it plays,
the benchmark steers it ``--steers`` times, to a new prompt each time, at moments spread over
the clip grid (a fixed-seed random wait after the previous steer was heard). Per steer it
reports the seconds from ``queue_prompt`` to the first audible sample of a clip carrying the
prompt (the clock reaching the first frame of that clip's crossfade), and the underruns and
loops of the last clip while it waited. It also reports the time one clip takes to make (model
and audio stage), which bounds what a steer can achieve.

Models: ``tiny`` (the random-weight test model: noise, and faster than real time here, so the
wait is all policy) and ``full`` (the full-size SD 1.5 architecture with random weights, run
as the live preset: LCM-LoRA fused, 4 steps, TAESD, bf16 where the CPU has it; built under
``<cache>/bench`` by ``benchmarks/live.py``'s parts, several minutes the first time).
``--steer smooth`` measures Riffusion's app behaviour (wait for the transition in progress,
play out what is made), for comparison.

Targets: every steer heard within 6 s on the tiny model with 0 underruns; on the full-size live
preset, within one clip's making time plus 3 s.

    .venv/bin/python benchmarks/steer.py --model tiny --steers 6
    .venv/bin/python benchmarks/steer.py --model full --steers 4

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import riffstream  # noqa: E402,F401  (first: it hides a broken torchvision from diffusers)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = ("smooth jazz", "techno", "ambient drone", "funk bass", "church organ", "reggae", "metal riff",
           "string quartet")
#: The longest a steer is waited for before it counts as never heard.
GIVE_UP = 120.0


def load(model: str, cache: Path | None):
    """The model to steer, the stream options it plays with (the live preset's), and its name for the report.

    The tiny model is planned as ``riffstream serve --model tiny`` plans it; the full-size one takes the
    live preset's parts built with random weights."""
    from riffstream.model import RiffusionModel, default_cache_dir
    from riffstream.model.options import PRESETS
    from riffstream.session.plan import GenerationRequest, plan_generation
    from riffstream.stream import StreamOptions

    if model == "tiny":
        plan = plan_generation(GenerationRequest(prompt=("lofi hip hop",), model="tiny", seed=1, serve=True,
                                                 no_play=True, cache_dir=str(cache) if cache else None))
        options, stream, name = plan.model, plan.stream, f"tiny (random weights; noise), {plan.preset} preset"
    else:
        from live import options_for

        options = options_for((cache or default_cache_dir() / "bench").expanduser(), "live", "auto")
        live = PRESETS["live"]
        stream = StreamOptions(prompts=("lofi hip hop",), seed=1, steps=live.steps, guidance=live.guidance)
        name = "sd15-random (full size), live preset"
    return RiffusionModel.load(options, progress=True), stream, name


def steer_once(stream, prompt: str, poll: float = 0.005) -> dict:
    """Send ``prompt`` and wait until a clip carrying it is heard; the figures of that wait."""
    loops, underruns, cuts = stream.stats.loops, stream.clock.underruns, stream.stats.cuts
    sent = time.monotonic()
    stream.queue_prompt(prompt)
    while True:
        stream.poll()
        heard = stream.status().heard
        now = time.monotonic()
        if heard is not None and heard.prompt_b == prompt:
            break
        if now - sent > GIVE_UP:
            return {"prompt": prompt, "heard_after_s": None}
        time.sleep(poll)
    return {"prompt": prompt, "heard_after_s": round(now - sent, 3), "alpha": round(heard.alpha, 3),
            "underruns": stream.clock.underruns - underruns, "loops": stream.stats.loops - loops,
            "cut": stream.stats.cuts > cuts}


def run(model, options, steers: int, mode: str, seed: int) -> dict:
    """Play endlessly at real-time pace and steer ``steers`` times."""
    import dataclasses

    from riffstream.stream import RealTimeClock, Stream

    rng = random.Random(seed)
    options = dataclasses.replace(options, steer=mode)
    stream = Stream(model, options, clock_factory=lambda ring: RealTimeClock(ring, options.params.sample_rate, []))
    results, making = [], []
    stream.start()
    try:
        began = time.monotonic()
        while not stream.status().playing or stream.stats.clips < 3:
            stream.poll()
            if time.monotonic() - began > GIVE_UP:
                raise SystemExit("the stream never started playing")
            time.sleep(0.02)
        for n in range(steers):
            wait_until = time.monotonic() + rng.uniform(2.0, 6.0)
            while time.monotonic() < wait_until:
                stream.poll()
                time.sleep(0.02)
            making.append(stream.stats.last_model_seconds + stream.stats.last_audio_seconds)
            result = steer_once(stream, PROMPTS[n % len(PROMPTS)])
            results.append(result)
            print(f"steer {n + 1}: {result}", file=sys.stderr, flush=True)
        underruns = stream.clock.underruns
    finally:
        stream.stop()
    heard = [r["heard_after_s"] for r in results if r["heard_after_s"] is not None]
    return {"steer": mode, "steers": results, "heard_after_s_worst": max(heard) if len(heard) == len(results) else None,
            "heard_after_s_mean": round(sum(heard) / len(heard), 3) if heard else None,
            "clip_making_s_mean": round(sum(making) / len(making), 3),
            "clip_making_s_worst": round(max(making), 3),
            "underruns": underruns, "loops": stream.stats.loops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--steers", type=int, default=6)
    parser.add_argument("--steer", choices=["now", "smooth", "both"], default="now",
                        help="how the stream takes a steer; both: now, then smooth, in one run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the waits between steers")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    from machine import machine

    model, options, name = load(args.model, args.cache_dir)
    modes = ("now", "smooth") if args.steer == "both" else (args.steer,)
    runs = [run(model, options, args.steers, mode, args.seed) for mode in modes]
    report = {"benchmark": "steer", **machine(), "model": name, "precision": model.precision, "runs": runs}
    for result in runs:
        worst = result["heard_after_s_worst"]
        print(f"--steer {result['steer']}: worst steer heard after {worst} s, mean {result['heard_after_s_mean']} s; "
              f"a clip takes {result['clip_making_s_mean']} s to make; {result['underruns']} underruns, "
              f"{result['loops']} loops", file=sys.stderr)
    print(json.dumps(report), flush=True)
    os._exit(0)  # a decode may still be running: leave without tearing the model stack down under it


if __name__ == "__main__":
    main()
