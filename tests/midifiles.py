"""MIDI files for the MIDI tests and benchmark, written with mido: real parts, played by FluidSynth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mido

TICKS = 480
#: General MIDI drum keys: bass drum, snare, closed hi-hat.
KICK, SNARE, HAT = 36, 38, 42


def write_midi(path: Path, parts: Sequence[tuple[int, int, list[tuple[float, float, int, int]]]],
               tempi: Sequence[tuple[float, float]] = ((0.0, 120.0),)) -> Path:
    """A type-1 file: ``tempi`` as (beat, BPM), then per part (channel, program, [(beat, beats long, pitch,
    velocity)]); channel 9 is the drum kit."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS)
    tempo_track = mido.MidiTrack()
    last = 0
    for beat, bpm in tempi:
        tick = round(beat * TICKS)
        tempo_track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=tick - last))
        last = tick
    midi.tracks.append(tempo_track)
    for channel, program, notes in parts:
        events = []
        for beat, length, pitch, velocity in notes:
            events.append((round(beat * TICKS), 1, mido.Message("note_on", channel=channel, note=pitch,
                                                                 velocity=velocity)))
            events.append((round((beat + length) * TICKS), 0, mido.Message("note_off", channel=channel, note=pitch)))
        track = mido.MidiTrack([mido.Message("program_change", channel=channel, program=program)])
        last = 0
        for tick, _, message in sorted(events, key=lambda event: event[:2]):
            track.append(message.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    midi.save(path)
    return path


def piano_piece(path: Path, bars: int = 8) -> Path:
    """A piano melody over a left-hand bass, at 100 BPM: C major, eighth and quarter notes."""
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    melody, bass = [], []
    for bar in range(bars):
        for step in range(6):
            beat = bar * 4 + [0, 1, 1.5, 2, 3, 3.5][step]
            melody.append((beat, 0.45 if step in (1, 2, 4, 5) else 0.9, scale[(bar * 3 + step * 2) % 8] + 12, 90))
        bass.append((bar * 4, 1.9, [48, 45, 41, 43][bar % 4], 80))
        bass.append((bar * 4 + 2, 1.9, [48, 45, 41, 43][bar % 4] + 7, 75))
    return write_midi(path, [(0, 0, melody + bass)], ((0, 100.0),))


def drum_and_bass_loop(path: Path, bars: int = 8) -> Path:
    """A drum kit (kick, snare, hats) and an electric bass line, at 120 BPM."""
    drums, bass = [], []
    line = [40, 40, 43, 45, 40, 47, 45, 43]
    for bar in range(bars):
        for beat in range(4):
            at = bar * 4 + beat
            drums.append((at, 0.25, KICK if beat % 2 == 0 else SNARE, 110))
            drums += [(at, 0.2, HAT, 70), (at + 0.5, 0.2, HAT, 60)]
        bass += [(bar * 4 + n * 0.5, 0.45, line[n], 100) for n in range(8)]
    return write_midi(path, [(9, 0, drums), (1, 33, bass)], ((0, 120.0),))


def chord_progression(path: Path, bars: int = 8) -> Path:
    """Block chords on a string pad and piano, I-vi-IV-V, one chord a bar at 90 BPM."""
    chords = [[60, 64, 67], [57, 60, 64], [53, 57, 60], [55, 59, 62]]
    notes = [(bar * 4 + half * 2, 1.9, pitch, 85) for bar in range(bars) for half in range(2)
             for pitch in chords[bar % 4]]
    return write_midi(path, [(0, 0, notes)], ((0, 90.0),))


def kick_on_every_beat(path: Path, changes: Sequence[tuple[float, float]], beats: int) -> Path:
    """A kick drum on every beat for ``beats`` beats, under tempo ``changes`` ((beat, BPM))."""
    return write_midi(path, [(9, 0, [(beat, 0.25, KICK, 120) for beat in range(beats)])], changes)
