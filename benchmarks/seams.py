"""Seams: how a stitched stream of clips compares with the music it was cut from.

Real recorded music (Debian's asc-music soundtrack, fetched at run time) is cut into
the overlapping 5.12-s windows the stream produces; each window becomes a 512-column
spectrogram image with ``audio_to_image`` and the images are stitched back into one
signal. Two stitchings are compared in one run:

- before: each clip reconstructed on its own, joined with a plain equal-power crossfade
  (what independent clips give, as in Riffusion's tools plus a crossfade);
- after: riffstream's ``ClipStitcher`` (phase continuation, correlation-aware fade).

For each it reports spectral convergence against the original (overall, within 250 ms
of a seam, and more than 1 s from any seam), spectral flux and level jumps at seams
against the rest, and, with loudness control on, per-clip loudness and true peak.
Target: seam spectral convergence within 1 dB of the interior.

Usage: python benchmarks/seams.py [--clips N] [--crossfade S]. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyloudnorm  # noqa: E402
import scipy.signal  # noqa: E402

from riffstream import SpectrogramParams  # noqa: E402
from riffstream.phase import reconstruct  # noqa: E402
from riffstream.spectrogram import mel_from_image, params_for_image  # noqa: E402
from riffstream.stitch import DEFAULT_CROSSFADE, ClipStitcher, overlap_frames, stitched_length, true_peak  # noqa: E402
from machine import machine  # noqa: E402
from tests.realmusic import TRACKS, real_music, windows_as_images  # noqa: E402

WIDTH = 512
SEAM_ZONE = 0.25
FAR = 1.0


def stitch_independently(images: list, params: SpectrogramParams, overlap: int) -> np.ndarray:
    """The baseline: clips reconstructed independently, equal-power crossfade."""
    samples = overlap * params.hop_length
    rise = np.sin(0.5 * np.pi * (np.arange(samples) + 0.5) / samples)
    out = None
    for image in images:
        audio = reconstruct(mel_from_image(image, params_for_image(image, params)), params).audio[0]
        if out is None:
            out = audio
        else:
            out[-samples:] = out[-samples:] * rise[::-1] + audio[:samples] * rise
            out = np.concatenate([out, audio[samples:]])
    return out


def seam_report(original: np.ndarray, stitched: np.ndarray, seam_centres: np.ndarray, rate: int) -> dict:
    n = min(original.size, stitched.size)
    hop, size = 512, 4096
    freqs, times, ref = scipy.signal.stft(original[:n], fs=rate, nperseg=size, noverlap=size - hop, boundary=None)
    _, _, rec = scipy.signal.stft(stitched[:n], fs=rate, nperseg=size, noverlap=size - hop, boundary=None)
    keep = freqs < 10000
    ref, rec = np.abs(ref[keep]), np.abs(rec[keep])
    gain = np.sum(ref * rec) / np.sum(rec * rec)
    error = np.sum((ref - gain * rec) ** 2, axis=0)
    power = np.sum(ref**2, axis=0)
    distance = np.min(np.abs(times[:, None] - seam_centres[None, :] / rate), axis=1)
    edges = (times > 0.2) & (times < times[-1] - 0.2)
    near, far = edges & (distance <= SEAM_ZONE), edges & (distance > FAR)

    def sc(mask: np.ndarray) -> float:
        return float(10 * np.log10(error[mask].sum() / power[mask].sum()))

    def jumps(spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_mag = np.log(spectrum + 1e-6 * spectrum.max())
        flux = np.r_[0.0, np.sqrt(np.mean(np.maximum(np.diff(log_mag, axis=1), 0) ** 2, axis=0))]
        level = 10 * np.log10(np.sum(spectrum**2, axis=0) + 1e-20)
        return flux, np.r_[0.0, np.abs(np.diff(level))]

    flux, level = jumps(rec)
    flux_ref, level_ref = jumps(ref)
    return {
        "sc_db": sc(edges), "seam_sc_db": sc(near), "interior_sc_db": sc(far),
        "seam_minus_interior_db": sc(near) - sc(far),
        "seam_flux_ratio": float(flux[near].mean() / flux[far].mean()),
        "original_flux_ratio": float(flux_ref[near].mean() / flux_ref[far].mean()),
        "seam_level_jump_db": float(level[near].mean()), "interior_level_jump_db": float(level[far].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="clips per track")
    parser.add_argument("--crossfade", type=float, default=DEFAULT_CROSSFADE)
    args = parser.parse_args()
    params = SpectrogramParams()
    overlap = overlap_frames(params, args.crossfade)
    clip_samples, overlap_samples = WIDTH * params.hop_length, overlap * params.hop_length
    total = stitched_length(clip_samples, args.clips, overlap_samples)
    seam_centres = np.array([k * (clip_samples - overlap_samples) + overlap_samples / 2
                             for k in range(1, args.clips)])
    meter = pyloudnorm.Meter(params.sample_rate)
    results: dict[str, list[dict]] = {"before": [], "after": []}
    loudness_rows = []
    for track in TRACKS:
        music = real_music(total / params.sample_rate + 0.1, 30.0, params.sample_rate, track)[:total]
        images = windows_as_images(music, params, args.clips, overlap, WIDTH)
        start = time.perf_counter()
        before = stitch_independently(images, params, overlap)
        after_stitcher = ClipStitcher(params, args.crossfade, loudness=None)
        after = np.concatenate([after_stitcher.add(image)[0] for image in images] + [after_stitcher.finish()[0]])
        elapsed = time.perf_counter() - start
        assert before.size == after.size == total
        for name, stitched in (("before", before), ("after", after)):
            row = seam_report(music, stitched, seam_centres, params.sample_rate)
            results[name].append(row)
            print(f"{track:>15} {name:>6}: overall {row['sc_db']:6.2f} dB, seams {row['seam_sc_db']:6.2f} dB, "
                  f"interior {row['interior_sc_db']:6.2f} dB, seam-interior {row['seam_minus_interior_db']:+5.2f} dB, "
                  f"flux ratio {row['seam_flux_ratio']:.2f} (original {row['original_flux_ratio']:.2f}), "
                  f"level jump {row['seam_level_jump_db']:.2f}/{row['interior_level_jump_db']:.2f} dB", flush=True)
        levelled_stitcher = ClipStitcher(params, args.crossfade)
        levelled = np.concatenate([levelled_stitcher.add(image)[0] for image in images] + [levelled_stitcher.finish()[0]])
        step = clip_samples - overlap_samples
        clip_loudness = [meter.integrated_loudness(levelled[k * step : k * step + clip_samples].astype(np.float64))
                         for k in range(args.clips)]
        loudness_rows.append({"track": track, "clip_lufs": clip_loudness,
                              "true_peak_dbtp": float(20 * np.log10(true_peak(levelled[None]).max())),
                              "original_clip_lufs_spread": float(np.ptp([meter.integrated_loudness(
                                  music[k * step : k * step + clip_samples]) for k in range(args.clips)]))})
        print(f"{track:>15} loudness: clips {np.round(clip_loudness, 2).tolist()} LUFS, true peak "
              f"{loudness_rows[-1]['true_peak_dbtp']:.2f} dBTP (stitching took {elapsed:.1f} s)", flush=True)

    def mean(name: str, key: str) -> float:
        return round(float(np.mean([row[key] for row in results[name]])), 2)

    keys = ("sc_db", "seam_sc_db", "interior_sc_db", "seam_minus_interior_db", "seam_flux_ratio",
            "original_flux_ratio", "seam_level_jump_db", "interior_level_jump_db")
    all_lufs = np.concatenate([row["clip_lufs"] for row in loudness_rows])
    summary = {
        "benchmark": "seams",
        "tracks": len(TRACKS), "clips_per_track": args.clips, "crossfade_s": args.crossfade,
        "before": {key: mean("before", key) for key in keys},
        "after": {key: mean("after", key) for key in keys},
        "loudness_target_lufs": -14.0,
        "clip_lufs_min": round(float(all_lufs.min()), 2), "clip_lufs_max": round(float(all_lufs.max()), 2),
        "max_true_peak_dbtp": round(max(row["true_peak_dbtp"] for row in loudness_rows), 2),
    }
    summary.update(machine())
    summary["target_seam_met"] = summary["after"]["seam_minus_interior_db"] <= 1.0
    summary["target_loudness_met"] = bool(np.all(np.abs(all_lufs + 14.0) <= 1.0)) and summary["max_true_peak_dbtp"] < -1.0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
