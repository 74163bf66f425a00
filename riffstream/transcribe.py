"""Audio to notes with Spotify's Basic Pitch model (ICASSP 2022), run on OpenVINO from its ONNX file, incrementally.

The ``basic-pitch`` 0.4.0 wheel ships the trained model as ``saved_models/icassp_2022/nmp.onnx`` (230 KB); its
metadata pulls TensorFlow, which is not needed: ``pip install --no-deps basic-pitch==0.4.0`` installs the model
(its package is never imported), or ``$RIFFSTREAM_BASIC_PITCH`` names the file. The pre- and post-processing
here follow Basic Pitch's own (``basic_pitch/inference.py`` and ``note_creation.py``, Apache 2.0), without its
TensorFlow, librosa and resampy imports:

* mono audio at 22050 Hz, 3840 samples of silence in front, cut into windows of 43844 samples every 36164
  (30 frames of overlap); the model gives 172 frames of note, onset and contour activations per window, of
  which the middle 142 are kept;
* notes start at onset peaks of at least 0.5 (onsets are also inferred from rises of the note activation) and
  last while the note activation stays over 0.3 (11 frames of tolerance); notes of 11 frames (128 ms) or less
  are dropped; the "melodia trick" then takes notes from the activation left over.

:class:`NoteStream` does this as audio arrives, so a live stream's notes are written as it plays: it decodes
notes once they are :data:`SETTLE` seconds old, looking :data:`LOOKBACK` seconds back for context, so a note
held longer than about :data:`SETTLE` seconds is cut there. Pitch bends are not transcribed.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import scipy.signal

from riffstream.errors import RiffstreamError
from riffstream.midi import Note

#: Basic Pitch's sample rate, hop, window and overlap (frames), and the MIDI number of its lowest bin (A0).
RATE, HOP, WINDOW, OVERLAP_FRAMES, LOWEST = 22050, 256, 43844, 30, 21
#: Samples between windows, and frames each window adds.
WINDOW_HOP = WINDOW - OVERLAP_FRAMES * HOP
KEPT_FRAMES = WINDOW // HOP + 1 - OVERLAP_FRAMES
#: Seconds per output frame: the kept frames of a window cover its hop.
FRAME_SECONDS = WINDOW_HOP / KEPT_FRAMES / RATE
#: Basic Pitch's defaults: onset and frame thresholds, minimum note length (frames), tolerance below threshold.
ONSET_THRESHOLD, FRAME_THRESHOLD, MIN_NOTE_FRAMES, ENERGY_TOLERANCE = 0.5, 0.3, 11, 11
#: Seconds a note's onset must be old before it is written; seconds of activations decoded before that.
SETTLE, LOOKBACK = 4.0, 2.0
#: The model's input and outputs, as its ONNX export names them.
INPUT, NOTE, ONSET = "serving_default_input_2:0", "StatefulPartitionedCall:1", "StatefulPartitionedCall:2"
INSTALL = ("MIDI output needs Basic Pitch's model: pip install --no-deps basic-pitch==0.4.0 (its 230-KB ONNX "
           "model runs on OpenVINO; TensorFlow is not needed), or set RIFFSTREAM_BASIC_PITCH to its nmp.onnx")


def basic_pitch_model() -> Path:
    """Basic Pitch's ONNX model: ``$RIFFSTREAM_BASIC_PITCH``, else the installed ``basic-pitch`` package's (found
    without importing it); one-line RiffstreamError if there is none."""
    named = os.environ.get("RIFFSTREAM_BASIC_PITCH")
    if named:
        if not Path(named).is_file():
            raise RiffstreamError(f"RIFFSTREAM_BASIC_PITCH names {named}, which is not a file: {INSTALL}")
        return Path(named)
    spec = importlib.util.find_spec("basic_pitch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        model = Path(folder) / "saved_models" / "icassp_2022" / "nmp.onnx"
        if model.is_file():
            return model
    raise RiffstreamError(INSTALL)


@functools.lru_cache(maxsize=2)
def _compiled(path: str, threads: int):
    import openvino as ov

    core = ov.Core()
    try:
        return core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    except RuntimeError as error:
        raise RiffstreamError(f"cannot load Basic Pitch's model {path}: {' '.join(str(error).split())[:200]}") from None


class Downsampler:
    """44.1 kHz (or any even multiple of 22050 Hz) to 22050 Hz as audio arrives: a linear-phase low-pass FIR
    run with its state, every ``factor``-th sample kept, and its delay taken off, so that chunked and whole
    input give the same samples."""

    def __init__(self, rate: int, taps: int = 101) -> None:
        if rate % RATE:
            raise RiffstreamError(f"notes are transcribed from audio at a multiple of {RATE} Hz, not {rate} Hz")
        self.factor = rate // RATE
        self.filter = scipy.signal.firwin(taps, 0.9 / self.factor) if self.factor > 1 else np.ones(1)
        self._state = np.zeros(len(self.filter) - 1)
        self._delay = (len(self.filter) - 1) // 2  # the filter's delay, in input samples
        self._skip = self._delay
        self._phase = 0

    def __call__(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """The next 22050-Hz samples; ``last`` flushes the filter's delay."""
        samples = np.asarray(samples, np.float64)
        if last:
            samples = np.concatenate([samples, np.zeros(self._delay)])
        if not len(samples):
            return np.zeros(0, np.float32)
        filtered, self._state = scipy.signal.lfilter(self.filter, 1.0, samples, zi=self._state)
        drop = min(self._skip, len(filtered))
        self._skip -= drop
        filtered = filtered[drop:]
        kept = filtered[(-self._phase) % self.factor :: self.factor]
        self._phase = (self._phase + len(filtered)) % self.factor
        return kept.astype(np.float32)


def decode_notes(notes: np.ndarray, onsets: np.ndarray) -> list[tuple[int, int, int, float]]:
    """Basic Pitch's note decoding of (frames, 88) note and onset activations: (start frame, end frame, MIDI
    pitch, amplitude) for every note, onset-led notes first, then the melodia trick's."""
    frames = notes.shape[0]
    diffs = [np.concatenate([np.zeros((n, 88)), notes])[n:] - np.concatenate([np.zeros((n, 88)), notes])[:-n]
             for n in (1, 2)]
    rise = np.clip(np.min(diffs, axis=0), 0, None)
    rise[:2] = 0
    if rise.max() > 0:
        onsets = np.maximum(onsets, onsets.max() * rise / rise.max())
    peaks = np.zeros_like(onsets)
    found = scipy.signal.argrelmax(onsets, axis=0)
    peaks[found] = onsets[found]
    starts, bins = np.nonzero(peaks >= ONSET_THRESHOLD)
    energy = notes.astype(np.float64).copy()
    events = []

    def clear(begin: int, end: int, pitch: int) -> None:
        energy[begin:end, max(pitch - 1, 0) : pitch + 2] = 0

    for start, pitch in zip(starts[::-1], bins[::-1]):
        if start >= frames - 1:
            continue
        i, below = start + 1, 0
        while i < frames - 1 and below < ENERGY_TOLERANCE:
            below = below + 1 if energy[i, pitch] < FRAME_THRESHOLD else 0
            i += 1
        i -= below
        if i - start <= MIN_NOTE_FRAMES:
            continue
        clear(start, i, pitch)
        events.append((int(start), int(i), int(pitch) + LOWEST, float(notes[start:i, pitch].mean())))
    while energy.size and energy.max() > FRAME_THRESHOLD:
        middle, pitch = np.unravel_index(np.argmax(energy), energy.shape)
        energy[middle, pitch] = 0
        ends = []
        for step, limit in ((1, frames - 1), (-1, 0)):
            i, below = middle + step, 0
            while (i < limit if step > 0 else i > limit) and below < ENERGY_TOLERANCE:
                below = below + 1 if energy[i, pitch] < FRAME_THRESHOLD else 0
                clear(i, i + 1, pitch)
                i += step
            ends.append(i - step - step * below)
        end, start = ends
        if end - start <= MIN_NOTE_FRAMES:
            continue
        events.append((int(start), int(end), int(pitch) + LOWEST, float(notes[start:end, pitch].mean())))
    return events


class NoteStream:
    """Audio in, notes out, as the audio arrives: :meth:`feed` mono audio at ``rate`` and get the notes that
    have settled; :meth:`finish` gives the rest. Times are seconds from the first sample fed. The model runs
    on ``threads`` OpenVINO threads (1: it stays out of the way of the music model)."""

    def __init__(self, rate: int, threads: int = 1) -> None:
        self.model = _compiled(str(basic_pitch_model()), threads)
        self.downsample = Downsampler(rate)
        self._audio = np.zeros(OVERLAP_FRAMES * HOP // 2, np.float32)  # Basic Pitch's silence in front
        self._audio_start = 0  # the padded input's sample at _audio[0]
        self._fed = 0  # 22050-Hz samples fed
        self._notes = np.zeros((0, 88), np.float32)
        self._onsets = np.zeros((0, 88), np.float32)
        self._first_frame = 0  # the frame at _notes[0]
        self._frames = 0  # frames made so far
        self._decoded = 0  # notes starting before this frame have been given out

    def feed(self, samples: np.ndarray) -> list[Note]:
        """Take the next mono samples; the notes that settled."""
        self._take(self.downsample(samples))
        settled = self._frames - math.ceil(SETTLE / FRAME_SECONDS)
        return self._decode(settled) if settled - self._decoded >= KEPT_FRAMES else []

    def finish(self) -> list[Note]:
        """The audio has ended: every note not given out yet."""
        self._take(self.downsample(np.zeros(0), last=True))
        total = math.floor(self._fed * (RATE // HOP) / RATE)
        while self._frames < total:
            self._window(pad=True)
        return self._decode(total)

    def _take(self, samples: np.ndarray) -> None:
        self._fed += len(samples)
        self._audio = np.concatenate([self._audio, samples])
        while len(self._audio) >= WINDOW:
            self._window()

    def _window(self, pad: bool = False) -> None:
        """Run the model on the next window (zero-padded at the end when ``pad``) and keep its middle frames."""
        window = self._audio[:WINDOW]
        if pad:
            window = np.pad(window, (0, WINDOW - len(window)))
        out = self.model(window[None, :, None])
        half = OVERLAP_FRAMES // 2
        self._notes = np.concatenate([self._notes, out[NOTE][0, half:-half]])
        self._onsets = np.concatenate([self._onsets, out[ONSET][0, half:-half]])
        self._frames += KEPT_FRAMES
        self._audio = self._audio[WINDOW_HOP:]

    def _decode(self, until: int) -> list[Note]:
        """Notes starting in [decoded, until), from the activations since ``LOOKBACK`` before them."""
        first = self._first_frame
        begin = max(first, self._decoded - math.ceil(LOOKBACK / FRAME_SECONDS))
        notes, onsets = self._notes[begin - first :], self._onsets[begin - first :]
        end = min(until, self._frames) - begin
        found = [Note((begin + start) * FRAME_SECONDS, (begin + stop) * FRAME_SECONDS, pitch,
                      max(1, round(127 * amplitude)))
                 for start, stop, pitch, amplitude in decode_notes(notes, onsets)
                 if self._decoded <= begin + start < begin + end]
        self._decoded = max(self._decoded, begin + end)
        keep = max(first, self._decoded - math.ceil(LOOKBACK / FRAME_SECONDS))
        self._notes, self._onsets = self._notes[keep - first :], self._onsets[keep - first :]
        self._first_frame = keep
        return sorted(found, key=lambda note: (note.start, note.pitch))


def transcribe(audio: np.ndarray, rate: int) -> list[Note]:
    """Every note of ``audio`` ((channels, samples) or mono, at a multiple of 22050 Hz), in onset order."""
    mono = np.atleast_2d(np.asarray(audio, np.float32)).mean(axis=0)
    stream = NoteStream(rate)
    return stream.feed(mono) + stream.finish()
