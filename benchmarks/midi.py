"""MIDI round trip with real parts: how many of a MIDI file's notes survive riffstream's spectrogram and audio stage.

Three MIDI files written here (a piano piece, a drum-and-bass-line loop, a chord progression; ``tests/midifiles.py``)
are each played by FluidSynth with Debian's General MIDI SoundFont, then:

- **ceiling**: Basic Pitch (riffstream's transcriber, on OpenVINO) on the FluidSynth render itself;
- **riffstream**: ``riffstream PROMPT --init-midi FILE --strength 0 --model tiny --midi-out OUT.mid`` in a real
  process: every clip is the rendered MIDI itself, as a spectrogram image, back through riffstream's audio stage
  (PGHI and Griffin-Lim, crossfaded seams, loudness), transcribed as the stream is written;
- **Riffusion's converter**: the same render cut into 5.12-s clips, each made a spectrogram image and turned
  back into audio as Riffusion does (``InverseMelScale`` and 32 Griffin-Lim iterations; ``tests/reference.py``),
  the clips joined end to end, then transcribed.

Each is scored against the input's pitched notes with ``mir_eval`` (note onset within 50 ms, pitch exact, offsets
ignored); drum notes (channel 10) have no pitch and are left out of the reference. The target: riffstream's F1
at least 90% of the ceiling on every file.

Usage: python benchmarks/midi.py [--bars N] [--keep DIR]
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mir_eval  # noqa: E402
import numpy as np  # noqa: E402
import pretty_midi  # noqa: E402
import soundfile  # noqa: E402

from riffstream import SpectrogramParams, audio_to_image  # noqa: E402
from riffstream.midi import find_soundfont, read_midi, render_midi  # noqa: E402
from riffstream.spectrogram import mel_from_image  # noqa: E402
from riffstream.transcribe import transcribe  # noqa: E402
from machine import machine  # noqa: E402
from tests.midifiles import chord_progression, drum_and_bass_loop, piano_piece  # noqa: E402
from tests.reference import reference_audio_from_mel  # noqa: E402

PIECES = {"piano": (piano_piece, "solo piano"), "drums_bass": (drum_and_bass_loop, "drum and bass groove"),
          "chords": (chord_progression, "soft piano chords")}
TARGET = 0.9


def _intervals(notes) -> tuple[np.ndarray, np.ndarray]:
    pitched = [n for n in notes if not n.drum]
    intervals = np.array([[n.start, max(n.end, n.start + 0.01)] for n in pitched]).reshape(-1, 2)
    return intervals, np.array([pretty_midi.note_number_to_hz(n.pitch) for n in pitched])


def f1(reference, estimate) -> float:
    """Note-level F1: onset within 50 ms, pitch exact (within half a semitone), offsets ignored."""
    ref_i, ref_p = _intervals(reference)
    est_i, est_p = _intervals(estimate)
    if not len(est_p):
        return 0.0
    _, _, score, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_i, ref_p, est_i, est_p, onset_tolerance=0.05, pitch_tolerance=50.0, offset_ratio=None)
    return float(score)


def riffusion_round_trip(audio: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """``audio`` cut into 5.12-s clips, each through a spectrogram image and Riffusion's converter, joined."""
    clip = 512 * params.hop_length
    pieces = []
    for start in range(0, audio.shape[-1], clip):
        part = audio[..., start:start + clip]
        if part.shape[-1] < clip:
            part = np.pad(part, ((0, 0), (0, clip - part.shape[-1])))
        mel = mel_from_image(audio_to_image(part, params.sample_rate, params), params)
        pieces.append(np.atleast_2d(reference_audio_from_mel(mel, params))[..., :clip])
    return np.concatenate(pieces, axis=-1)[..., : audio.shape[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=16, help="bars of each piece (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="keep the MIDI files, renders and transcriptions here")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="riffstream-midi-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    params = SpectrogramParams()
    rate = params.sample_rate
    soundfont = find_soundfont()
    results = {}
    for name, (write, prompt) in PIECES.items():
        path = write(folder / f"{name}.mid", bars=args.bars)
        reference = read_midi(path).notes
        began = time.monotonic()
        render = render_midi(path, soundfont, rate)
        render_s = time.monotonic() - began
        soundfile.write(folder / f"{name}.fluidsynth.wav", render.T, rate)
        began = time.monotonic()
        ceiling = f1(reference, transcribe(render, rate))
        transcribe_s = time.monotonic() - began
        out_wav, out_mid = folder / f"{name}.riffstream.wav", folder / f"{name}.riffstream.mid"
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "riffstream", prompt, "--init-midi", str(path), "--strength", "0", "--model",
             "tiny", "--no-play", "--out", str(out_wav), "--midi-out", str(out_mid), "--no-progress"],
            capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), check=False)
        if done.returncode != 0:
            raise SystemExit(f"riffstream failed on {name}: {done.stderr[-2000:]}")
        run_s = time.monotonic() - began
        written = pretty_midi.PrettyMIDI(str(out_mid))
        estimate = [type(reference[0])(n.start, n.end, n.pitch, n.velocity, inst.is_drum)
                    for inst in written.instruments for n in inst.notes]
        ours = f1(reference, estimate)
        theirs = f1(reference, transcribe(riffusion_round_trip(render, params), rate))
        pitched = sum(not n.drum for n in reference)
        results[name] = {"notes": pitched, "ceiling_f1": round(ceiling, 4), "riffstream_f1": round(ours, 4),
                         "riffusion_converter_f1": round(theirs, 4), "ratio": round(ours / ceiling, 4),
                         "seconds": round(render.shape[-1] / rate, 2), "fluidsynth_s": round(render_s, 2),
                         "transcribe_s": round(transcribe_s, 2), "riffstream_run_s": round(run_s, 1)}
        print(f"{name:11s} {pitched:4d} notes  ceiling F1 {ceiling:.3f}  riffstream {ours:.3f} "
              f"({ours / ceiling:.1%} of it)  Riffusion's converter {theirs:.3f}", flush=True)
    worst = min(results, key=lambda k: results[k]["ratio"])
    summary = {"benchmark": "midi_round_trip", "pieces": results, "worst": worst,
               "worst_ratio": results[worst]["ratio"], "target_ratio": TARGET,
               "met": all(r["ratio"] >= TARGET for r in results.values()), "bars": args.bars, **machine()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
