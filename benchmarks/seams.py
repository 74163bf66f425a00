"""Seams and level: stitched streams against the music they were cut from, and loudness.

Part 1, real music. A 40-s excerpt of every corpus track (18 recordings from 6 Debian
packages, fetched at run time: orchestral, acoustic, ambient, electronic, band) is cut
into the overlapping 5.12-s windows the stream makes. Each window becomes a 512-column
spectrogram image with no EXIF (a generated clip has no true level either), and
``ClipStitcher`` with default options joins them back, at 0.5-s and 1-s overlaps. For
each: spectral convergence against the original over the whole stream, within 250 ms of
a seam and more than 1 s from any (targets: whole stream at most -16 dB, seams within
1 dB of the interior), integrated loudness and true peak, and how much short-term
loudness changes across seams against across clip middles.

Part 2, the full tracks longer than 90 s, stitched whole: the integrated loudness of
every 60-s stretch (target: within 1 LU of -14 LUFS), and true peak (at most -1 dBTP).

Part 3, a 10-minute render of the tiny random-weight model through the real stream (its
clips' levels are arbitrary): the same loudness figures. The tiny model makes noise, not
music; only its level is measured.

Usage: python benchmarks/seams.py [--seconds 40] [--minutes 10] [--skip-render].
Ends with one JSON line.
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
import pyloudnorm  # noqa: E402
import soundfile  # noqa: E402

from riffstream import SpectrogramParams  # noqa: E402
from riffstream.stitch import ClipStitcher, overlap_frames, stitched_length, true_peak  # noqa: E402
from machine import machine  # noqa: E402
from tests.fidelity import seam_report  # noqa: E402
from tests.realmusic import CORPUS, real_music, track_seconds, windows_as_images  # noqa: E402

WIDTH = 512
TARGET_LUFS = -14.0
SHORT_TERM = 3.0  # BS.1770 short-term loudness window, seconds


def short_term_change(audio: np.ndarray, rate: int, centres: np.ndarray, span: float = 1.0) -> np.ndarray:
    """|short-term loudness after - before| across each centre, LU: windows ``span`` apart."""
    meter = pyloudnorm.Meter(rate, block_size=SHORT_TERM)
    half, length = int(span / 2 * rate), int(SHORT_TERM * rate)

    def loudness(end: int) -> float:
        return meter.integrated_loudness(audio[end - length : end].astype(np.float64))

    changes = []
    for centre in centres.astype(int):
        # Short-term loudness is measured over the 3 s ending at a time.
        if centre - half - length >= 0 and centre + half <= audio.size:
            before, after = loudness(centre - half), loudness(centre + half)
            if np.isfinite(before) and np.isfinite(after):
                changes.append(abs(after - before))
    return np.array(changes)


def loudness_report(audio: np.ndarray, rate: int, window: float = 60.0, step: float = 10.0) -> dict:
    """Integrated loudness of every ``window``-s stretch (``step`` apart), and true peak."""
    meter = pyloudnorm.Meter(rate)
    size, hop = int(window * rate), int(step * rate)
    starts = range(0, max(audio.size - size, 0) + 1, hop) if audio.size >= size else [0]
    values = [meter.integrated_loudness(audio[s : s + size].astype(np.float64)) for s in starts]
    return {"windows": len(values), "lufs_min": round(float(np.min(values)), 2),
            "lufs_max": round(float(np.max(values)), 2),
            "worst_lu_off": round(float(np.max(np.abs(np.array(values) - TARGET_LUFS))), 2),
            "true_peak_dbtp": round(float(20 * np.log10(true_peak(audio[None]).max())), 2)}


def stitch(images: list, params: SpectrogramParams, crossfade: float) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    stitcher = ClipStitcher(params, crossfade)
    audio = np.concatenate([stitcher.add(image)[0] for image in images] + [stitcher.finish()[0]])
    return audio, time.perf_counter() - start


def excerpts(params: SpectrogramParams, seconds: float) -> list[dict]:
    """Part 1: 40-s excerpts of every track at both overlaps."""
    rows = []
    clip_samples = WIDTH * params.hop_length
    for track in CORPUS:
        for crossfade in (0.5, 1.0):
            overlap = overlap_frames(params, crossfade)
            overlap_samples = overlap * params.hop_length
            clips = int(np.ceil((seconds * params.sample_rate - overlap_samples) / (clip_samples - overlap_samples)))
            total = stitched_length(clip_samples, clips, overlap_samples)
            offset = min(10.0, max(track_seconds(track) - total / params.sample_rate - 0.5, 0.0))
            music = real_music(total / params.sample_rate + 0.1, offset, params.sample_rate, track)[:total]
            images = windows_as_images(music, params, clips, overlap, WIDTH, level=False)
            audio, elapsed = stitch(images, params, crossfade)
            step = clip_samples - overlap_samples
            seams = np.array([k * step + overlap_samples / 2 for k in range(1, clips)])
            middles = np.array([k * step + clip_samples / 2 for k in range(clips)])
            row = {"track": f"{track.package}:{track.name}", "kind": track.kind, "crossfade_s": crossfade,
                   **seam_report(music, audio, seams, params.sample_rate),
                   "seam_short_term_change_lu": float(np.mean(short_term_change(audio, params.sample_rate, seams))),
                   "middle_short_term_change_lu": float(np.mean(short_term_change(audio, params.sample_rate, middles))),
                   "lufs": float(pyloudnorm.Meter(params.sample_rate).integrated_loudness(audio.astype(np.float64))),
                   "true_peak_dbtp": float(20 * np.log10(true_peak(audio[None]).max())),
                   "stitch_s_per_clip": elapsed / clips}
            rows.append(row)
            print(f"{row['track'][:44]:>44} {crossfade:.1f} s: stream {row['sc_db']:6.2f} dB, seams "
                  f"{row['seam_sc_db']:6.2f}, interior {row['interior_sc_db']:6.2f} ({row['seam_minus_interior_db']:+5.2f}); "
                  f"short-term change at seams {row['seam_short_term_change_lu']:.2f} LU, mid-clip "
                  f"{row['middle_short_term_change_lu']:.2f} LU; {row['lufs']:.2f} LUFS, {row['true_peak_dbtp']:.2f} dBTP",
                  flush=True)
    return rows


def whole_tracks(params: SpectrogramParams) -> list[dict]:
    """Part 2: every track longer than 90 s, stitched whole, 60-s loudness windows."""
    rows = []
    overlap = overlap_frames(params, 1.0)
    clip_samples, overlap_samples = WIDTH * params.hop_length, overlap * params.hop_length
    for track in CORPUS:
        seconds = track_seconds(track)
        if seconds < 90:
            continue
        clips = int((seconds * params.sample_rate - overlap_samples) // (clip_samples - overlap_samples))
        total = stitched_length(clip_samples, clips, overlap_samples)
        music = real_music(total / params.sample_rate, 0.0, params.sample_rate, track)[:total]
        audio, _ = stitch(windows_as_images(music, params, clips, overlap, WIDTH, level=False), params, 1.0)
        row = {"track": f"{track.package}:{track.name}", "seconds": round(audio.size / params.sample_rate, 1),
               **loudness_report(audio, params.sample_rate)}
        rows.append(row)
        print(f"{row['track'][:44]:>44} whole ({row['seconds']:.0f} s): 60-s windows {row['lufs_min']:.2f} to "
              f"{row['lufs_max']:.2f} LUFS, true peak {row['true_peak_dbtp']:.2f} dBTP", flush=True)
    return rows


def tiny_render(minutes: float) -> dict:
    """Part 3: a render of the tiny model through the real stream, default options."""
    from riffstream.model import ModelOptions, RiffusionModel
    from riffstream.sinks import AudioFileWriter
    from riffstream.stream import Stream, StreamOptions

    with tempfile.TemporaryDirectory() as folder:
        model = RiffusionModel.load(ModelOptions(model="tiny", cache_dir=Path(folder) / "cache", precision="f32"),
                                    progress=False)
        options = StreamOptions(prompts=("lofi hip hop", "jazz"), seed=1, steps=2, duration=minutes * 60)
        path = Path(folder) / "render.wav"
        began = time.monotonic()
        with AudioFileWriter(path, 44100, 1) as writer:
            Stream(model, options, [writer]).run()
        audio, rate = soundfile.read(path, dtype="float32")
    row = {"minutes": minutes, "render_s": round(time.monotonic() - began, 1), **loudness_report(audio, rate)}
    print(f"tiny-model render ({minutes:g} min): 60-s windows {row['lufs_min']:.2f} to {row['lufs_max']:.2f} LUFS, "
          f"true peak {row['true_peak_dbtp']:.2f} dBTP", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each stitched excerpt")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the tiny-model render")
    parser.add_argument("--skip-render", action="store_true", help="leave out part 3")
    args = parser.parse_args()
    params = SpectrogramParams()
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cores']} cores, flags {' '.join(info['cpu_flags'])}")
    rows = excerpts(params, args.seconds)
    long_rows = whole_tracks(params)
    render = None if args.skip_render else tiny_render(args.minutes)

    summary: dict = {"benchmark": "seams", "tracks": len(CORPUS), "excerpt_s": args.seconds}
    for crossfade in (0.5, 1.0):
        part = [row for row in rows if row["crossfade_s"] == crossfade]
        worst = max(part, key=lambda row: row["sc_db"])
        worst_seam = max(part, key=lambda row: row["seam_minus_interior_db"])
        summary[f"crossfade_{crossfade:g}s"] = {
            "stream_sc_db": round(float(np.mean([row["sc_db"] for row in part])), 2),
            "worst_stream_sc_db": round(worst["sc_db"], 2), "worst_stream": worst["track"],
            "seam_minus_interior_db": round(float(np.mean([row["seam_minus_interior_db"] for row in part])), 2),
            "worst_seam_minus_interior_db": round(worst_seam["seam_minus_interior_db"], 2),
            "worst_seam": worst_seam["track"],
            "seam_short_term_change_lu": round(float(np.mean([row["seam_short_term_change_lu"] for row in part])), 2),
            "middle_short_term_change_lu": round(float(np.mean([row["middle_short_term_change_lu"] for row in part])), 2),
            "excerpt_lufs_range": [round(min(row["lufs"] for row in part), 2), round(max(row["lufs"] for row in part), 2)],
            "max_true_peak_dbtp": round(max(row["true_peak_dbtp"] for row in part), 2),
        }
    summary["stitch_s_per_clip"] = round(float(np.mean([row["stitch_s_per_clip"] for row in rows])), 3)
    summary["whole_tracks"] = {
        "tracks": len(long_rows),
        "worst_60s_lu_off": max(row["worst_lu_off"] for row in long_rows),
        "worst_track": max(long_rows, key=lambda row: row["worst_lu_off"])["track"],
        "max_true_peak_dbtp": max(row["true_peak_dbtp"] for row in long_rows),
    }
    if render:
        summary["tiny_render"] = render
    summary["targets"] = {"stream_sc_db": -16.0, "seam_minus_interior_db": 1.0, "lu_off_60s": 1.0,
                          "true_peak_dbtp": -1.0}
    summary.update(info)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
