"""MIDI in and out with real parts: mido files, the FluidSynth program with Debian's General MIDI SoundFont,
Basic Pitch's model on OpenVINO, the riffstream command in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import mido
import numpy as np
import pretty_midi
import pytest
import soundfile

from riffstream.midi import Note, midi_bytes, read_midi, render_midi
from riffstream.session import GenerationRequest, plan_generation
from riffstream.tempo import TempoMap
from riffstream.transcribe import NoteStream, transcribe
from tests.beats import kick_onsets
from tests.midifiles import KICK, kick_on_every_beat, piano_piece, write_midi
from tests.running import assert_one_line_error, run_cli, wait_for
from tests.serving import serving

RATE = 44100
SOUNDFONT = "/usr/share/sounds/sf2/default-GM.sf2"


def _matched(found: list[Note], expected: list[Note], tolerance: float = 0.05) -> int:
    """How many expected notes have a found note of the same pitch starting within ``tolerance`` seconds."""
    unused = list(found)
    hits = 0
    for note in expected:
        match = next((f for f in unused if f.pitch == note.pitch and abs(f.start - note.start) <= tolerance), None)
        if match is not None:
            unused.remove(match)
            hits += 1
    return hits


def test_a_midi_file_reads_as_notes_in_seconds_with_its_tempo_map(tmp_path):
    path = write_midi(tmp_path / "a.mid", [(0, 0, [(beat, 0.5, 60 + beat, 90) for beat in range(8)])],
                      ((0, 120.0), (4, 150.0)))
    score = read_midi(path)
    assert score.tempo == TempoMap(((0.0, 120.0), (2.0, 150.0)))
    starts = [note.start for note in score.notes]
    np.testing.assert_allclose(starts, [0, 0.5, 1.0, 1.5, 2.0, 2.4, 2.8, 3.2], atol=1e-6)
    assert [note.pitch for note in score.notes] == list(range(60, 68))
    np.testing.assert_allclose(score.tempo.beats(3.61), starts + [3.6], atol=1e-6)


def test_notes_written_on_a_tempo_map_read_back_at_the_same_times(tmp_path):
    notes = [Note(0.1 * n + 0.013, 0.1 * n + 0.3, 40 + n, 64 + n, drum=n % 3 == 0) for n in range(30)]
    tempo = TempoMap(((0.0, 97.0), (1.3, 141.0), (2.0, None)))
    path = tmp_path / "out.mid"
    path.write_bytes(midi_bytes(notes, tempo))
    read = pretty_midi.PrettyMIDI(str(path))
    times, bpms = read.get_tempo_changes()
    np.testing.assert_allclose(times, [0.0, 1.3], atol=2e-3)
    np.testing.assert_allclose(bpms, [97.0, 141.0], atol=1e-3)  # a stretch with no tempo holds the one before
    back = sorted((n.start, n.pitch, inst.is_drum) for inst in read.instruments for n in inst.notes)
    assert [(p, d) for _, p, d in back] == [(n.pitch, n.drum) for n in notes]
    np.testing.assert_allclose([s for s, _, _ in back], [n.start for n in notes], atol=1.5e-3)  # within a tick


def test_fluidsynth_renders_the_same_audio_every_time_and_basic_pitch_hears_its_notes(tmp_path):
    path = piano_piece(tmp_path / "piano.mid", bars=4)
    first, second = (render_midi(path, SOUNDFONT, RATE) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    expected = [n for n in read_midi(path).notes]
    found = transcribe(first, RATE)
    assert _matched(found, expected) >= 0.8 * len(expected), (len(found), len(expected))


def test_notes_transcribed_as_audio_arrives_are_the_notes_of_the_whole(tmp_path):
    audio = render_midi(piano_piece(tmp_path / "piano.mid", bars=4), SOUNDFONT, RATE).mean(axis=0)
    whole = transcribe(audio, RATE)
    stream = NoteStream(RATE)
    chunked = [note for start in range(0, len(audio), 9000) for note in stream.feed(audio[start:start + 9000])]
    chunked += stream.finish()
    # The same notes: only where a decoding window falls can move an onset by a frame or two (11.6 ms each).
    assert len(chunked) == len(whole) > 20 and _matched(chunked, whole, 0.025) == len(whole)


def test_a_timeline_places_each_midi_file_at_its_entry_with_its_tempo(tmp_path):
    first = write_midi(tmp_path / "a.mid", [(0, 0, [(beat, 0.5, 60, 90) for beat in range(8)])], ((0, 120.0),))
    second = write_midi(tmp_path / "b.mid", [(0, 0, [(beat, 0.5, 64, 90) for beat in range(4)])], ((0, 90.0),))
    timeline = tmp_path / "set.toml"
    timeline.write_text('bpm = 100\n[[entry]]\ntime = 0\nprompt = "piano"\ninit_midi = "a.mid"\n'
                        '[[entry]]\ntime = "0:20"\nprompt = "strings"\ninit_midi = "b.mid"\n')
    plan = plan_generation(GenerationRequest(timeline=str(timeline), model="tiny", no_play=True,
                                             out=str(tmp_path / "x.wav")))
    options = plan.stream
    changes = options.tempo_map.changes
    # The timeline's own tempo between and after the files.
    assert [bpm for _, bpm in changes] == [120.0, 100.0, 90.0, 100.0]
    assert changes[2][0] == 20.0 and 4.0 <= changes[1][0] < 20.0 < changes[3][0]
    track = options.track
    assert np.any(track[: 4 * RATE]) and not np.any(track[round(changes[1][0] * RATE) + 1 : 20 * RATE])
    assert np.any(track[20 * RATE : 22 * RATE])
    assert options.duration == pytest.approx(len(track) / RATE)  # a render ends where the last file does
    assert options.bpm_at(21) == 90.0


@pytest.mark.parametrize("make, args, message", [
    (lambda d: (d / "x.mid").write_text("not midi at all"), [], "is not a readable MIDI file"),
    (lambda d: (d / "x.mid").write_bytes(piano_piece(d / "p.mid").read_bytes()[:60]), [], "is not a readable MIDI"),
    (lambda d: write_midi(d / "x.mid", [(0, 0, [])]), [], "holds no notes"),
    (lambda d: write_midi(d / "x.mid", [(0, 0, [(0, 1, 60, 90)])], ((0, 20.0),)), [], "30 to 300 BPM"),
    (lambda d: (d / "x.mid").touch(), [], "is empty"),
    (lambda d: piano_piece(d / "x.mid"), ["--soundfont", "SOUND"], "is not a SoundFont"),
    (lambda d: piano_piece(d / "x.mid"), ["--soundfont", "DIR/none.sf2"], "no such SoundFont"),
    (lambda d: piano_piece(d / "x.mid"), ["--bpm", "90"], "leave out --bpm"),
    (lambda d: piano_piece(d / "x.mid"), ["--midi-out", "DIR/notes.wav"], "name it .mid"),
    (lambda d: piano_piece(d / "x.mid"), ["--continuation"], "--continuation and a tempo"),
])
def test_unusable_midi_input_gets_one_line_before_the_model_loads(make, args, message, tmp_path, capsys,
                                                                   no_model_load):
    make(tmp_path)
    (tmp_path / "sound.sf2").write_text("RIFF....not a soundfont")
    args = [str(a).replace("SOUND", str(tmp_path / "sound.sf2")).replace("DIR", str(tmp_path)) for a in args]
    code, stderr = run_cli(capsys, "piano", "--init-midi", tmp_path / "x.mid", "--model", "tiny", "--no-play",
                           "--out", tmp_path / "out.wav", *args)
    assert_one_line_error(code, stderr, message)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".wav", ".mid") and p.name != "x.mid") == \
        (["p.mid"] if (tmp_path / "p.mid").exists() else [])


def test_midi_input_without_fluidsynth_or_a_soundfont_is_refused_in_one_line(tmp_path, capsys, monkeypatch,
                                                                            no_model_load):
    piano_piece(tmp_path / "x.mid")
    monkeypatch.setenv("RIFFSTREAM_SOUNDFONT", str(tmp_path / "gone.sf2"))
    code, stderr = run_cli(capsys, "piano", "--init-midi", tmp_path / "x.mid", "--no-play", "--out", tmp_path / "o.wav")
    assert_one_line_error(code, stderr, "no such SoundFont")
    monkeypatch.delenv("RIFFSTREAM_SOUNDFONT")
    monkeypatch.setenv("PATH", str(tmp_path))  # no fluidsynth program on it
    code, stderr = run_cli(capsys, "piano", "--init-midi", tmp_path / "x.mid", "--no-play", "--out", tmp_path / "o.wav")
    assert_one_line_error(code, stderr, "MIDI input needs FluidSynth")
    code, stderr = run_cli(capsys, "audio-to-midi", tmp_path / "x.mid", tmp_path / "o.mid")
    assert_one_line_error(code, stderr, "audio")
    assert not (tmp_path / "o.mid").exists() and not (tmp_path / "o.wav").exists()


@pytest.mark.slow
def test_a_tempo_change_in_the_midi_file_keeps_the_render_on_its_beats(tiny_exported, tmp_path, capsys):
    """120 BPM for 16 beats, then 150 BPM: every kick of the render lies within 15 ms of where the file's beats
    put it (FluidSynth's kick reaches half its rise a steady 23 ms after its note-on), across the change and
    every seam; the render ends with the file."""
    path = kick_on_every_beat(tmp_path / "kicks.mid", ((0, 120.0), (16, 150.0)), beats=32)
    out = tmp_path / "kicks.wav"
    code, stderr = run_cli(capsys, "drums", "--init-midi", path, "--strength", "0", "--model", "tiny", "--width", 256,
                           "--no-play", "--out", out, "--no-progress", "--cache-dir", tiny_exported)
    assert code == 0, stderr
    audio, rate = soundfile.read(out)
    score = read_midi(path)
    beats = score.tempo.beats(score.end)
    assert len(beats) == 32 and score.tempo.bpm_at(score.end) == 150.0
    rendered = render_midi(path, SOUNDFONT, RATE)
    played = kick_onsets(rendered, RATE, 0.3)[:-1]  # the last kick runs into the end
    lag = np.median(played - beats[: len(played)])
    assert 0 <= lag < 0.04 and np.max(np.abs(played - beats[: len(played)] - lag)) < 0.002
    kicks = kick_onsets(audio, rate, 0.3)[: len(played)]
    assert len(kicks) == len(played) == 31
    assert np.max(np.abs(kicks - beats[: len(kicks)] - lag)) <= 0.015, np.abs(kicks - beats[: len(kicks)] - lag)
    assert len(audio) == rendered.shape[1]  # the render ends where FluidSynth's does, its last notes' tails too


def test_audio_to_midi_writes_the_notes_fluidsynth_played(tmp_path, capsys):
    path = piano_piece(tmp_path / "piano.mid", bars=4)
    soundfile.write(tmp_path / "piano.flac", render_midi(path, SOUNDFONT, RATE).T, RATE)
    code, _ = run_cli(capsys, "audio-to-midi", tmp_path / "piano.flac", tmp_path / "notes.mid")
    assert code == 0
    read = pretty_midi.PrettyMIDI(str(tmp_path / "notes.mid"))
    found = [Note(n.start, n.end, n.pitch) for inst in read.instruments for n in inst.notes]
    expected = list(read_midi(path).notes)
    assert _matched(found, expected) >= 0.8 * len(expected)


def _notes_in(path) -> list[tuple[float, int]]:
    return sorted((n.start, n.pitch) for inst in pretty_midi.PrettyMIDI(str(path)).instruments for n in inst.notes)


@pytest.mark.slow
def test_midi_out_of_live_play_is_a_whole_file_after_sigterm(tiny_exported, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".asoundrc").write_text("pcm.!default { type null }\n")
    source, out = piano_piece(tmp_path / "piano.mid", bars=12), tmp_path / "notes.mid"
    partial = tmp_path / ".notes.mid.partial"
    process = subprocess.Popen(
        [sys.executable, "-m", "riffstream", "piano", "--init-midi", str(source), "--strength", "0", "--model", "tiny",
         "--midi-out", str(out), "--no-progress", "--cache-dir", str(tiny_exported)],
        env=dict(os.environ, HF_HUB_OFFLINE="1", HOME=str(home)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        wait_for(lambda: partial.exists() and len(mido.MidiFile(partial).tracks[1]) > 20, 240, process,
                 "notes written while it plays")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 143 and "Traceback" not in stderr, stderr
    assert not partial.exists()
    midi = mido.MidiFile(out)  # a whole Standard MIDI File
    assert midi.type == 1 and any(m.type == "set_tempo" and round(mido.tempo2bpm(m.tempo)) == 100 for m in midi.tracks[0])
    found = [Note(start, start + 0.1, pitch) for start, pitch in _notes_in(out)]
    expected = [n for n in read_midi(source).notes if n.start < found[-1].start - 1]
    assert len(expected) > 10 and _matched(found, expected) >= 0.7 * len(expected)


@pytest.mark.slow
def test_serve_offers_recent_notes_and_writes_midi_out_on_sigterm(tiny_exported, tmp_path):
    source, out = piano_piece(tmp_path / "piano.mid", bars=8), tmp_path / "served.mid"
    with serving(tiny_exported, tmp_path, "--init-midi", str(source), "--strength", "0", "--midi-out", str(out),
                 prompt="piano") as server:
        wait_for(lambda: len(_served_notes(server)) > 10, 120, server.process, "notes at /api/midi")
        code, body = server.request("GET", "/api/midi?minutes=0")
        assert code == 422
    assert server.process.returncode == 143
    notes = _notes_in(out)
    assert len(notes) > 10 and {pitch for _, pitch in notes} & {n.pitch for n in read_midi(source).notes}


def _served_notes(server) -> list[tuple[float, int]]:
    code, body = server.request("GET", "/api/midi?minutes=1")
    assert code == 200
    return [(m.note, m.time) for track in mido.MidiFile(file=__import__("io").BytesIO(body)).tracks for m in track
            if m.type == "note_on"]
