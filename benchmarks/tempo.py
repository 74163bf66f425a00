"""Tempo lock: how well a --bpm render keeps its tempo and grid over many seams.

Each tempo is rendered through the real stream (tiny model, 512-column clips, the default
1-s crossfade) at strength 0, so every clip is exactly its starting loop: what is
measured is the grid, the per-clip loop alignment and the stitching, not the model
(the tiny model's random VAE does not keep an image, so it cannot keep a beat either).
A beat tracker (tests/beats.py: kick onsets, every second beat) then gives:

- the tempo error: the fitted tempo against the asked-for one, percent;
- the grid drift: the largest distance of a kick from the *nominal* grid through the
  first kick, ms, and its first-to-last change (an accumulating error would grow);
- the inter-onset intervals across seams: the worst distance from two beat periods, ms.

Tempi are chosen so that a bar is not a whole number of 10-ms columns (except 120), and
one (100 BPM) whose bars do not fit the crossfade, so clips start whole beats apart.

Usage: python benchmarks/tempo.py [--minutes M] [--bpm 93 100 120 137 174]. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from machine import machine  # noqa: E402
from riffstream.model import ModelOptions, RiffusionModel  # noqa: E402
from riffstream.sinks import AudioFileWriter  # noqa: E402
from riffstream.stream import Stream, StreamOptions  # noqa: E402
from riffstream.tempo import ClipLayout  # noqa: E402
from tests.beats import fit_beats  # noqa: E402

WIDTH = 512


def measure(model, bpm: float, minutes: float, folder: Path) -> dict:
    """Render ``minutes`` at ``bpm`` and measure its beat."""
    options = StreamOptions(prompts=("drums",), seed=1, steps=2, bpm=bpm, strength=0.0, duration=minutes * 60)
    path = folder / f"tempo-{bpm:g}.wav"
    began = time.monotonic()
    with AudioFileWriter(path, 44100, 1) as writer:
        stream = Stream(model, options, [writer])
        stream.run()
    seconds = time.monotonic() - began
    audio, rate = soundfile.read(path)
    fit = fit_beats(audio, rate, bpm)
    drift = fit.drift(bpm)
    layout = ClipLayout(stream.params, WIDTH, stream.overlap_columns, lambda _: bpm)
    slots = [layout.slot(n) for n in range(stream.total_clips)]
    seams = [(layout.seconds(b.start), layout.seconds(a.start + WIDTH)) for a, b in zip(slots, slots[1:])]
    two_beats = 120.0 / bpm
    across = [later - earlier for earlier, later in zip(fit.onsets, fit.onsets[1:])
              if any(earlier < end and later > start for start, end in seams)]
    overlaps = sorted({WIDTH - slot.advance for slot in slots[:-1]})
    result = {
        "bpm": bpm, "seconds": round(len(audio) / rate, 2), "clips": stream.total_clips, "seams": len(seams),
        "beats_per_clip": round(slots[0].advance / (6000.0 / bpm)), "overlap_columns": overlaps,
        "measured_bpm": round(fit.bpm, 4), "tempo_error_percent": round(100 * abs(fit.bpm / bpm - 1), 4),
        "kicks": len(fit.onsets), "worst_from_fit_ms": round(fit.worst * 1000, 2),
        "worst_drift_ms": round(float(np.max(np.abs(drift))) * 1000, 2),
        "drift_first_to_last_ms": round(float(drift[-1] - drift[0]) * 1000, 2),
        "ioi_across_seams": len(across),
        "worst_ioi_across_seam_ms": round(float(np.max(np.abs(np.array(across) - two_beats))) * 1000, 2),
        "render_seconds": round(seconds, 1),
    }
    print(f"{bpm:6g} BPM: {result['seconds']:.0f} s, {len(seams)} seams, {result['beats_per_clip']} beats a clip, "
          f"overlaps {overlaps} columns; measured {fit.bpm:.3f} BPM ({result['tempo_error_percent']:.4f}% off), "
          f"drift worst {result['worst_drift_ms']} ms (first to last {result['drift_first_to_last_ms']} ms), "
          f"IOI across seams worst {result['worst_ioi_across_seam_ms']} ms off", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="render length per tempo (default: 10)")
    parser.add_argument("--bpm", type=float, nargs="+", default=[93.0, 100.0, 120.0, 137.0, 174.0])
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    with tempfile.TemporaryDirectory() as folder:
        model = RiffusionModel.load(ModelOptions(model="tiny", width=WIDTH, cache_dir=Path(folder) / "cache",
                                                 precision="f32"), progress=False)
        results = [measure(model, bpm, args.minutes, Path(folder)) for bpm in args.bpm]
    worst = max(results, key=lambda r: r["tempo_error_percent"])
    summary = {
        "benchmark": "tempo", "model": "tiny (random weights), strength 0: the loop and grid alone",
        "minutes_per_tempo": args.minutes, "tempi": results,
        "worst_tempo_error_percent": worst["tempo_error_percent"], "worst_tempo_error_bpm": worst["bpm"],
        "worst_drift_ms": max(r["worst_drift_ms"] for r in results),
        "worst_ioi_across_seam_ms": max(r["worst_ioi_across_seam_ms"] for r in results),
        "targets": {"tempo_error_percent": 1.0, "ioi_across_seam_ms": 5.0},
        **info,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
