"""Same options, same bytes? Renders of one command in many processes, and at several thread counts.

Two questions, each answered by real ``riffstream`` processes on the tiny model:

1. **Across processes.** ``--renders`` renders of one command, each in its own process
   (``--parallel`` at a time, so they also compete for the cores as a busy machine's would):
   how many distinct sha256 of the file, and of the clips' spectrogram pictures, come out.
2. **Across thread counts.** The same command with ``--threads`` 1 and 2, in f32 and in the
   device's own precision (bf16 where the CPU has it): whether the spectrograms, and so the
   audio, differ.

``--full FOLDER`` repeats question 2 on a model folder (the full-size random-weight SD 1.5
that ``benchmarks/model_step.py`` builds), with one narrow clip. Ends with one JSON line.

    .venv/bin/python benchmarks/determinism.py --renders 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import machine


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render(folder: Path, model: str, seconds: float, width: int, *extra: str) -> tuple[str, str]:
    """One render in a fresh process: (sha256 of the file, sha256 of its spectrograms in order)."""
    out, spec = folder / "out.wav", folder / "spec"
    command = [sys.executable, "-m", "riffstream", "lofi to jazz", "--model", model, "--seed", "11",
               "--duration", str(seconds), "--width", str(width), "--no-play", "--no-progress", "--out", str(out),
               "--save-spectrograms", str(spec), "--steps", "4", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"render failed: {done.stderr[-2000:]}")
    pictures = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(spec.glob("clip-*.png")))).hexdigest()
    return _sha(out), pictures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--full", help="a model folder (full-size SD 1.5) for the thread-count question")
    args = parser.parse_args()
    started = time.monotonic()

    with tempfile.TemporaryDirectory() as scratch:
        folders = [Path(scratch) / f"r{i}" for i in range(args.renders)]
        for folder in folders:
            folder.mkdir()
        with ThreadPoolExecutor(args.parallel) as pool:
            results = list(pool.map(lambda f: render(f, "tiny", args.seconds, 512), folders))
    files = sorted({file for file, _ in results})
    pictures = sorted({picture for _, picture in results})
    print(f"{args.renders} renders in separate processes ({args.parallel} at a time): "
          f"{len(files)} distinct file sha256, {len(pictures)} distinct spectrogram sets")

    threads = {}
    models = [("tiny", "tiny", args.seconds, 512)] + ([("full", args.full, 0.64, 64)] if args.full else [])
    for name, model, seconds, width in models:
        for precision in ("f32", "auto"):
            got = {}
            for count in (1, 2):
                with tempfile.TemporaryDirectory() as scratch:
                    got[count] = render(Path(scratch), model, seconds, width, "--threads", str(count),
                                        "--precision", precision)
            same = got[1] == got[2]
            threads[f"{name}_{precision}_same_at_1_and_2_threads"] = same
            print(f"{name} model, precision {precision}: threads 1 and 2 give "
                  f"{'the same' if same else 'different'} spectrograms and audio")

    print(json.dumps({"benchmark": "determinism", **machine(), "renders": args.renders, "parallel": args.parallel,
                      "distinct_files": len(files), "distinct_spectrogram_sets": len(pictures), **threads,
                      "seconds": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main()
