"""Notes as a sink: the stream's audio transcribed as it is made (:class:`~riffstream.transcribe.NoteStream`),
written to a Standard MIDI File and kept for ``/api/midi``.

The file is written as the audio file is: to a hidden name beside the target (``.NAME.partial``), rewritten
whole (and atomically) each time notes settle, so it is a valid MIDI file at every moment, and renamed into
place when the stream ends, however it ends (Ctrl-C, SIGTERM, the end of a render). An error removes it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from riffstream.errors import RiffstreamError
from riffstream.midi import Note, midi_bytes
from riffstream.sinks.file import check_writable
from riffstream.tempo import TempoMap
from riffstream.transcribe import NoteStream

#: Notes kept for :meth:`MidiWriter.recent` when no file is written, seconds of stream time.
KEEP_SECONDS = 600.0


def check_midi_out(path: str | os.PathLike[str], what: str = "--midi-out") -> Path:
    """Fail early, with one line, if ``path`` is not a writable ``.mid`` (or ``.midi``) file name."""
    if Path(path).suffix.lower() not in (".mid", ".midi"):
        raise RiffstreamError(f"{what} writes a Standard MIDI File: name it .mid, not {Path(path).name}")
    return check_writable(path)


class MidiWriter:
    """Transcribes the audio written to it and writes its notes to ``path`` (None: keeps them only, for
    :meth:`recent`), on ``tempo``'s ticks (a tempo map in stream time; 120 BPM without one)."""

    def __init__(self, path: str | os.PathLike[str] | None, sample_rate: int, tempo: TempoMap | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.partial = self.path.with_name(f".{self.path.name}.partial") if self.path else None
        self.tempo = tempo
        self.notes: list[Note] = []
        self.seconds = 0.0
        self._rate = sample_rate
        self._transcriber = NoteStream(sample_rate)
        self._lock = threading.Lock()
        self._closed = False
        if self.partial is not None:
            self._save()

    def write(self, samples: np.ndarray) -> None:
        """Transcribe the next (channels, samples) audio; rewrite the file if notes settled."""
        mono = np.atleast_2d(samples).mean(axis=0)
        self._add(self._transcriber.feed(mono), len(mono))

    def close(self) -> Path | None:
        """The stream has ended: transcribe what is left and put the file in place (once)."""
        if self._closed:
            return self.path
        self._closed = True
        self._add(self._transcriber.finish(), 0)
        if self.partial is not None:
            os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the unfinished file (after an error)."""
        self._closed = True
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)

    def recent(self, seconds: float) -> bytes:
        """A MIDI file of the notes that started in the last ``seconds`` of stream time, moved to start at 0."""
        with self._lock:
            since = max(0.0, self.seconds - seconds)
            notes = [Note(n.start - since, n.end - since, n.pitch, n.velocity, n.drum)
                     for n in self.notes if n.start >= since]
        return midi_bytes(notes, TempoMap(((0.0, self.tempo.bpm_at(since)),)) if self.tempo else None)

    def _add(self, notes: list[Note], frames: int) -> None:
        with self._lock:
            self.seconds += frames / self._rate
            self.notes.extend(notes)
            if self.partial is None:
                drop = next((n for n, note in enumerate(self.notes) if note.start >= self.seconds - KEEP_SECONDS),
                            len(self.notes))
                del self.notes[:drop]
        if notes and self.partial is not None:
            self._save()

    def _save(self) -> None:
        """Write every note so far to the hidden file, whole, then rename it over the last one."""
        data = midi_bytes(self.notes, self.tempo)
        temporary = self.partial.with_name(self.partial.name + ".tmp")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, self.partial)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise RiffstreamError(f"cannot write {self.path}: {error.strerror}") from None
