"""Tempo lock: the beat grid clips start on, and the drum loop every clip starts from.

Riffusion's web app held its tempo through seed images: spectrograms of drum loops that
img2img repainted at a strength that kept their beat. Here the loop is synthesised in
code at any tempo (kick, snare and hats; no sample files), or taken from the user's own
audio, and laid on one grid that runs through the whole stream:

* **Clips start on the grid.** Consecutive clips start a whole number of bars apart when a
  bar count fits the crossfade, else a whole number of beats. A beat is rarely a whole
  number of 10-ms columns, so each clip starts at the grid position *rounded* to a column:
  a seam's overlap varies by a column, the grid never drifts by more than half a column,
  and the error never accumulates.
* **Each clip's starting loop is cut from where the clip starts in the bar**, to the
  sample: clip ``n``'s init image is the spectrogram of the loop over exactly the stream
  time the clip covers, so its beats fall on the stream's beat times.

Everything here is a pure function of its arguments or frozen data; no threads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from riffstream.checks import Limits, check_number
from riffstream.errors import RiffstreamError
from riffstream.spectrogram import SpectrogramParams, image_from_mel, mel_from_audio

#: Tempi --bpm accepts, beats per minute.
BPM = Limits(30, 300, unit="BPM")
#: Beats in a bar (4/4 time).
BEATS_PER_BAR = 4
#: A whole-bar advance is taken if its overlap is within this factor of the crossfade asked for.
BAR_FIT = 2.0
#: Smallest overlap a seam may have, seconds: the stitcher's crossfade needs room for its guards.
MIN_OVERLAP = 0.25


def check_bpm(bpm: float, name: str = "--bpm") -> float:
    """``bpm`` if it is a usable tempo; one-line RiffstreamError otherwise."""
    return check_number(bpm, name, BPM)


@dataclass(frozen=True)
class BeatGrid:
    """Where clips start at ``bpm``: every ``advance`` columns (a whole number of beats), rounded.

    ``columns_per_beat`` is exact (fractional); :meth:`start` is clip ``n``'s first column,
    counted from the grid's origin, and :meth:`offset` how far (in samples) that rounded
    column lies from the exact grid position, which the clip's starting loop makes up.
    """

    bpm: float
    beats_per_clip: int
    columns_per_beat: float
    hop_length: int

    @property
    def advance(self) -> float:
        """Exact columns from one clip's start to the next."""
        return self.beats_per_clip * self.columns_per_beat

    def start(self, n: int) -> int:
        """Clip ``n``'s first column, from the origin: the exact grid position rounded."""
        return math.floor(n * self.advance + 0.5)

    def offset(self, n: int) -> float:
        """Samples from clip ``n``'s exact grid position to its first column (within half a column)."""
        return (self.start(n) - n * self.advance) * self.hop_length


def beat_grid(bpm: float, params: SpectrogramParams, width: int, overlap: int) -> BeatGrid:
    """The grid for ``width``-column clips that should overlap by about ``overlap`` columns.

    Whole bars are preferred: the bar count whose overlap is nearest ``overlap``, if that
    overlap is within :data:`BAR_FIT` of it. Otherwise the nearest whole number of beats.
    The overlap always stays between :data:`MIN_OVERLAP` and half a clip.
    """
    check_bpm(bpm)
    columns_per_beat = 60.0 / bpm * 1000.0 / params.step_size_ms
    low = max(math.ceil(MIN_OVERLAP * 1000 / params.step_size_ms), 1)
    high = width // 2 - 1

    def overlaps(beats: int) -> tuple[int, int]:  # least and most overlap the rounding gives
        return width - math.ceil(beats * columns_per_beat), width - math.floor(beats * columns_per_beat)

    def fits(beats: int) -> bool:
        least, most = overlaps(beats)
        return beats >= 1 and least >= low and most <= high

    def miss(beats: int) -> float:
        return abs(width - beats * columns_per_beat - overlap)

    target = max(overlap, 1)
    bars = [b * BEATS_PER_BAR for b in range(1, width // max(1, int(BEATS_PER_BAR * columns_per_beat)) + 2)
            if fits(b * BEATS_PER_BAR)]
    bars = [b for b in bars if target / BAR_FIT <= width - b * columns_per_beat <= target * BAR_FIT]
    beats = bars or [b for b in range(1, int(width / columns_per_beat) + 1) if fits(b)]
    if not beats:
        raise RiffstreamError(
            f"at {bpm:g} BPM a beat lasts {60 / bpm:.2f} s: no whole number of beats fits a "
            f"{params.duration_of(width):.2f}-s clip with room to crossfade; choose a faster tempo or a wider clip"
        )
    return BeatGrid(float(bpm), min(beats, key=miss), columns_per_beat, params.hop_length)


# ---------------------------------------------------------------------- the drum loop

#: Seconds each voice rings for.
KICK_DECAY, SNARE_DECAY, HAT_DECAY = 0.30, 0.18, 0.05


@functools.lru_cache(maxsize=8)
def _voices(sample_rate: int) -> dict[str, np.ndarray]:
    """One hit of each drum, float64, synthesised: a pitch-swept sine kick, a noise-and-tone
    snare, and high-passed noise hats (with a fixed noise seed, so every run is the same)."""
    import scipy.signal

    rng = np.random.default_rng(1234)

    def time(decay: float) -> np.ndarray:
        return np.arange(int(decay * sample_rate)) / sample_rate

    t = time(KICK_DECAY)
    pitch = 45.0 + 75.0 * np.exp(-t / 0.03)  # 120 Hz falling to 45 Hz
    kick = np.sin(2 * np.pi * np.cumsum(pitch) / sample_rate) * np.exp(-t / 0.09)
    kick[: int(0.002 * sample_rate)] += rng.standard_normal(int(0.002 * sample_rate)) * 0.3  # the beater's click
    t = time(SNARE_DECAY)
    body = np.sin(2 * np.pi * 185.0 * t) * np.exp(-t / 0.04)
    band = scipy.signal.butter(2, [1500, 7000], btype="bandpass", fs=sample_rate, output="sos")
    rattle = scipy.signal.sosfilt(band, rng.standard_normal(len(t))) * np.exp(-t / 0.05)
    snare = 0.6 * body + 1.6 * rattle
    t = time(HAT_DECAY)
    high = scipy.signal.butter(4, 6000, btype="highpass", fs=sample_rate, output="sos")
    hat = scipy.signal.sosfilt(high, rng.standard_normal(len(t))) * np.exp(-t / 0.012)
    voices = {"kick": 0.9 * kick, "snare": 0.5 * snare, "hat": 0.25 * hat}
    for voice in voices.values():
        voice.setflags(write=False)
    return voices


def _pattern(beat: int) -> list[tuple[str, float]]:
    """The hits of one beat of a 4/4 bar, as (voice, fraction of the beat): a kick on beats 1
    and 3, a snare on 2 and 4, hats on every eighth note (the off-beat one softer)."""
    position = beat % BEATS_PER_BAR
    hits = [("kick" if position in (0, 2) else "snare", 0.0), ("hat", 0.0), ("hat", 0.5)]
    return hits


def drum_loop(bpm: float, start: float, length: int, sample_rate: int) -> np.ndarray:
    """``length`` samples of the drum loop at ``bpm``, from ``start`` samples after a downbeat.

    Beat ``b`` falls exactly at ``b * 60 / bpm`` seconds, rounded to the sample; hits that
    began before ``start`` ring on into the window. Mono float32, peaks below 1.
    """
    check_bpm(bpm)
    voices = _voices(sample_rate)
    beat_samples = 60.0 / bpm * sample_rate
    ring = max(len(v) for v in voices.values())
    out = np.zeros(length, np.float64)
    first = math.floor((start - ring) / beat_samples)
    last = math.ceil((start + length) / beat_samples)
    for beat in range(first, last + 1):
        for voice, fraction in _pattern(beat):
            onset = math.floor((beat + fraction) * beat_samples + 0.5) - math.floor(start + 0.5)
            sound = voices[voice] * (0.6 if fraction else 1.0)
            begin, end = max(onset, 0), min(onset + len(sound), length)
            if begin < end:
                out[begin:end] += sound[begin - onset : end - onset]
    return (out / 1.5).astype(np.float32)


def beat_times(bpm: float, seconds: float) -> np.ndarray:
    """The loop's beat times in ``[0, seconds)``, seconds."""
    return np.arange(0.0, seconds, 60.0 / bpm)


def loop_audio(bpm: float, samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """A user's loop fitted to whole bars at ``bpm``: resampled by the few percent it needs, mono float32.

    The loop is taken to start on a downbeat; its bar count is the nearest whole number.
    """
    import scipy.signal

    mono = np.atleast_2d(np.asarray(samples, np.float64)).mean(axis=0)
    bar = BEATS_PER_BAR * 60.0 / bpm * sample_rate
    bars = max(1, round(len(mono) / bar))
    target = round(bars * bar)
    if abs(len(mono) / target - 1) > 0.15:
        raise RiffstreamError(
            f"the loop lasts {len(mono) / sample_rate:.2f} s: not close to a whole number of bars at {bpm:g} BPM "
            f"({bar / sample_rate:.2f} s a bar)"
        )
    if len(mono) != target:
        mono = scipy.signal.resample(mono, target)
    return mono.astype(np.float32)


def tiled_loop(loop: np.ndarray, start: float, length: int) -> np.ndarray:
    """``length`` samples of ``loop`` repeated forever, from ``start`` samples after its beginning."""
    first = math.floor(start) % len(loop)
    repeats = -(-(first + length) // len(loop))
    return np.tile(loop, repeats)[first : first + length]


def loop_image(audio_at, start: float, width: int, params: SpectrogramParams):
    """The spectrogram image of ``width`` columns of a loop, its first column at sample ``start``.

    ``audio_at(start, length)`` gives the loop's samples; a margin of half an FFT on each
    side means the edge columns see the loop, not padding. The image carries no level (EXIF
    max value of its own), as a generated clip does not.
    """
    margin = -(-params.n_fft // 2 // params.hop_length) * params.hop_length
    audio = audio_at(start - margin, (width - 1) * params.hop_length + 2 * margin + 1)
    mel = mel_from_audio(audio[None, :].astype(np.float64), params)
    skip = margin // params.hop_length
    return image_from_mel(mel[..., skip : skip + width], params)


def placed_audio(track: np.ndarray, start: float, length: int) -> np.ndarray:
    """``length`` samples of ``track`` from sample ``start``, silence where that runs outside it."""
    first = math.floor(start)
    out = np.zeros(length, np.float32)
    begin, end = max(first, 0), min(first + length, len(track))
    if begin < end:
        out[begin - first : end - first] = track[begin:end]
    return out


@dataclass(frozen=True)
class TempoMap:
    """Tempo changes in time: (seconds, BPM) pairs in time order, the first at 0; a BPM of None is no tempo lock.

    A MIDI file's tempo map, placed at stream time: clips take the tempo at their centre, and where it changes
    the grid starts again, as it does at a timeline's tempo change.
    """

    changes: tuple[tuple[float, float | None], ...]

    def bpm_at(self, seconds: float) -> float | None:
        """The tempo in force at ``seconds`` (None: no tempo lock there)."""
        bpm = None
        for start, tempo in self.changes:
            if start > seconds:
                break
            bpm = tempo
        return bpm

    @property
    def tempi(self) -> list[float]:
        """Every tempo it sets, sorted, without repeats."""
        return sorted({bpm for _, bpm in self.changes if bpm is not None})

    def beats(self, end: float) -> np.ndarray:
        """Its beat times in ``[0, end)``, seconds: each tempo's beats counted from where it starts."""
        times = []
        for n, (start, bpm) in enumerate(self.changes):
            stop = min(end, self.changes[n + 1][0]) if n + 1 < len(self.changes) else end
            if bpm is not None:
                times.extend(start + beat_times(bpm, max(0.0, stop - start) - 1e-9))
        return np.asarray(times)


# ---------------------------------------------------------------------- where clips fall


@dataclass(frozen=True)
class Slot:
    """Where clip ``index`` falls in the stream.

    ``start`` is its first column, counted from the stream's start; ``advance`` the columns
    to the next clip's start (the clip's width less the overlap it shares with the next).
    Under a tempo lock, ``bpm`` is the tempo and ``loop_start`` how many samples after the
    tempo's first downbeat the clip's first column lies: where its starting loop is cut from.
    """

    index: int
    start: int
    advance: int
    bpm: float | None = None
    loop_start: float = 0.0


#: Clips whose layout is kept to lay out again from.
KEEP_LAID = 256


class ClipLayout:
    """Lays clips out in time, one after another: every ``width - overlap`` columns, or on a beat grid.

    ``tempo_at(seconds)`` gives the tempo in force at a time (None: no tempo lock there); a
    clip takes the tempo at its centre, and where the tempo changes the grid starts again
    (a downbeat) at that clip's first column. Clips are laid out in order.
    """

    def __init__(self, params: SpectrogramParams, width: int, overlap: int,
                 tempo_at: Callable[[float], float | None] | None = None) -> None:
        self.params, self.width, self.overlap = params, width, overlap
        self.tempo_at = tempo_at or (lambda seconds: None)
        self._next = (0, 0)  # (index, start column) of the next clip to lay out
        self._grid: tuple[BeatGrid, int, int] | None = None  # (grid, first clip on it, its start column)
        # The recent clips' slots and the grid before each, to lay out again from (a re-plan reaches back
        # no further than the clips in flight).
        self._laid: dict[int, tuple[Slot, tuple[BeatGrid, int, int] | None]] = {}

    def seconds(self, columns: float) -> float:
        """Columns as seconds."""
        return columns * self.params.step_size_ms / 1000

    def slot_of(self, index: int) -> Slot:
        """Clip ``index``'s slot, already laid out."""
        return self._laid[index][0]

    def rewind(self, index: int) -> None:
        """Lay out again from clip ``index``, as if no later clip had been laid out."""
        if index in self._laid:
            slot, self._grid = self._laid[index]
            self._next = (index, slot.start)
            for later in [n for n in self._laid if n >= index]:
                del self._laid[later]

    def shorten(self, index: int, advance: int) -> None:
        """Clip ``index``, the last laid out, is cut short: the next clip starts ``advance`` columns after it."""
        slot, grid = self._laid[index]
        if self._next[0] != index + 1:
            raise ValueError(f"only the last clip laid out can be cut short, not clip {index}")
        self._laid[index] = (replace(slot, advance=advance), grid)
        self._next = (index + 1, slot.start + advance)

    def slot(self, index: int) -> Slot:
        """Lay out clip ``index``: the next one after the last laid out."""
        expected, start = self._next
        grid_before = self._grid
        if index != expected:
            raise ValueError(f"clips are laid out in order: expected clip {expected}, not {index}")
        bpm = self.tempo_at(self.seconds(start + self.width / 2))
        if bpm is None:
            self._grid = None
            slot = Slot(index, start, self.width - self.overlap)
        else:
            if self._grid is None or self._grid[0].bpm != bpm:
                self._grid = (beat_grid(bpm, self.params, self.width, self.overlap), index, start)
            grid, first, origin = self._grid
            n = index - first
            slot = Slot(index, start, origin + grid.start(n + 1) - start, bpm,
                        (start - origin) * self.params.hop_length)
        self._next = (index + 1, start + slot.advance)
        self._laid[index] = (slot, grid_before)
        self._laid.pop(index - KEEP_LAID, None)
        return slot

    def centre(self, slot: Slot) -> float:
        """Where the middle of ``slot``'s clip falls, seconds from the stream's start."""
        return self.seconds(slot.start + self.width / 2)


def clips_to_cover(params: SpectrogramParams, width: int, overlap: int, frames: int,
                   tempo_at: Callable[[float], float | None] | None = None) -> int:
    """How many clips laid out as :class:`ClipLayout` does cover ``frames`` samples."""
    layout = ClipLayout(params, width, overlap, tempo_at)
    index = 0
    while True:
        slot = layout.slot(index)
        if (slot.start + width) * params.hop_length >= frames:
            return index + 1
        index += 1


class LoopImages:
    """The starting image of each clip under a tempo lock, cut from the loop where the clip starts.

    ``loop`` is the user's loop (mono, at the params' sample rate; fitted to whole bars at
    each tempo by :func:`loop_audio`), or None for the synthesised drums. An image for the
    same tempo and place in the loop is made once: a grid that advances by whole bars at a
    tempo of a whole number of columns per bar repeats a single image.
    """

    def __init__(self, params: SpectrogramParams, width: int, loop: np.ndarray | None = None,
                 cache_size: int = 64) -> None:
        self.params, self.width, self.loop = params, width, loop
        self._fitted = functools.lru_cache(maxsize=8)(self._fit)
        self._make = functools.lru_cache(maxsize=cache_size)(self._image)

    def _fit(self, bpm: float) -> np.ndarray:
        return loop_audio(bpm, self.loop, self.params.sample_rate)

    def key(self, slot: Slot) -> tuple[float, int]:
        """(tempo, sample offset into the loop): clips with the same key start from the same image."""
        if slot.bpm is None:
            raise ValueError("a clip with no tempo has no loop")
        period = (len(self._fitted(slot.bpm)) if self.loop is not None
                  else BEATS_PER_BAR * 60.0 / slot.bpm * self.params.sample_rate)
        return slot.bpm, round(slot.loop_start % period) % max(1, round(period))

    def image(self, slot: Slot):
        """The loop's spectrogram over the columns ``slot``'s clip covers."""
        return self._make(*self.key(slot))

    def _image(self, bpm: float, start: int):
        rate = self.params.sample_rate
        if self.loop is None:
            return loop_image(lambda at, length: drum_loop(bpm, at, length, rate), start, self.width, self.params)
        loop = self._fitted(bpm)
        return loop_image(lambda at, length: tiled_loop(loop, at, length), start, self.width, self.params)
