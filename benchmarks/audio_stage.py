"""Audio stage: riffstream's image-to-audio against Riffusion's converter, on real music.

Each excerpt of real recorded music (three tracks of Debian's asc-music soundtrack,
fetched at run time) becomes a spectrogram image with ``audio_to_image``; both
converters turn the image back into audio, and both are scored in one run:

- seconds per 5.12-s clip (target: riffstream at most 0.5 s)
- spectral convergence against the original, scale-invariant, below 10 kHz, on an
  independent 4096/512 STFT (target: riffstream at least 2.5 dB better)

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

from riffstream import SpectrogramParams, audio_to_image, image_to_audio  # noqa: E402
from riffstream.spectrogram import mel_from_image  # noqa: E402
from machine import machine  # noqa: E402
from tests.fidelity import spectral_convergence_db  # noqa: E402
from tests.realmusic import TRACKS, real_music  # noqa: E402
from tests.reference import reference_audio_from_mel  # noqa: E402

CLIP_SECONDS = 5.12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips-per-track", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = SpectrogramParams()
    image_to_audio(audio_to_image(real_music(CLIP_SECONDS, 10.0), params.sample_rate))  # warm the caches

    clips = []
    for track in TRACKS:
        for index in range(args.clips_per_track):
            offset = 20.0 + 35.0 * index
            audio = real_music(CLIP_SECONDS, offset, params.sample_rate, track)
            clips.append((f"{track}@{offset:.0f}s", audio, audio_to_image(audio, params.sample_rate, params)))

    # Two passes, riffstream's first: torch's worker threads keep spinning for a while after
    # each reference call, and would steal a core from the next call timed right after it.
    rows = []
    for name, audio, image in clips:
        start = time.perf_counter()
        ours = image_to_audio(image, params)
        rows.append({"clip": name, "ours_s": time.perf_counter() - start,
                     "ours_sc_db": spectral_convergence_db(audio, ours)})
    for row, (name, audio, image) in zip(rows, clips):
        start = time.perf_counter()
        reference = reference_audio_from_mel(mel_from_image(image, params), params)[0]
        row["reference_s"] = time.perf_counter() - start
        row["reference_sc_db"] = spectral_convergence_db(audio, reference)
        print(
            f"{name:>22}  riffstream {row['ours_s']:5.2f} s {row['ours_sc_db']:7.2f} dB   "
            f"riffusion {row['reference_s']:5.2f} s {row['reference_sc_db']:7.2f} dB",
            flush=True,
        )

    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in rows]))

    summary = {
        "benchmark": "audio_stage",
        "clips": len(rows),
        "clip_seconds": CLIP_SECONDS,
        "riffstream_s_per_clip": round(mean("ours_s"), 3),
        "riffusion_s_per_clip": round(mean("reference_s"), 3),
        "speedup": round(mean("reference_s") / mean("ours_s"), 1),
        "riffstream_sc_db": round(mean("ours_sc_db"), 2),
        "riffusion_sc_db": round(mean("reference_sc_db"), 2),
        "sc_gain_db": round(mean("reference_sc_db") - mean("ours_sc_db"), 2),
        "worst_clip_sc_gain_db": round(min(r["reference_sc_db"] - r["ours_sc_db"] for r in rows), 2),
    }
    summary.update(machine())
    summary["target_speed_met"] = summary["riffstream_s_per_clip"] <= 0.5
    summary["target_fidelity_met"] = summary["sc_gain_db"] >= 2.5
    print(
        f"\nriffstream {summary['riffstream_s_per_clip']:.3f} s/clip, {summary['riffstream_sc_db']:.2f} dB; "
        f"riffusion {summary['riffusion_s_per_clip']:.3f} s/clip, {summary['riffusion_sc_db']:.2f} dB; "
        f"{summary['speedup']}x faster, {summary['sc_gain_db']:.2f} dB better"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
