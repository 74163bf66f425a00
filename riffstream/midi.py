"""MIDI in and out: read a Standard MIDI File (notes and tempo map), render it to audio with FluidSynth, and write
notes back as a Standard MIDI File.

* **Reading** (:func:`read_midi`) takes every note in seconds and the tempo map, with mido; a file that is not
  MIDI, is cut short, or holds no notes is refused in one line.
* **Rendering** (:func:`render_midi`) runs the FluidSynth command line (Debian ``fluidsynth``) with a General MIDI
  SoundFont (Debian ``fluid-soundfont-gm``, or ``--soundfont``). The command line, not pyfluidsynth: it needs no
  Python binding to match the library, renders faster than real time (0.35 s for a 10-s file here, most of it
  loading the 148-MB SoundFont) and gives the same bytes every run.
* **Writing** (:func:`midi_bytes`) places notes given in seconds on a tempo map's ticks, so that a DAW shows them
  on the bars of the tempo they were played at.

Pure functions and frozen data; the one subprocess is FluidSynth's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riffstream.checks import check_input_file
from riffstream.errors import RiffstreamError
from riffstream.tempo import TempoMap, check_bpm

#: Where Debian, Fedora, Arch and Homebrew put a General MIDI SoundFont, in the order tried.
SOUNDFONTS = (
    "/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2", "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2", "/opt/homebrew/share/soundfonts/default.sf2",
    "/usr/local/share/soundfonts/default.sf2",
)
#: Largest MIDI file read, bytes (a long orchestral piece is well under 1 MB).
MAX_MIDI_BYTES = 16 * 1024 * 1024
#: Longest MIDI file rendered, seconds (as --duration's limit would allow, but rendering is held to an hour).
MAX_MIDI_SECONDS = 3600.0
#: FluidSynth's output gain: General MIDI parts at full velocity stay clear of clipping at this level.
GAIN = 0.5
#: Ticks per beat of the files written.
TICKS_PER_BEAT = 480
#: How long FluidSynth may take, seconds.
RENDER_TIMEOUT = 600
INSTALL_FLUIDSYNTH = ("MIDI input needs FluidSynth: install it (Debian/Ubuntu: sudo apt-get install fluidsynth "
                      "fluid-soundfont-gm; macOS: brew install fluid-synth)")


@dataclass(frozen=True)
class Note:
    """One note, in seconds: its pitch (MIDI number), velocity (1 to 127), and whether it is a drum (channel 10)."""

    start: float
    end: float
    pitch: int
    velocity: int = 100
    drum: bool = False


@dataclass(frozen=True)
class Score:
    """A MIDI file's notes in seconds, in onset order, its tempo map, and where it ends (its last event)."""

    notes: tuple[Note, ...]
    tempo: TempoMap
    end: float


def _midi_module():
    try:
        import mido
    except ImportError:
        raise RiffstreamError("MIDI needs mido: pip install 'riffstream[midi]'") from None
    return mido


def read_midi(path: str | os.PathLike[str]) -> Score:
    """The notes and tempo map of the Standard MIDI File at ``path``; one-line RiffstreamError if it is missing,
    not MIDI, cut short, asynchronous (type 2), holds no notes, or sets a tempo outside 30 to 300 BPM."""
    mido = _midi_module()
    path = check_input_file(path, "MIDI file", "notes")
    if path.stat().st_size > MAX_MIDI_BYTES:
        raise RiffstreamError(f"{path} is larger than {MAX_MIDI_BYTES // 2**20} MB: not a MIDI file riffstream reads")
    try:
        midi = mido.MidiFile(path, clip=True)
        if midi.type == 2:
            raise RiffstreamError(f"{path} is a type-2 (asynchronous) MIDI file: save it as type 0 or 1")
        events = list(midi)
    except RiffstreamError:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as error:
        detail = " ".join(str(error).split())[:120] or type(error).__name__
        raise RiffstreamError(f"{path} is not a readable MIDI file ({detail})") from None
    now, changes, sounding, notes = 0.0, [(0.0, 120.0)], {}, []
    for event in events:
        now += event.time
        if event.type == "set_tempo":
            bpm = round(60_000_000 / event.tempo, 3)  # 666667 us a beat is 90 BPM, not 89.99995
            try:
                check_bpm(bpm, f"{path}: the tempo at {now:.2f} s")
            except RiffstreamError:
                raise RiffstreamError(f"{path} sets {bpm:.4g} BPM at {now:.2f} s: riffstream locks to 30 to 300 BPM")
            changes = [c for c in changes if c[0] < now - 1e-9] + [(now, bpm)]
        elif event.type in ("note_on", "note_off"):
            key = (event.channel, event.note)
            if event.type == "note_on" and event.velocity > 0:
                sounding.setdefault(key, []).append((now, event.velocity))
            elif sounding.get(key):
                start, velocity = sounding[key].pop(0)
                notes.append(Note(start, now, event.note, velocity, event.channel == 9))
    notes += [Note(start, max(now, start), key[1], velocity, key[0] == 9)
              for key, held in sounding.items() for start, velocity in held]
    if not notes:
        raise RiffstreamError(f"{path} holds no notes: there is nothing to play")
    if now > MAX_MIDI_SECONDS:
        raise RiffstreamError(f"{path} lasts {now / 60:.0f} minutes: riffstream renders MIDI files of up to an hour")
    merged = [change for n, change in enumerate(changes) if n == 0 or change[1] != changes[n - 1][1]]
    return Score(tuple(sorted(notes, key=lambda note: (note.start, note.pitch))), TempoMap(tuple(merged)), now)


def find_soundfont(path: str | os.PathLike[str] | None = None) -> Path:
    """The SoundFont to render with: ``path``, else ``$RIFFSTREAM_SOUNDFONT``, else the system's General MIDI one;
    one-line RiffstreamError if there is none or it is not a SoundFont."""
    path = path or os.environ.get("RIFFSTREAM_SOUNDFONT")
    if path is None:
        found = next((Path(p) for p in SOUNDFONTS if Path(p).is_file()), None)
        if found is None:
            raise RiffstreamError("no SoundFont found to render MIDI with: install one (Debian/Ubuntu: sudo apt-get "
                                  "install fluid-soundfont-gm) or give --soundfont FILE.sf2")
        return found
    path = check_input_file(path, "SoundFont", "instruments")
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise RiffstreamError(f"{path} is not a SoundFont (.sf2)")
    return path


def fluidsynth() -> str:
    """The FluidSynth program; one-line RiffstreamError if it is not installed."""
    program = shutil.which("fluidsynth")
    if program is None:
        raise RiffstreamError(INSTALL_FLUIDSYNTH)
    return program


def render_midi(path: str | os.PathLike[str], soundfont: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """``path`` played by FluidSynth with ``soundfont``: (2, samples) float32 at ``sample_rate``, the same every
    run. One-line RiffstreamError if FluidSynth fails or the render is silent."""
    import soundfile

    program = fluidsynth()
    with tempfile.TemporaryDirectory(prefix="riffstream-midi-") as folder:
        wav = Path(folder) / "render.wav"
        command = [program, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(sample_rate), "-T", "wav", "-O", "float",
                   "-F", str(wav), str(soundfont), str(path)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=RENDER_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise RiffstreamError(f"FluidSynth took over {RENDER_TIMEOUT} s to render {path}") from None
        if done.returncode != 0 or not wav.is_file():
            detail = " ".join((done.stderr or done.stdout).split())[:200]
            raise RiffstreamError(f"FluidSynth could not render {path}: {detail or f'exit status {done.returncode}'}")
        audio, rate = soundfile.read(wav, dtype="float32", always_2d=True)
    if rate != sample_rate or not np.any(audio):
        raise RiffstreamError(f"{path} renders to silence with {soundfont}: no instrument sounds its notes")
    return np.ascontiguousarray(audio.T)


def tempo_ticks(tempo: TempoMap, seconds: float) -> int:
    """``seconds`` as ticks of :data:`TICKS_PER_BEAT` under ``tempo`` (a stretch with no tempo counts 120 BPM)."""
    ticks, changes = 0.0, tempo.changes
    for n, (start, bpm) in enumerate(changes):
        if seconds <= start:
            break
        end = min(seconds, changes[n + 1][0]) if n + 1 < len(changes) else seconds
        ticks += (end - start) * (bpm or 120.0) / 60 * TICKS_PER_BEAT
    return round(ticks)


def midi_bytes(notes: Sequence[Note], tempo: TempoMap | None = None) -> bytes:
    """A type-1 Standard MIDI File of ``notes`` (seconds) on ``tempo``'s ticks (120 BPM without one): a tempo track,
    then one track of pitched notes (channel 1) and, if there are drums, one on channel 10."""
    import io

    mido = _midi_module()
    tempo = tempo or TempoMap(((0.0, 120.0),))
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    held = [(0.0, 120.0)]  # a stretch with no tempo holds the one before (120 BPM at first)
    for start, bpm in tempo.changes:
        held = [c for c in held if c[0] < start] + [(start, bpm or held[-1][1])]
    tempo = TempoMap(tuple(held))
    meta = [(tempo_ticks(tempo, start), mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
            for start, bpm in tempo.changes]
    parts = [("riffstream", False, 0), ("riffstream drums", True, 9)]
    tracks = [("tempo", meta)]
    for name, drum, channel in parts:
        events = []
        for note in notes:
            if note.drum == drum:
                start, end = tempo_ticks(tempo, note.start), tempo_ticks(tempo, note.end)
                velocity = int(min(127, max(1, note.velocity)))
                events.append((start, 1, mido.Message("note_on", channel=channel, note=note.pitch, velocity=velocity)))
                events.append((max(end, start + 1), 0, mido.Message("note_off", channel=channel, note=note.pitch)))
        if events or not drum:
            tracks.append((name, [(tick, message) for tick, _, message in sorted(events, key=lambda e: e[:2])]))
    for name, events in tracks:
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=name)])
        last = 0
        for tick, message in events:
            track.append(message.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()
