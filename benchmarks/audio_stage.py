"""Audio stage: riffstream's image-to-audio against Riffusion's converter, on real music.

Every recording of the corpus (18 tracks from 6 Debian packages of different kinds:
orchestral, acoustic, ambient, electronic, band; fetched at run time, none committed)
gives ``--clips-per-track`` 5.12-s excerpts spread over its length. Each becomes a
spectrogram image with ``audio_to_image``; both converters turn the image back into
audio, and both are scored in one run:

- seconds per clip (targets: riffstream at most 0.5 s, and at least 15x faster);
- spectral convergence against the original, scale-invariant, below 10 kHz, on an
  independent 4096/512 STFT (targets: riffstream at least 3 dB better on average, and
  no clip worse than Riffusion's).

Every clip's figures are printed, then the mean, the worst clip by name, and the mean
per kind of music.

Usage: python benchmarks/audio_stage.py [--clips-per-track N] [--threads N]
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from riffstream import SpectrogramParams, audio_to_image  # noqa: E402
from riffstream.phase import reconstruct  # noqa: E402
from riffstream.spectrogram import mel_from_image  # noqa: E402
from machine import machine  # noqa: E402
from tests.fidelity import spectral_convergence_db  # noqa: E402
from tests.realmusic import corpus_excerpts  # noqa: E402
from tests.reference import reference_audio_from_mel  # noqa: E402

CLIP_SECONDS = 5.12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-track", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both converters")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SpectrogramParams()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    clips = [(label, track.kind, audio, mel_from_image(audio_to_image(audio, params.sample_rate, params), params))
             for label, track, audio in corpus_excerpts(CLIP_SECONDS, args.clips_per_track, params.sample_rate)]
    reconstruct(clips[0][3], params)  # warm the caches

    # Two passes, riffstream's first: torch's worker threads keep spinning for a while after
    # each reference call, and would steal a core from the next call timed right after it.
    rows = []
    for label, kind, audio, mel in clips:
        start = time.perf_counter()
        ours = reconstruct(mel, params)
        rows.append({"clip": label, "kind": kind, "ours_s": time.perf_counter() - start, "iterations": ours.iterations,
                     "ours_sc_db": spectral_convergence_db(audio, ours.audio[0])})
    for row, (label, kind, audio, mel) in zip(rows, clips):
        start = time.perf_counter()
        reference = reference_audio_from_mel(mel, params)[0]
        row["reference_s"] = time.perf_counter() - start
        row["reference_sc_db"] = spectral_convergence_db(audio, reference)
        row["gain_db"] = row["reference_sc_db"] - row["ours_sc_db"]
        print(f"{label[:58]:>58} {kind:>10}  riffstream {row['ours_s']:5.2f} s ({row['iterations']:2d} it) "
              f"{row['ours_sc_db']:7.2f} dB   riffusion {row['reference_s']:5.2f} s {row['reference_sc_db']:7.2f} dB"
              f"   gain {row['gain_db']:+6.2f} dB", flush=True)

    def mean(key: str, subset: list[dict] = rows) -> float:
        return float(np.mean([row[key] for row in subset]))

    worst = min(rows, key=lambda row: row["gain_db"])
    summary = {
        "benchmark": "audio_stage",
        "clips": len(rows),
        "tracks": len({row["clip"].split("@")[0] for row in rows}),
        "packages": len({row["clip"].split(":")[0] for row in rows}),
        "clip_seconds": CLIP_SECONDS,
        "riffstream_s_per_clip": round(mean("ours_s"), 3),
        "riffstream_worst_s_per_clip": round(max(row["ours_s"] for row in rows), 3),
        "riffstream_iterations_mean": round(mean("iterations"), 1),
        "riffusion_s_per_clip": round(mean("reference_s"), 3),
        "speedup": round(mean("reference_s") / mean("ours_s"), 1),
        "riffstream_sc_db": round(mean("ours_sc_db"), 2),
        "riffusion_sc_db": round(mean("reference_sc_db"), 2),
        "sc_gain_db": round(mean("gain_db"), 2),
        "worst_clip_sc_gain_db": round(worst["gain_db"], 2),
        "worst_clip": worst["clip"],
        "clips_worse_than_riffusion": sum(row["gain_db"] < 0 for row in rows),
        "sc_gain_db_by_kind": {kind: round(mean("gain_db", [row for row in rows if row["kind"] == kind]), 2)
                               for kind in sorted({row["kind"] for row in rows})},
        "targets": {"sc_gain_db": 3.0, "worst_clip_sc_gain_db": 0.0, "s_per_clip": 0.5, "speedup": 15.0},
    }
    summary.update(info)
    print(
        f"\nriffstream {summary['riffstream_s_per_clip']:.3f} s/clip, {summary['riffstream_sc_db']:.2f} dB; "
        f"riffusion {summary['riffusion_s_per_clip']:.3f} s/clip, {summary['riffusion_sc_db']:.2f} dB; "
        f"{summary['speedup']}x faster, {summary['sc_gain_db']:.2f} dB better on average; worst clip "
        f"{worst['clip']} {worst['gain_db']:+.2f} dB"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
