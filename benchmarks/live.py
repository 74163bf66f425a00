"""Benchmark the presets on the full-size SD 1.5 architecture (random weights): how live is live here?

In one run, on this machine's CPU, each configuration streams clips through the real
pipeline (model -> spectrogram -> audio -> crossfade -> file) in a child process of its own:

* the live preset (a LoRA of LCM-LoRA's shape fused before export, LCM scheduler, no
  guidance, TAESD) at 4, 2 and 1 steps, in bf16 (where the CPU has it) and in f32;
* the quality preset (20 DPM-Solver++ steps, guidance 7, the VAE), one clip in each precision;
* a 5-clip render in the quality preset at 4 steps, for its peak resident memory (the peak
  does not depend on the step count: it is the VAE's decode beside the loaded model).

For each it reports the real-time factor (seconds of audio per second), the time to first
audio (from the stream's start, and from the start of the model's load: the load warms the
UNet up), the peak resident memory and that at the end, and the physical bound: the clip's FLOPs (UNet runs plus the
decoder, counted with attention, FACTS.md) over the matmul peak measured in this run at the
same precision (the best of OpenVINO's and PyTorch's 4096x4096 matmul). Latency does not
depend on weight values, so random weights time exactly what the published ones would;
the LoRA's values do not matter either, since it is fused into the UNet's own weights.

    .venv/bin/python benchmarks/live.py            # about 25 minutes on 2 cores
    .venv/bin/python benchmarks/live.py --quick    # live preset only, bf16 or f32 as auto picks
    .venv/bin/python benchmarks/live.py --emulate-avx2   # the live preset in f32, kernels capped at AVX2
    .venv/bin/python benchmarks/live.py --play 60 # live play at a real clock's pace, with and without polish

``--play SECONDS`` plays the default live preset for that long at a real clock's pace
(no sound card: the clock the server uses), twice: as riffstream plays, where a clip made
while less than a clip of audio is buffered is held to Griffin-Lim's base iterations, and
with every clip polished (the extension up to 48 iterations always allowed). It reports
the audio made and heard, the loops of the last clip, and the time to first audio.

``--emulate-avx2`` estimates an AVX2-only machine on an AVX-512 one: every child runs with
oneDNN, OpenVINO's own kernels, MKL, PyTorch and Numba capped at AVX2, and the run checks
which kernels OpenVINO picked. It is an upper bound, not a measurement of such a machine:
the clock, caches and memory are this machine's, and OpenVINO's MLAS matmuls (the UNet's
linear layers, about 29% of its FLOPs) dispatch on their own and may still use AVX-512.

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import riffstream  # noqa: E402,F401  (first: it hides a broken torchvision from diffusers)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

UNET_GFLOP_BATCH1 = 803.0
DECODER_GFLOP = {"taesd": 140.0, "vae": 2500.0}
LCM_LORA_RANK = 64
"""LCM-LoRA for SD 1.5 is rank 64 over the attention projections and ResNet convolutions (about 67 M parameters)."""
CLIPS = 5
MEMORY_STEPS = 4
MEMORY_TARGET_GB = {"bf16": 3.7, "f32": 5.8}
"""Peak resident memory of a 5-clip render: the weights' size plus 1.5 GB (issue 12)."""
TARGETS = {  # real-time factor, by machine kind and configuration (issue 12)
    "bf16": {"live-4": 0.4, "live-2": 0.7, "live-1": 1.0},
    "f32": {"live-4": 0.1, "live-2": 0.18, "live-1": 0.3},
}


def build_lora(folder: Path) -> None:
    """A random LoRA of LCM-LoRA's shape for the full-size SD 1.5 UNet."""
    from diffusers import UNet2DConditionModel

    from riffstream.model.tiny import write_random_lora

    write_random_lora(folder, UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                      seed=7, rank=LCM_LORA_RANK)


def parts(cache: Path) -> tuple[Path, Path, Path]:
    """The full-size random checkpoint, LoRA and TAESD, built once under ``cache``."""
    from model_step import source_folder
    from stream import build_taesd

    from riffstream.model.store import build_atomically

    return (source_folder(cache), build_atomically(cache / "sources" / "lcm-lora-random-v1", build_lora),
            build_atomically(cache / "sources" / "taesd-random-v1", build_taesd))


def options_for(cache: Path, preset: str, precision: str):
    from riffstream.model import ModelOptions
    from riffstream.model.options import PRESETS, LoraSpec

    source, lora, taesd = parts(cache)
    chosen = PRESETS[preset]
    return ModelOptions(model=str(source), cache_dir=cache, precision=precision, scheduler=chosen.scheduler,
                        decoder=str(taesd) if chosen.decoder == "taesd" else "vae",
                        loras=(LoraSpec(str(lora)),) if chosen.loras else ())


# --------------------------------------------------------------------------- child phases


def phase_prepare(cache: Path) -> dict:
    """Build the parts and export both presets' models (cached: seconds when done before)."""
    from riffstream.model import resolve_decoder, resolve_ir

    began = time.monotonic()
    parts(cache)
    built = time.monotonic()
    resolve_ir(options_for(cache, "quality", "f32"), progress=False)
    quality = time.monotonic()
    live = options_for(cache, "live", "f32")
    resolve_ir(live, progress=False)
    resolve_decoder(live, progress=False)
    return {"build_s": round(built - began, 1), "export_quality_s": round(quality - built, 1),
            "export_live_s": round(time.monotonic() - quality, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}


#: What ``--emulate-avx2`` sets in each child's environment: every library's own ISA cap.
AVX2_CAPS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2", "NUMBA_CPU_NAME": "haswell"}


def phase_isa() -> dict:
    """Which kernels OpenVINO and PyTorch pick here: a convolution, a matmul and a softmax."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    rng = np.random.default_rng(0)
    image, tokens = ops.parameter([1, 64, 32, 32], np.float32), ops.parameter([1, 256, 64], np.float32)
    conv = ops.convolution(image, ops.constant(rng.standard_normal((64, 64, 3, 3), dtype=np.float32)),
                           [1, 1], [1, 1], [1, 1], [1, 1])
    attention = ops.softmax(ops.matmul(tokens, ops.constant(rng.standard_normal((64, 256), dtype=np.float32)),
                                       False, False), 2)
    compiled = ov.Core().compile_model(ov.Model([conv, attention], [image, tokens]), "CPU",
                                       {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    request.infer([np.ones((1, 64, 32, 32), np.float32), np.ones((1, 256, 64), np.float32)])
    kernels = {p.node_type: p.exec_type for p in request.get_profiling_info()
               if p.node_type in ("Convolution", "FullyConnected", "MatMul", "Softmax")}
    return {"openvino": kernels, "torch": torch.backends.cpu.get_cpu_capability()}


def phase_peak(precision: str) -> dict:
    """The best 4096x4096 matmul rate (GFLOP/s) at ``precision``, through OpenVINO and through PyTorch."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    n = 4096
    rates = {}
    weights = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    x = ops.parameter([n, n], np.float32)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, ops.constant(weights), False, False)], [x]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
    request, data = compiled.create_infer_request(), np.ones((n, n), np.float32)
    rates["openvino"] = _rate(lambda: request.infer([data]), n)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    rates["torch"] = _rate(lambda: torch.matmul(a, b), n)
    return {"matmul_gflops": {k: round(v, 1) for k, v in rates.items()}, "peak_gflops": round(max(rates.values()), 1)}


def _rate(run, n: int, repeats: int = 6) -> float:
    for _ in range(2):
        run()
    began = time.perf_counter()
    for _ in range(repeats):
        run()
    return 2 * n**3 * repeats / (time.perf_counter() - began) / 1e9


def phase_stream(cache: Path, preset: str, precision: str, steps: int, clips: int) -> dict:
    """Load the preset's model and stream ``clips`` clips through the real pipeline into a file."""
    from stream import render_clips

    from riffstream.model import RiffusionModel
    from riffstream.model.options import PRESETS

    options = options_for(cache, preset, precision)
    began = time.monotonic()
    model = RiffusionModel.load(options, progress=False)
    load_s = time.monotonic() - began
    rss_loaded = _rss_now_gb()
    stream, wall = render_clips(model, clips, steps, guidance=PRESETS[preset].guidance)
    stats = stream.stats
    return {"precision": model.precision, "load_s": round(load_s, 1), "clips": stats.clips,
            "audio_s": round(stats.audio_seconds, 2), "wall_s": round(wall, 1),
            "real_time_factor": round(stats.audio_seconds / wall, 4),
            "time_to_first_audio_s": round(stats.first_audio or float("nan"), 1),
            "load_and_first_audio_s": round(load_s + (stats.first_audio or float("nan")), 1),
            "unet_s": round(stats.denoise_seconds, 1), "decode_s": round(stats.decode_seconds, 1),
            "rss_after_load_gb": rss_loaded, "rss_at_end_gb": _rss_now_gb(),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)}


def phase_play(cache: Path, precision: str, steps: int, seconds: float, polish: str) -> dict:
    """Live play of the live preset for ``seconds`` at a real clock's pace; ``polish="always"``
    lets every clip take Griffin-Lim's extension, as a render does."""
    from riffstream.model import RiffusionModel
    from riffstream.stream import RealTimeClock, Stream, StreamOptions
    from riffstream.stream.consumer import Consumer

    if polish == "always":
        Consumer.can_polish = lambda self: True  # the comparison this benchmark makes, not an option
    model = RiffusionModel.load(options_for(cache, "live", precision), progress=False)
    stream = Stream(model, StreamOptions(prompts=("lofi hip hop", "smooth jazz"), seed=1, steps=steps, guidance=1.0),
                    clock_factory=lambda ring: RealTimeClock(ring, 44100, []))
    stream.start()
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        stream.poll()
        time.sleep(0.1)
    stats, heard = stream.stats, stream.clock.stream_seconds
    stream.stop()
    return {"precision": model.precision, "steps": steps, "seconds": seconds, "clips": stats.clips,
            "made_s": round(stats.audio_seconds, 1), "heard_s": round(heard, 1), "loops": stats.loops,
            "unpolished_clips": stats.unpolished, "time_to_first_audio_s": round(stats.first_audio or float("nan"), 1),
            "made_per_second": round(stats.audio_seconds / seconds, 3)}


def _rss_now_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024**2, 2)
    return float("nan")


# --------------------------------------------------------------------------- parent


def run_child(args: list[str], log, env: dict | None = None) -> dict:
    began = time.time()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        log(f"{args} failed:\n{proc.stderr[-2000:]}")
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["child_wall_s"] = round(time.time() - began, 1)
    return result


def bound_rtf(result: dict, steps: int, cfg: bool, decoder: str, peak_gflops: float) -> float:
    """The real-time factor this clip could reach if every FLOP ran at the measured matmul peak."""
    gflop = steps * UNET_GFLOP_BATCH1 * (2 if cfg else 1) + DECODER_GFLOP[decoder]
    audio_per_clip = result["audio_s"] / result["clips"]
    return audio_per_clip / (gflop / peak_gflops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--clips", type=int, default=CLIPS, help="clips per live configuration (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="the live preset only, at auto precision")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="the live preset in f32 with every library capped at AVX2: an AVX2-only machine's upper bound")
    parser.add_argument("--play", type=float, metavar="SECONDS",
                        help="live play of the default live preset at a real clock's pace, with and without polish")
    parser.add_argument("--phase", choices=["prepare", "peak", "stream", "isa", "play"], help=argparse.SUPPRESS)
    parser.add_argument("--polish", default="as-played", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="live", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    from riffstream.model import default_cache_dir

    cache = (args.cache_dir or default_cache_dir() / "bench").expanduser()
    if args.phase == "prepare":
        print(json.dumps(phase_prepare(cache)))
        return
    if args.phase == "peak":
        print(json.dumps(phase_peak(args.precision)))
        return
    if args.phase == "isa":
        print(json.dumps(phase_isa()))
        return
    if args.phase == "play":
        print(json.dumps(phase_play(cache, args.precision, args.steps, args.play, args.polish)), flush=True)
        os._exit(0)  # a decode may still be running: leave without tearing the model stack down under it
    if args.phase == "stream":
        print(json.dumps(phase_stream(cache, args.preset, args.precision, args.steps, args.clips)))
        return

    from machine import machine

    from riffstream.model.runtime import cpu_has_bf16

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    info = machine()
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    prepared = run_child(["--phase", "prepare", "--cache-dir", str(cache)], log)
    log(f"prepare (build, export both presets; cached after the first run): {prepared}")
    if args.play:
        precision = "bf16" if cpu_has_bf16() else "f32"
        played = {polish: run_child(["--phase", "play", "--cache-dir", str(cache), "--precision", precision,
                                     "--steps", str(args.steps), "--play", str(args.play), "--polish", polish], log)
                  for polish in ("as-played", "always")}
        for polish, result in played.items():
            log(f"live play, {polish}: {result}")
        print(json.dumps({**info, "model": "sd15-random (full size), LoRA of LCM-LoRA's shape fused",
                          "live_play": played}))
        return
    precisions = (["bf16"] if cpu_has_bf16() else []) + ["f32"]
    if args.quick:
        precisions = precisions[:1]
    caps = AVX2_CAPS if args.emulate_avx2 else None
    isa = run_child(["--phase", "isa"], log, caps)
    log(f"kernels picked{' under the AVX2 caps' if caps else ''}: {isa}")
    if caps:
        precisions = ["f32"]  # AVX2 has no bf16
    peaks = {p: run_child(["--phase", "peak", "--precision", p], log, caps) for p in precisions}
    for precision, peak in peaks.items():
        log(f"matmul peak, {precision}: {peak}")
    configs = [("live", steps) for steps in (4, 2, 1)] + ([] if args.quick or caps else [("quality", 20)])
    results: dict = {}
    for precision in precisions:
        for preset, steps in configs:
            name = f"{preset}-{steps}"
            clips = 1 if preset == "quality" else args.clips
            result = run_child(["--phase", "stream", "--cache-dir", str(cache), "--preset", preset, "--precision",
                                precision, "--steps", str(steps), "--clips", str(clips)], log, caps)
            if "error" not in result:
                cfg, decoder = preset == "quality", "vae" if preset == "quality" else "taesd"
                bound = bound_rtf(result, steps, cfg, decoder, peaks[precision].get("peak_gflops", float("nan")))
                result["bound_rtf"] = round(bound, 4)
                result["share_of_bound"] = round(result["real_time_factor"] / bound, 3)
                target = TARGETS[precision].get(name)
                if target is not None:
                    result["target_rtf"] = target
            results[f"{name}-{precision}"] = result
            log(f"{name} steps, {precision}: {result}")
        if not (args.quick or caps):
            result = run_child(["--phase", "stream", "--cache-dir", str(cache), "--preset", "quality", "--precision",
                                precision, "--steps", str(MEMORY_STEPS), "--clips", str(CLIPS)], log)
            if "error" not in result:
                result["target_peak_rss_gb"] = MEMORY_TARGET_GB[precision]
            results[f"quality-memory-{precision}"] = result
            log(f"{CLIPS}-clip quality render at {MEMORY_STEPS} steps, {precision}: {result}")

    log("\n| configuration | precision | real-time factor | bound | share of bound | first audio (with load) "
        "| peak RSS |")
    log("| --- | --- | --- | --- | --- | --- | --- |")
    for key, r in results.items():
        if "error" in r:
            log(f"| {key} | | error: {r['error']} | | | | |")
            continue
        name, precision = key.rsplit("-", 1)
        if name == "quality-memory":
            log(f"| {CLIPS}-clip quality render | {precision} | {r['real_time_factor']:.3f} | | | | "
                f"{r['peak_rss_gb']} GB (target {r['target_peak_rss_gb']}) |")
            continue
        log(f"| {name} | {precision} | {r['real_time_factor']:.3f} | {r['bound_rtf']:.3f} | "
            f"{100 * r['share_of_bound']:.0f}% | {r['time_to_first_audio_s']} s ({r['load_and_first_audio_s']} s) | "
            f"{r['peak_rss_gb']} GB |")
    summary = {**info, "model": "sd15-random (full size), LoRA of LCM-LoRA's shape fused", "prepare": prepared,
               "emulated_isa": "AVX2" if caps else None, "kernels": isa, "matmul_peak": peaks, "results": results}
    if "quality-20-bf16" in results and "quality-20-f32" in results and "error" not in results["quality-20-bf16"]:
        summary["quality_bf16_speedup"] = round(results["quality-20-bf16"]["real_time_factor"]
                                                / results["quality-20-f32"]["real_time_factor"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
