"""Seams and level: stitched streams against the music they were cut from, and loudness.

Every figure of loudness here is libebur128's (pyebur128), measured on the output, not
the stitcher's own bookkeeping.

Part 1, excerpts. A 40-s excerpt of every corpus track (18 recordings from 6 Debian
packages, fetched at run time: orchestral, acoustic, ambient, electronic, band) is cut
into the overlapping 5.12-s windows the stream makes. Each window becomes a 512-column
spectrogram image with no EXIF (normalised on its own, as a generated clip is), and
``ClipStitcher`` joins them back, at 0.5-s and 1-s overlaps, three ways: the default
loudness, ``--loudness off``, and the contour at one constant gain that brings the whole
excerpt to the target through the same peak limiter ("static": what the default would be
with a perfectly still follower). Spectral convergence against the original over the
whole stream, within 250 ms of a seam and more than 1 s from any. Targets: the default
within 0.5 dB of off; seams within 1 dB of the interior.

Part 2, whole tracks longer than 90 s, stitched whole: integrated loudness (target: within
1 LU of the target), loudness range against the original's (within 1 LU), true peak.

Part 3, an hour of joined real music: the corpus tracks back to back at their own levels
(repeated to fill the hour), cut and stitched as above. Part 4, an hour's render of the
tiny random-weight model through the real stream (its clips' levels are arbitrary; it
makes noise, not music: only its level is measured). For both: the integrated loudness of
every 5-minute window, 10 s apart (target: within 1 LU of the target), and true peak (at
most -1 dBTP). The target is the code's default loudness unless ``--target`` names one.

Usage: python benchmarks/seams.py [--target LUFS] [--seconds 40] [--minutes 60] [--tracks N]
[--skip-whole] [--skip-hour] [--skip-render] (``--tracks 0`` leaves out part 1).
It measures the checkout it lies in: for the figures before a change, copy it into the
older checkout and run it there. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyebur128  # noqa: E402
import soundfile  # noqa: E402

import riffstream.stitch  # noqa: E402
from riffstream import SpectrogramParams  # noqa: E402
from riffstream.stitch import ClipStitcher, overlap_frames, stitched_length  # noqa: E402
from machine import machine  # noqa: E402
from tests.fidelity import seam_report  # noqa: E402
from tests.realmusic import CORPUS, real_music, track_seconds, windows_as_images  # noqa: E402

WIDTH = 512
RATE = 44100
#: The target loudness, LUFS: the code's default (-14 before it moved), or ``--target``.
TARGET_LUFS = getattr(riffstream.stitch, "DEFAULT_LOUDNESS", -14.0)
#: The code under test's peak limiter (it moved from ``stitch`` to ``loudness``).
limit_peaks = getattr(riffstream.stitch, "limit_peaks", None)
if limit_peaks is None:
    from riffstream.loudness import limit_peaks  # noqa: E402
CEILING = getattr(riffstream.stitch, "LIMITER_CEILING", -1.2)


def r128(audio: np.ndarray) -> dict:
    """EBU R128 integrated loudness, LRA and true peak of mono audio, by libebur128.

    This and ``windows_report`` call pyebur128 directly rather than ``riffstream.loudness``
    (``measure``, ``BlockMeter``, ``gated_loudness``): the benchmark must run in checkouts
    older than that module, and it checks the follower with a meter the follower does not share.
    """
    mode = (pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_LRA
            | pyebur128.MeasurementMode.MODE_TRUE_PEAK)
    state = pyebur128.R128State(1, RATE, mode)
    samples = np.ascontiguousarray(audio, dtype=np.float64)
    for start in range(0, samples.size, 60 * RATE):
        piece = samples[start : start + 60 * RATE]
        state.add_frames(piece, piece.size)
    return {"lufs": pyebur128.get_loudness_global(state), "lra": pyebur128.get_loudness_range(state),
            "true_peak_dbtp": float(20 * np.log10(pyebur128.get_true_peak(state, 0)))}


def windows_report(audio: np.ndarray, window: float = 300.0, step: float = 10.0) -> dict:
    """Integrated loudness of every ``window``-s stretch, ``step`` apart, and true peak.

    The 100-ms block energies come from one libebur128 pass (momentary loudness at every
    step); each window is gated from them as BS.1770 gates."""
    state = pyebur128.R128State(1, RATE, pyebur128.MeasurementMode.MODE_M | pyebur128.MeasurementMode.MODE_TRUE_PEAK)
    samples, hop = np.ascontiguousarray(audio, dtype=np.float64), RATE // 10
    energies = []
    for start in range(0, samples.size - hop + 1, hop):
        state.add_frames(samples[start : start + hop], hop)
        energies.append(10 ** ((pyebur128.get_loudness_momentary(state) + 0.691) / 10))
    blocks = np.array(energies[3:])  # the first three are not whole 400-ms blocks
    span, every = int(window * 10) - 3, int(step * 10)
    values = []
    for start in range(0, max(blocks.size - span, 0) + 1, every):
        part = blocks[start : start + span]
        loud = part[part > 10 ** ((-70 + 0.691) / 10)]
        gate = loud.mean() * 0.1
        values.append(-0.691 + 10 * np.log10(loud[loud > gate].mean()))
    values = np.array(values)
    return {"windows": int(values.size), "lufs_min": round(float(values.min()), 2),
            "lufs_max": round(float(values.max()), 2),
            "worst_lu_off": round(float(np.max(np.abs(values - TARGET_LUFS))), 2),
            "true_peak_dbtp": round(float(20 * np.log10(pyebur128.get_true_peak(state, 0))), 2),
            **{key: round(value, 2) for key, value in r128(audio).items() if key != "true_peak_dbtp"}}


def stitch(images: list, params: SpectrogramParams, crossfade: float, off: bool = False,
           progress: str = "") -> np.ndarray:
    """The images joined at the target loudness, or with ``--loudness off``."""
    stitcher = ClipStitcher(params, crossfade, loudness=None if off else TARGET_LUFS)
    parts = []
    for index, image in enumerate(images):
        parts.append(stitcher.add(image)[0])
        if progress and index % 50 == 49:
            print(f"  {progress}: {index + 1}/{len(images)} clips", flush=True)
    return np.concatenate(parts + [stitcher.finish()[0]])


def static(images: list, params: SpectrogramParams, crossfade: float) -> np.ndarray:
    """The contour carried across the seams at one constant gain to the target, limited:
    stitched 30 dB down with the follower off (so nothing is limited), then scaled."""
    quiet = []
    for image in images:
        copy = image.copy()
        quieter = dataclasses.replace(params, max_value=params.max_value * 10 ** (-30 / 20))
        copy.getexif().update(quieter.to_exif())
        quiet.append(copy)
    contour = stitch(quiet, params, crossfade, off=True)
    gain = 10 ** ((TARGET_LUFS - r128(contour)["lufs"]) / 20)
    return limit_peaks((contour * gain)[None].astype(np.float32), RATE, CEILING)[0]


def excerpts(params: SpectrogramParams, seconds: float, tracks: int) -> list[dict]:
    """Part 1: 40-s excerpts of the first ``tracks`` tracks at both overlaps, three ways."""
    rows = []
    clip_samples = WIDTH * params.hop_length
    for track in CORPUS[:tracks]:
        for crossfade in (0.5, 1.0):
            overlap = overlap_frames(params, crossfade)
            overlap_samples = overlap * params.hop_length
            clips = int(np.ceil((seconds * RATE - overlap_samples) / (clip_samples - overlap_samples)))
            total = stitched_length(clip_samples, clips, overlap_samples)
            offset = min(10.0, max(track_seconds(track) - total / RATE - 0.5, 0.0))
            music = real_music(total / RATE + 0.1, offset, RATE, track)[:total]
            images = windows_as_images(music, params, clips, overlap, WIDTH, level=False)
            step = clip_samples - overlap_samples
            seams = np.array([k * step + overlap_samples / 2 for k in range(1, clips)])
            row = {"track": f"{track.package}:{track.name}", "kind": track.kind, "crossfade_s": crossfade,
                   "original": r128(music)}
            for way, audio in (("default", stitch(images, params, crossfade)),
                               ("off", stitch(images, params, crossfade, off=True)),
                               ("static", static(images, params, crossfade))):
                row[way] = {**seam_report(music, audio, seams, RATE), **r128(audio)}
            row["default_minus_off_db"] = row["default"]["sc_db"] - row["off"]["sc_db"]
            row["default_minus_static_db"] = row["default"]["sc_db"] - row["static"]["sc_db"]
            rows.append(row)
            default = row["default"]
            print(f"{row['track'][:40]:>40} {crossfade:.1f} s: default {default['sc_db']:6.2f} dB "
                  f"(seams {default['seam_minus_interior_db']:+5.2f}), off {row['off']['sc_db']:6.2f}, "
                  f"static {row['static']['sc_db']:6.2f}; {default['lufs']:6.2f} LUFS, "
                  f"{default['true_peak_dbtp']:5.2f} dBTP", flush=True)
    return rows


def whole_tracks(params: SpectrogramParams) -> list[dict]:
    """Part 2: every track longer than 90 s, stitched whole."""
    rows = []
    overlap = overlap_frames(params, 1.0)
    clip_samples, overlap_samples = WIDTH * params.hop_length, overlap * params.hop_length
    for track in CORPUS:
        seconds = track_seconds(track)
        if seconds < 90:
            continue
        clips = int((seconds * RATE - overlap_samples) // (clip_samples - overlap_samples))
        total = stitched_length(clip_samples, clips, overlap_samples)
        music = real_music(total / RATE, 0.0, RATE, track)[:total]
        audio = stitch(windows_as_images(music, params, clips, overlap, WIDTH, level=False), params, 1.0)
        original, heard = r128(music), r128(audio)
        row = {"track": f"{track.package}:{track.name}", "seconds": round(audio.size / RATE, 1),
               "lufs": round(heard["lufs"], 2), "lra": round(heard["lra"], 2),
               "original_lra": round(original["lra"], 2), "lra_change": round(heard["lra"] - original["lra"], 2),
               "true_peak_dbtp": round(heard["true_peak_dbtp"], 2)}
        rows.append(row)
        print(f"{row['track'][:40]:>40} whole ({row['seconds']:.0f} s): {row['lufs']:6.2f} LUFS, LRA {row['lra']:5.2f} "
              f"(original {row['original_lra']:5.2f}), true peak {row['true_peak_dbtp']:5.2f} dBTP", flush=True)
    return rows


def joined_hour(params: SpectrogramParams, minutes: float) -> dict:
    """Part 3: the corpus back to back at its own levels, ``minutes`` long, stitched."""
    pieces, length = [], 0
    while length < minutes * 60 * RATE:
        for track in CORPUS:
            pieces.append(real_music(track_seconds(track) - 0.1, 0.0, RATE, track))
            length += pieces[-1].size
    overlap = overlap_frames(params, 1.0)
    clip_samples, overlap_samples = WIDTH * params.hop_length, overlap * params.hop_length
    clips = int((minutes * 60 * RATE - overlap_samples) // (clip_samples - overlap_samples))
    music = np.concatenate(pieces)[: stitched_length(clip_samples, clips, overlap_samples)]
    began = time.monotonic()
    audio = stitch(windows_as_images(music, params, clips, overlap, WIDTH, level=False), params, 1.0,
                   progress="joined music")
    row = {"minutes": minutes, "stitch_s": round(time.monotonic() - began, 1), **windows_report(audio),
           "original_lra": round(r128(music)["lra"], 2)}
    print(f"joined real music ({minutes:g} min): 5-min windows {row['lufs_min']:.2f} to {row['lufs_max']:.2f} LUFS, "
          f"LRA {row['lra']:.2f} (original {row['original_lra']:.2f}), true peak {row['true_peak_dbtp']:.2f} dBTP",
          flush=True)
    return row


def tiny_render(minutes: float) -> dict:
    """Part 4: a render of the tiny model through the real stream, default loudness."""
    from riffstream.model import ModelOptions, RiffusionModel
    from riffstream.sinks import AudioFileWriter
    from riffstream.stream import Stream, StreamOptions

    with tempfile.TemporaryDirectory() as folder:
        model = RiffusionModel.load(ModelOptions(model="tiny", cache_dir=Path(folder) / "cache", precision="f32"),
                                    progress=False)
        options = StreamOptions(prompts=("lofi hip hop", "jazz"), seed=1, steps=1,
                                duration=minutes * 60, loudness=TARGET_LUFS)
        path = Path(folder) / "render.flac"
        began = time.monotonic()
        with AudioFileWriter(path, RATE, 1) as writer:
            Stream(model, options, [writer]).run()
        audio, _ = soundfile.read(path, dtype="float64")
    row = {"minutes": minutes, "render_s": round(time.monotonic() - began, 1), **windows_report(audio)}
    print(f"tiny-model render ({minutes:g} min): 5-min windows {row['lufs_min']:.2f} to {row['lufs_max']:.2f} LUFS, "
          f"true peak {row['true_peak_dbtp']:.2f} dBTP", flush=True)
    return row


def summarise_excerpts(rows: list[dict]) -> dict:
    summary: dict = {}
    if not rows:
        return summary
    for crossfade in (0.5, 1.0):
        part = [row for row in rows if row["crossfade_s"] == crossfade]

        def mean(way: str, key: str) -> float:
            return round(float(np.mean([row[way][key] for row in part])), 2)

        worst_seam = max(part, key=lambda row: row["default"]["seam_minus_interior_db"])
        summary[f"crossfade_{crossfade:g}s"] = {
            **{f"{way}_sc_db": mean(way, "sc_db") for way in ("default", "off", "static")},
            "default_minus_off_db": round(float(np.mean([row["default_minus_off_db"] for row in part])), 2),
            "default_minus_static_db": round(float(np.mean([row["default_minus_static_db"] for row in part])), 2),
            "worst_default_minus_static_db": round(max(row["default_minus_static_db"] for row in part), 2),
            "seam_minus_interior_db": mean("default", "seam_minus_interior_db"),
            "worst_seam_minus_interior_db": round(worst_seam["default"]["seam_minus_interior_db"], 2),
            "worst_seam": worst_seam["track"],
            "lufs_range": [round(min(row["default"]["lufs"] for row in part), 2),
                           round(max(row["default"]["lufs"] for row in part), 2)],
            "max_true_peak_dbtp": round(max(row["default"]["true_peak_dbtp"] for row in part), 2),
        }
    return summary


def main() -> None:
    global TARGET_LUFS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=TARGET_LUFS, help="target loudness, LUFS (default: the code's)")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each stitched excerpt")
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the joined music and the render")
    parser.add_argument("--tracks", type=int, default=len(CORPUS), help="excerpts of the first N corpus tracks only")
    parser.add_argument("--skip-whole", action="store_true", help="leave out part 2")
    parser.add_argument("--skip-render", action="store_true", help="leave out part 4")
    parser.add_argument("--skip-hour", action="store_true", help="leave out part 3")
    args = parser.parse_args()
    TARGET_LUFS = args.target
    params = SpectrogramParams()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    summary: dict = {"benchmark": "seams", "target_lufs": TARGET_LUFS, "tracks": min(args.tracks, len(CORPUS)),
                     "excerpt_s": args.seconds,
                     **summarise_excerpts(excerpts(params, args.seconds, args.tracks))}
    long_rows = [] if args.skip_whole else whole_tracks(params)
    if long_rows:
        summary["whole_tracks"] = {
            "tracks": len(long_rows),
            "worst_lufs_off": round(max(abs(row["lufs"] - TARGET_LUFS) for row in long_rows), 2),
            "worst_lra_change": round(max((row["lra_change"] for row in long_rows), key=abs), 2),
            "within_1_lu_lra_and_lufs": sum(abs(row["lra_change"]) <= 1 and abs(row["lufs"] - TARGET_LUFS) <= 1
                                            for row in long_rows),
            "max_true_peak_dbtp": max(row["true_peak_dbtp"] for row in long_rows),
            "rows": long_rows,
        }
    if not args.skip_hour:
        summary["joined_music"] = joined_hour(params, args.minutes)
    if not args.skip_render:
        summary["tiny_render"] = tiny_render(args.minutes)
    summary["targets"] = {"default_minus_off_db": 0.5, "seam_minus_interior_db": 1.0, "lufs_off": 1.0,
                          "lra_change": 1.0, "lu_off_5min": 1.0, "true_peak_dbtp": -1.0}
    summary.update(info)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
