"""Benchmark the model runtime on the full-size SD 1.5 architecture with random weights.

Latency does not depend on weight values, so a random-weight SD 1.5 (UNet 860M, VAE,
CLIP ViT-L text encoder) built offline stands in for Riffusion. It is saved and exported
once under the cache dir (``--cache-dir``, default ``$RIFFSTREAM_CACHE`` or the user cache);
the export takes about 6 minutes on 2 cores.

Reports, in one run: seconds per denoising step (CFG batch 2) for OpenVINO f32, int8 and
hybrid int8 and for diffusers/PyTorch eager; achieved GFLOP/s from a FLOP count of the UNet
against a measured fp32 matmul peak; text-encoder and VAE-decoder time; cold and warm
start-to-ready time; peak memory; and where the OpenVINO step spends its time
(PERF_COUNT per layer type). Ends with one JSON line.

    nohup .venv/bin/python benchmarks/model_step.py > /tmp/model_step.log 2>&1 &

Each phase runs in a fresh subprocess so start-up times and peak memory are honest.
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

import riffstream  # noqa: F401  (first: it hides a broken torchvision from diffusers)

HEIGHT = WIDTH = 512
SEED = 0


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_sd15(folder: Path) -> None:
    """Save a random-weight checkpoint with SD 1.5's exact configs to ``folder``, laid out as
    ``riffusion/riffusion-model-v1`` is published (``.bin`` weights, safety checker named)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from riffstream.model.tiny import write_byte_tokenizer, write_riffusion_layout

    vocab = write_byte_tokenizer(folder / "tokenizer")
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    )
    write_riffusion_layout(folder, unet, vae, text_encoder)


def source_folder(cache: Path) -> Path:
    from riffstream.model.store import build_atomically

    return build_atomically(cache / "sources" / "sd15-random-v2", build_sd15)


def options(cache: Path, quantization=None):
    from riffstream.model import ModelOptions

    return ModelOptions(
        model=str(cache / "sources" / "sd15-random-v2"),
        height=HEIGHT,
        width=WIDTH,
        quantization=quantization,
        cache_dir=cache,
    )


# --------------------------------------------------------------------------- phases (child processes)


def phase_prepare(cache: Path, quantization: str | None) -> dict:
    import riffstream.model.store as rm
    from riffstream.model import resolve_ir

    # Tiny calibration for the benchmark: latency does not depend on calibration quality.
    rm.CALIBRATION_PROMPTS = rm.CALIBRATION_PROMPTS[:2]
    rm.CALIBRATION_STEPS = 2
    t0 = time.perf_counter()
    source_folder(cache)
    t1 = time.perf_counter()
    resolve_ir(options(cache, quantization), progress=False)  # the runtime's: it calibrates hybrid quantisation
    return {"build_source_s": t1 - t0, "prepare_s": time.perf_counter() - t1}


def phase_load(cache: Path, t_spawn: float) -> dict:
    from riffstream.model import RiffusionModel

    RiffusionModel.load(options(cache), progress=False)
    return {"start_to_ready_s": time.time() - t_spawn, "peak_rss_gb": peak_rss_gb()}


def phase_ov(cache: Path, quantization: str | None, steps: int, profile: bool) -> dict:
    import numpy as np

    from riffstream.model import RiffusionModel, noise_for_seed

    model = RiffusionModel.load(options(cache, quantization), progress=False)
    embeds = model.encode_prompt("lofi hip hop beat, jazzy piano")
    model.encode_prompt("")
    t = time.perf_counter()
    model.encode_prompt("warm text encoder call")
    text_s = time.perf_counter() - t

    stamps = [time.perf_counter()]
    gen = model.generate(
        embeds,
        latents=noise_for_seed(SEED, model.latents_shape),
        steps=steps,
        on_step=lambda i, n: stamps.append(time.perf_counter()),
        return_latents=True,
    )
    step_times = list(np.diff(stamps))
    decode_start = stamps[-1]
    total = time.perf_counter() - decode_start

    pipe = model._pipe
    import torch

    latents = torch.from_numpy(gen.latents)
    t = time.perf_counter()
    pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
    vae_s = time.perf_counter() - t
    result = {
        "step_times_s": step_times,
        "step_s": float(np.mean(step_times[1:])) if len(step_times) > 1 else step_times[0],
        "text_encoder_s": text_s,
        "vae_decoder_s": vae_s,
        "decode_and_postprocess_s": total,
        "peak_rss_gb": peak_rss_gb(),
    }
    if profile:
        result.update(profile_unet(pipe.unet.model, embeds))
    return result


def profile_unet(model, embeds) -> dict:
    """One UNet step with PERF_COUNT on: seconds per layer type, largest first."""
    import numpy as np
    import openvino as ov

    try:
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES", "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        feed = {
            "sample": np.random.default_rng(0).standard_normal((2, 4, 64, 64), dtype=np.float32),
            "timestep": np.array(500, dtype=compiled.input("timestep").get_element_type().to_dtype()).reshape(
                [1] * compiled.input("timestep").get_partial_shape().rank.get_length()
            ),
            "encoder_hidden_states": np.repeat(embeds, 2, axis=0),
        }
        request.infer(feed)  # warm-up; the profile is of the second run
        t = time.perf_counter()
        request.infer(feed)
        by_type: dict[str, float] = {}
        for info in request.get_profiling_info():
            key = f"{info.node_type}/{info.exec_type}"
            by_type[key] = by_type.get(key, 0.0) + info.real_time.total_seconds()
        return {
            "profiled_step_s": time.perf_counter() - t,
            "profile_top": sorted(by_type.items(), key=lambda kv: -kv[1])[:12],
        }
    except Exception as e:  # profiling is diagnostics only
        return {"profile_error": repr(e)}


def phase_torch(cache: Path, repeats: int) -> dict:
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    n = 4096
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    peak = 2 * n**3 * reps / (time.perf_counter() - t) / 1e9

    unet = UNet2DConditionModel.from_pretrained(source_folder(cache) / "unet").eval()
    sample = torch.randn(2, 4, HEIGHT // 8, WIDTH // 8)
    hidden = torch.randn(2, 77, 768)
    timestep = torch.tensor(500)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        t = time.perf_counter()
        with counter:
            unet(sample, timestep, hidden)
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            unet(sample, timestep, hidden)
            times.append(time.perf_counter() - t)
    return {
        "matmul_peak_gflops": peak,
        "unet_gflop_per_step": counter.get_total_flops() / 1e9,
        "torch_step_times_s": [first, *times],
        "torch_step_s": sum(times) / len(times),
        "peak_rss_gb": peak_rss_gb(),
    }


PHASES = {"prepare", "load", "ov", "torch"}


def run_phase(args: list[str], log) -> dict:
    """Run this script as a child for one phase; it prints one JSON line last."""
    cmd = [sys.executable, __file__, *args]
    t0 = time.time()
    proc = subprocess.run(cmd + ["--t-spawn", repr(t0)], capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"phase {args} failed:\n{proc.stderr[-3000:]}")
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.time() - t0
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=3, help="timed denoising steps per variant (first is warm-up)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-quant", action="store_true")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--quantization", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t-spawn", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from riffstream.model import default_cache_dir

    cache = (args.cache_dir or default_cache_dir() / "bench").expanduser()
    quant = args.quantization or None

    if args.phase:
        result = {
            "prepare": lambda: phase_prepare(cache, quant),
            "load": lambda: phase_load(cache, args.t_spawn),
            "ov": lambda: phase_ov(cache, quant, args.steps, profile=quant is None),
            "torch": lambda: phase_torch(cache, repeats=max(1, args.steps - 1)),
        }[args.phase]()
        print(json.dumps(result))
        return

    def log(msg: str) -> None:
        print(msg, flush=True)

    common = ["--cache-dir", str(cache), "--steps", str(args.steps)]
    from machine import machine

    report: dict = {"height": HEIGHT, "width": WIDTH, "cfg_batch": 2, **machine()}

    log(f"cache: {cache}")
    prep = run_phase(["--phase", "prepare", *common], log)
    log(f"prepare f32 (build source + export if not cached): {prep}")
    report["prepare_f32"] = prep

    import shutil

    shutil.rmtree(cache / "ov_compiled", ignore_errors=True)
    cold = run_phase(["--phase", "load", *common], log)
    warm = run_phase(["--phase", "load", *common], log)
    report["cold_start_s"] = cold.get("start_to_ready_s")
    report["warm_start_s"] = warm.get("start_to_ready_s")
    log(f"start-to-ready: cold (no compiled-model cache) {report['cold_start_s']}, warm {report['warm_start_s']}")

    ov = run_phase(["--phase", "ov", *common], log)
    report["ov_f32"] = ov
    log(f"OpenVINO f32: {json.dumps(ov)}")

    if not args.skip_torch:
        pt = run_phase(["--phase", "torch", *common], log)
        report["torch"] = pt
        log(f"PyTorch eager: {json.dumps(pt)}")
        if "unet_gflop_per_step" in pt and "step_s" in ov:
            gflop = pt["unet_gflop_per_step"]
            report["ov_gflops"] = gflop / ov["step_s"]
            report["torch_gflops"] = gflop / pt["torch_step_s"]
            report["ov_fraction_of_peak"] = report["ov_gflops"] / pt["matmul_peak_gflops"]
            report["ov_speedup_vs_torch"] = pt["torch_step_s"] / ov["step_s"]
            log(
                f"UNet {gflop:.0f} GFLOP/step: OpenVINO {report['ov_gflops']:.1f} GFLOP/s "
                f"({100 * report['ov_fraction_of_peak']:.0f}% of {pt['matmul_peak_gflops']:.1f} GFLOP/s matmul peak), "
                f"PyTorch {report['torch_gflops']:.1f} GFLOP/s; OpenVINO {report['ov_speedup_vs_torch']:.2f}x faster"
            )

    if not args.skip_quant:
        for q in ("int8", "hybrid"):
            prep = run_phase(["--phase", "prepare", "--quantization", q, *common], log)
            res = run_phase(["--phase", "ov", "--quantization", q, *common], log)
            report[f"prepare_{q}"] = prep
            report[f"ov_{q}"] = res
            if "step_s" in res and "step_s" in ov:
                report[f"{q}_speedup"] = ov["step_s"] / res["step_s"]
            log(f"{q}: prepare {prep}; run {json.dumps(res)}; speedup {report.get(f'{q}_speedup')}")

    report["targets"] = {
        "ov_fraction_of_peak>=0.8": (report.get("ov_fraction_of_peak") or 0) >= 0.8,
        "warm_start_s<=15": (report.get("warm_start_s") or 1e9) <= 15,
        "hybrid_speedup>=1.5": (report.get("hybrid_speedup") or 0) >= 1.5,
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
