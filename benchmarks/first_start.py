"""A new user's first and second start, on the full-size SD 1.5 architecture in Riffusion's published layout.

The random-weight full-size checkpoint (``benchmarks/model_step.py`` builds it) is laid out
as ``riffusion/riffusion-model-v1`` is published (``.bin`` weights, safety checker named,
a ``.ckpt`` and a traced UNet beside them) and served by the stand-in Hub on 127.0.0.1.
``riffstream download`` then runs as a user's would, through the real ``huggingface_hub``
client: it fetches only what the pipeline runs and exports once. A second start, with the
Hub unreachable, loads from the caches and renders one clip.

Loopback download speed says nothing about a user's network; the export and the start-up
times are what this measures. Prints the figures, then one JSON line.

    .venv/bin/python benchmarks/first_start.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

REPO = "riffusion/riffusion-model-v1"
def timed_lines(command: list[str], env: dict) -> tuple[int, list[tuple[float, str]], float]:
    """Run ``command``; return its exit status, its stderr lines with the seconds since start, and its wall time."""
    began = time.monotonic()
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = [(time.monotonic() - began, line.rstrip()) for line in process.stderr]
    return process.wait(), lines, time.monotonic() - began


def first_time(lines: list[tuple[float, str]], needle: str) -> float:
    return next(t for t, line in lines if needle in line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the benchmark's checkpoint is kept")
    args = parser.parse_args()

    from machine import machine
    from model_step import source_folder

    from riffstream.model import default_cache_dir
    from tests.standin_hub import StandInHub

    bench = (args.cache_dir or default_cache_dir()).expanduser() / "bench"
    began = time.monotonic()
    published = source_folder(bench)
    (published / "unet_traced").mkdir(exist_ok=True)
    for extra, size in (("riffusion-model-v1.ckpt", 1 << 20), ("unet_traced/unet_traced.pt", 1 << 20)):
        if not (published / extra).exists():
            (published / extra).write_bytes(os.urandom(size))
    print(f"full-size checkpoint ready in {time.monotonic() - began:.0f} s: {published}", file=sys.stderr)

    with tempfile.TemporaryDirectory(dir=bench) as tmp, StandInHub() as hub:
        hub.add_repo(REPO, published)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=f"{tmp}/hf", RIFFSTREAM_CACHE=f"{tmp}/cache")
        riffstream = [sys.executable, "-m", "riffstream"]

        code, lines, first_s = timed_lines([*riffstream, "download", "--no-progress"], env)
        export_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        if code:
            sys.exit("\n".join(line for _, line in lines))
        for t, line in lines:
            print(f"{t:7.1f} s  {line}", file=sys.stderr)
        fetched = sorted(hub.files_requested(REPO))
        sizes = {name: (published / name).stat().st_size for name in fetched}
        download_s = first_time(lines, "exporting to OpenVINO") - first_time(lines, "downloading")
        export_s = first_time(lines, "cached the OpenVINO export") - first_time(lines, "exporting to OpenVINO")

        served = len(hub.requests)
        offline = dict(env, HF_ENDPOINT="http://127.0.0.1:9")
        code, lines, second_s = timed_lines(
            [*riffstream, "lofi hip hop", "--duration", "5", "--steps", "1", "--seed", "1", "--no-play",
             "--out", f"{tmp}/clip.wav", "--no-progress"], offline)
        if code:
            sys.exit("\n".join(line for _, line in lines))
        ready_s = float(re.search(r"model ready in ([\d.]+) s", "\n".join(line for _, line in lines)).group(1))

    for name, size in sizes.items():
        print(f"  {size / 1e6:10.2f} MB  {name}", file=sys.stderr)
    report = {
        "model": "sd15-random (full size), Riffusion's published layout",
        **machine(),
        "files_fetched": len(fetched),
        "fetched_gb": round(sum(sizes.values()) / 1e9, 3),
        "download_s_loopback": round(download_s, 1),
        "export_s": round(export_s, 1),
        "first_start_s": round(first_s, 1),
        "export_peak_rss_gb": round(export_rss, 2),
        "offline_ready_s": ready_s,
        "offline_one_step_clip_s": round(second_s, 1),
        "offline_hub_requests": len(hub.requests) - served,
    }
    print(f"first start: {report['files_fetched']} files, {report['fetched_gb']} GB, exported in "
          f"{report['export_s']} s ({report['first_start_s']} s in all); second start offline: ready in "
          f"{ready_s} s, {report['offline_hub_requests']} Hub requests", file=sys.stderr)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
