"""Benchmark the whole stream: model -> spectrogram -> audio -> crossfade -> file, threads overlapping.

Uses the full-size SD 1.5 architecture with random weights when ``benchmarks/model_step.py``
has built and exported it (under ``<cache>/bench``; build it here with ``--build``, about
6 minutes on 2 cores), else the tiny model (``--model tiny``). Latency does not depend on
weight values. Reports, in one run:

* time to first audio (from the start of the stream, model already loaded)
* real-time factor (seconds of audio made per second of wall time)
* the share of wall time spent outside the UNet's denoising loops (target < 5%): over the
  whole render, and in steady state (from the first denoising loop's start to the last
  one's end: how long the UNet waited for anything else, text encoding, the VAE decoder or
  the audio stage). A finite render always ends with one clip's VAE decode and audio after
  the last UNet step; an endless stream has no end.
* peak memory (RSS)

Ends with one JSON line.

    .venv/bin/python benchmarks/stream.py --steps 1 --clips 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import riffstream  # noqa: E402,F401  (first: it hides a broken torchvision from diffusers)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_taesd(folder: Path) -> None:
    """Save a random-weight AutoencoderTiny of TAESD's real size (diffusers' default config)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny().save_pretrained(folder)


def render_clips(model, clips: int, steps: int, guidance: float | None = None, width: int = 512):
    """Stream ``clips`` clips of ``width`` pixels through the real pipeline into a scratch file, morphing
    between two prompts; returns the finished :class:`riffstream.stream.Stream` and its wall time (s)."""
    from riffstream.sinks import AudioFileWriter
    from riffstream.stream import Stream, StreamOptions

    crossfade = 0.25
    duration = clips * width * 441 / 44100 - (clips - 1) * crossfade
    options = StreamOptions(prompts=("lofi hip hop", "smooth jazz"), seed=1, steps=steps, guidance=guidance,
                            duration=duration, crossfade=crossfade)
    with tempfile.TemporaryDirectory() as folder, AudioFileWriter(Path(folder) / "b.wav", 44100, 1) as writer:
        stream = Stream(model, options, [writer])
        began = time.monotonic()
        stream.run()
        return stream, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["auto", "full", "tiny"], default="auto",
                        help="auto: the full-size random model if already exported, else tiny")
    parser.add_argument("--build", action="store_true", help="build and export the full-size model if missing")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--decoder", choices=["vae", "taesd"], default="vae",
                        help="taesd: a random-weight TAESD of the real size decodes instead of the VAE")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    from riffstream.model import ModelOptions, RiffusionModel, default_cache_dir
    from riffstream.model.store import build_atomically, cache_entry, is_complete

    cache = (args.cache_dir or default_cache_dir()).expanduser()
    bench = cache / "bench"
    source = bench / "sources" / "sd15-random-v2"
    full_ready = is_complete(cache_entry(bench, source.name, f"dir:{source.resolve()}", None))
    use_full = args.model == "full" or (args.model == "auto" and (full_ready or args.build))
    if use_full:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from model_step import source_folder

        source_folder(bench)
        decoder = str(build_atomically(bench / "sources" / "taesd-random-v1", build_taesd)) \
            if args.decoder == "taesd" else "vae"
        options = ModelOptions(model=str(source), width=args.width, cache_dir=bench, decoder=decoder)
        name = "sd15-random (full size)"
    else:
        options = ModelOptions(model="tiny", width=args.width, cache_dir=cache, decoder=args.decoder)
        name = "tiny (random weights; noise)"

    began = time.monotonic()
    model = RiffusionModel.load(options, progress=True)
    load_s = time.monotonic() - began
    print(f"model {name}: ready in {load_s:.1f} s", file=sys.stderr)

    stream, wall = render_clips(model, args.clips, args.steps, width=args.width)
    stats = stream.stats
    outside = max(0.0, wall - stats.denoise_seconds) / wall
    first, last = stats.denoise_span
    steady = max(0.0, (last - first) - stats.denoise_seconds) / (last - first)
    from machine import machine

    report = {
        **machine(),
        "model": name,
        "decoder": args.decoder,
        "steps": args.steps,
        "clips": stats.clips,
        "clip_width": args.width,
        "audio_s": round(stats.audio_seconds, 3),
        "wall_s": round(wall, 2),
        "load_s": round(load_s, 2),
        "time_to_first_audio_s": round(stats.first_audio or float("nan"), 2),
        "real_time_factor": round(stats.audio_seconds / wall, 4),
        "unet_s": round(stats.denoise_seconds, 2),
        "vae_decode_s": round(stats.decode_seconds, 2),
        "outside_unet_share": round(outside, 4),
        "outside_unet_share_steady": round(steady, 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }
    print(f"{report['audio_s']} s of audio in {report['wall_s']} s: {report['real_time_factor']}x real time; "
          f"first audio after {report['time_to_first_audio_s']} s; {100 * outside:.1f}% of wall time outside the UNet "
          f"({100 * steady:.1f}% in steady state); "
          f"peak RSS {report['peak_rss_gb']} GB", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
