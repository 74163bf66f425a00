"""Joining successive spectrogram clips into one continuous piece of audio.

Riffusion's tools splice clips with hard cuts and normalise each clip on its own, so a
seam is audible every five seconds. Here each clip is joined to the one before in three
ways:

1. **Phase continuation.** Consecutive clips overlap by the crossfade length. The new
   clip's phase over the overlap is the previous clip's phase (PGHI starts from it and
   Griffin-Lim holds it), so where the two spectrograms agree the two signals are the
   same signal and add coherently instead of comb-filtering.
2. **Correlation-aware equal-power crossfade.** The fade keeps the summed power constant
   for the measured correlation ρ of the two overlapping signals: equal-power
   (cos/sin-like) for unrelated clips, equal-gain for coherent ones, so neither a dip nor
   a +3 dB bump marks the seam.
3. **Level carried across seams.** Each image is normalised to its own maximum, so a
   clip's level says nothing of the music's. Consecutive clips share the overlap, so the
   ratio of their mel magnitudes there is the gain between them: the stream follows the
   music's own rises and falls instead of forcing every clip to one loudness. Where the
   two overlaps do not show the same sound (independently generated clips), the new clip
   is matched to the loudness of the one before instead.
4. **Loudness on a long time scale**, as broadcast loudness processors work: a slow gain
   follower holds the integrated loudness (ITU-R BS.1770, via pyloudnorm; -14 LUFS by
   default) of the last ``LOUDNESS_WINDOW`` seconds at the target, so changes slower than
   that are levelled and faster ones kept. Where that would take the output's last
   ``HELD_WINDOW`` seconds more than ``HELD_BAND`` LU from the target (a long loud or
   quiet passage of dynamic music), the clip's gain moves just enough to keep them in
   the band. The gain glides across each clip's body and is constant over its overlaps,
   so it never steps at a seam; a look-ahead limiter holds true peaks below -1 dBTP.

``ClipStitcher`` is a plain object with no threads: the stream's consumer thread and the
``image-to-audio`` command both feed it images, so files and live play are stitched alike.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pyloudnorm
import scipy.ndimage
import scipy.signal
from PIL import Image

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.loudness import LoudnessWindow
from riffstream.phase import DEFAULT_ITERATIONS, reconstruct
from riffstream.spectrogram import SpectrogramParams, mel_from_image, params_for_image

#: Seconds by which consecutive clips overlap and crossfade. On real music (benchmarks/seams.py)
#: seams are within 0.3 dB of the interior on average at 0.5 s and at 1 s; the longer overlap
#: gives the level carried across a seam twice the columns to be measured on.
DEFAULT_CROSSFADE = 1.0
#: Target integrated loudness, the streaming services' norm.
DEFAULT_LOUDNESS = -14.0
#: True-peak ceiling in dBTP.
TRUE_PEAK_CEILING = -1.0
#: The limiter aims a little under the ceiling: samples at the ceiling can still peak
#: slightly above it between samples.
LIMITER_CEILING = TRUE_PEAK_CEILING - 0.2
#: Seconds at each clip edge kept out of the crossfade: half the 100-ms analysis window.
EDGE_GUARD = 0.05
#: Look-ahead of the peak limiter, in seconds.
LIMITER_LOOKAHEAD = 0.002
#: Seconds of recent audio whose integrated loudness the gain follower holds at the target.
LOUDNESS_WINDOW = 20.0
#: Every stretch of the output this long is held within this many LU of the target: the
#: 60-s integrated loudness that broadcast norms bound at ±1 LU, with a margin for the
#: stretches that do not end where a clip does.
HELD_WINDOW = 60.0
HELD_BAND = 0.6
#: A stream younger than the window is held to a band this much wider at its start,
#: narrowing as it fills: its opening seconds may rise and fall, but not so far that the
#: first full minute could not be brought back.
HELD_YOUNG_BAND = 1.0
#: Most the held window moves a clip's gain from the follower's, in dB.
HELD_CORRECTION_DB = 10.0
#: Loudness range, in LU around the target, that one clip is brought into at most: a loud
#: clip after a long quiet stretch is not raised far over the target, nor a quiet clip
#: after a loud one sunk far under it.
CLIP_LOUDNESS_RANGE = (-10.0, 3.0)
#: Overlap cells more than 30 dB under the loudest are too coarsely quantised to compare.
OVERLAP_FLOOR = 10 ** (-30 / 20)
#: Two overlaps show the same sound when their loud cells' log ratio varies this little
#: (median absolute deviation, nepers: about 1.7 dB); the 8-bit image alone adds under 0.05.
SAME_SOUND = 0.2


def overlap_frames(params: SpectrogramParams, crossfade: float) -> int:
    """Image columns two consecutive clips share for a crossfade of ``crossfade`` seconds."""
    check_number(crossfade, "crossfade", checks.CROSSFADE)
    return int(round(crossfade * 1000 / params.step_size_ms))


def stitched_length(clip_samples: int, clips: int, overlap_samples: int) -> int:
    """Samples in ``clips`` clips of ``clip_samples`` joined with ``overlap_samples`` overlaps."""
    return 0 if clips == 0 else clips * (clip_samples - overlap_samples) + overlap_samples


def crossfade(outgoing: np.ndarray, incoming: np.ndarray, guard: int = 0) -> np.ndarray:
    """Mix two overlapping (channels, n) signals with a power-preserving fade.

    The fade shape is a raised cosine s(t); the gains (1 - s)·g and s·g are normalised by
    g = 1 / sqrt((1 - s)² + s² + 2ρ(1 - s)s), which keeps the expected power constant for
    signals with correlation ρ (clipped to 0..1). The fade starts ``guard`` samples in and
    ends ``guard`` samples early, so neither clip's outermost samples, where a
    spectrogram's analysis window ran off its edge, are heard.
    """
    length = outgoing.shape[-1]
    if length == 0:
        return outgoing
    guard = min(guard, length // 4)
    ramp = np.clip((np.arange(length) + 0.5 - guard) / (length - 2 * guard), 0.0, 1.0)
    rise = np.sin(0.5 * np.pi * ramp) ** 2
    energy = np.sqrt(np.sum(outgoing**2) * np.sum(incoming**2))
    rho = float(np.clip(np.sum(outgoing * incoming) / energy, 0.0, 1.0)) if energy > 0 else 0.0
    fall = 1.0 - rise
    norm = 1.0 / np.sqrt(fall**2 + rise**2 + 2 * rho * fall * rise)
    return (outgoing * (fall * norm) + incoming * (rise * norm)).astype(np.float32)


def true_peak(audio: np.ndarray) -> np.ndarray:
    """Per-sample true-peak estimate (4x oversampling, as BS.1770), max over channels."""
    upsampled = np.abs(scipy.signal.resample_poly(audio, 4, 1, axis=-1))
    return upsampled[..., : audio.shape[-1] * 4].reshape(*audio.shape[:-1], -1, 4).max(axis=-1).max(axis=0)


def limit_peaks(audio: np.ndarray, sample_rate: int, ceiling_db: float = TRUE_PEAK_CEILING) -> np.ndarray:
    """Smooth look-ahead gain reduction so that true peaks stay under ``ceiling_db``."""
    ceiling = 10 ** (ceiling_db / 20)
    needed = np.minimum(1.0, ceiling / np.maximum(true_peak(audio), 1e-12))
    if needed.min() >= 1.0:
        return audio
    half = max(1, int(LIMITER_LOOKAHEAD * sample_rate))
    # A minimum filter wider than the smoothing window keeps every peak under the ceiling.
    gain = scipy.ndimage.uniform_filter1d(scipy.ndimage.minimum_filter1d(needed, 4 * half + 1), 2 * half + 1)
    return np.clip(audio * gain, -ceiling, ceiling).astype(np.float32)


class ClipStitcher:
    """Turns successive spectrogram images into one continuous signal, clip by clip.

    ``add(image)`` returns the audio that is final once that clip is known: everything but
    the last ``crossfade`` seconds, which wait to be mixed with the next clip.
    ``finish()`` returns that held-back tail. Clips of W columns joined with an overlap of
    k columns give (W - k) * hop new samples each, plus k * hop at the end.
    """

    def __init__(self, params: SpectrogramParams | None = None, crossfade: float = DEFAULT_CROSSFADE,
                 iterations: int = DEFAULT_ITERATIONS, loudness: float | None = DEFAULT_LOUDNESS,
                 continuity: bool = True) -> None:
        self.params = params or SpectrogramParams()
        check_number(iterations, "iterations", checks.ITERATIONS)
        if loudness is not None:
            check_number(loudness, "loudness", checks.LOUDNESS)
        self.overlap_frames = overlap_frames(self.params, crossfade)
        self.overlap = self.overlap_frames * self.params.hop_length
        self._guard = int(EDGE_GUARD * self.params.sample_rate)
        self.iterations = iterations
        self.loudness = loudness
        self.continuity = continuity
        self._meter = pyloudnorm.Meter(self.params.sample_rate)
        self._tail: np.ndarray | None = None
        self._lead_in: np.ndarray | None = None
        self._mel_tail: np.ndarray | None = None  # the last clip's mel over its closing overlap
        self._contour = 1.0  # the last clip's gain relative to the first, from the overlaps
        self._contour_rms = 0.0  # the last clip's RMS at that gain
        self._history = np.zeros((self.params.channels, 0), np.float32)  # recent audio at contour gain
        self._gain: float | None = None  # the follower's gain at the end of the last clip
        self._output = LoudnessWindow(self.params.sample_rate, HELD_WINDOW)
        self.clips = 0

    def add(self, image: Image.Image, overlap_after: int | None = None, adaptive: bool = True) -> np.ndarray:
        """Reconstruct one clip and return the audio (channels, samples) it completes.

        ``overlap_after`` is how many columns this clip shares with the next one (default:
        the crossfade's); a tempo-locked stream varies it by a column from seam to seam.
        ``adaptive=False`` holds a clip to ``iterations`` where a hard one could take up to
        four times as many (live play short of audio cannot wait for them).
        """
        params = params_for_image(image, self.params)
        if dataclasses.replace(params, max_value=self.params.max_value) != self.params:
            raise RiffstreamError("all clips of a stream must share the same spectrogram parameters")
        mel = mel_from_image(image, params)
        after = self.overlap_frames if overlap_after is None else int(overlap_after)
        before = self._lead_in.shape[1] if self._lead_in is not None else (
            self._tail.shape[-1] // self.params.hop_length if self._tail is not None else 0)
        if mel.shape[-1] <= max(before + after, 2 * after):
            raise RiffstreamError(
                f"a clip of {mel.shape[-1]} columns is too short for {before}- and {after}-column crossfades"
            )
        lead_in = self._lead_in if self.continuity and before else None
        clip = reconstruct(mel, params, self.iterations, lead_in, adaptive)
        self._lead_in = clip.spectrum[:, clip.spectrum.shape[1] - after :].copy() if after else None
        audio = clip.audio * np.float32(self._carry_level(mel, clip.audio, before))
        self._mel_tail = mel[..., mel.shape[-1] - after :] if after else None
        audio = self._level(audio, before * self.params.hop_length, after * self.params.hop_length)
        body_end = audio.shape[-1] - after * self.params.hop_length
        if self._tail is None:
            ready = audio[:, :body_end]
        else:
            overlap = self._tail.shape[-1]
            mixed = crossfade(self._tail, audio[:, :overlap], self._guard)
            ready = np.concatenate([mixed, audio[:, overlap:body_end]], axis=1)
        self._tail = audio[:, body_end:]
        self.clips += 1
        return ready

    def finish(self) -> np.ndarray:
        """The held-back end of the last clip; the stitcher is then empty."""
        tail = self._tail if self._tail is not None else np.zeros((self.params.channels, 0), np.float32)
        self._tail, self._lead_in, self._mel_tail = None, None, None
        return tail

    def _carry_level(self, mel: np.ndarray, audio: np.ndarray, before: int) -> float:
        """This clip's gain relative to the stream's first clip.

        Over the overlap both clips hold the same stretch of music, each scaled by its own
        image maximum, so the median log ratio of their loud mel cells is the gain between
        them. Where their overlaps do not show the same sound, the clip takes the level (RMS)
        of the one before.
        """
        previous = self._mel_tail[..., self._mel_tail.shape[-1] - before :] if self._mel_tail is not None else None
        if previous is None or not before:
            contour = self._contour  # the first clip of a stream, or one after a gap
        else:
            contour = self._overlap_gain(previous, mel[..., :before])
            if contour is None:
                # Matched by RMS, not loudness: BS.1770's gate reads a very quiet clip as silence.
                rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
                contour = self._contour_rms / rms if rms > 0 and self._contour_rms > 0 else self._contour
        self._contour = contour
        self._contour_rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) * contour
        return contour

    def _overlap_gain(self, previous: np.ndarray, current: np.ndarray) -> float | None:
        """The contour gain that makes ``current`` match ``previous`` over their overlap, or
        None where the two do not show the same sound (or too little of it to tell)."""
        # A clip's outermost columns were analysed with its edge reflected into the window:
        # only the overlap's middle holds the same sound in both clips.
        edge = int(round(self.params.padded_duration_ms / 2 / self.params.step_size_ms))
        if previous.shape != current.shape or previous.shape[-1] <= 2 * edge:
            return None
        previous, current = previous[..., edge:-edge], current[..., edge:-edge]
        loud = (previous > OVERLAP_FLOOR * previous.max()) & (current > OVERLAP_FLOOR * current.max())
        if loud.sum() < 64:
            return None
        log_ratio = np.log(previous[loud]) - np.log(current[loud])
        middle = float(np.median(log_ratio))
        if np.median(np.abs(log_ratio - middle)) > SAME_SOUND:
            return None
        return self._contour * float(np.exp(middle))

    def _level(self, audio: np.ndarray, lead: int, tail: int) -> np.ndarray:
        """Apply the slow loudness follower's gain, then limit true peaks.

        The follower's gain makes the last ``LOUDNESS_WINDOW`` seconds (this clip's new
        audio included) integrate to the target, and moves only as far as the output's
        last ``HELD_WINDOW`` seconds allow. It holds the previous clip's gain over the
        first ``lead`` samples (the crossfade with that clip), glides in dB across the
        body and holds the new gain over the last ``tail`` samples. A silent stretch keeps
        the gain it had.
        """
        if self.loudness is None:
            return limit_peaks(audio, self.params.sample_rate, LIMITER_CEILING)
        window = int(LOUDNESS_WINDOW * self.params.sample_rate)
        self._history = np.concatenate([self._history, audio[:, lead:]], axis=1)[:, -window:]
        recent, clip = self._loudness_of(self._history), self._loudness_of(audio)
        gain = self._gain if self._gain is not None else 1.0
        if np.isfinite(recent) and np.isfinite(clip):
            low, high = (10 ** ((self.loudness + bound - clip) / 20) for bound in CLIP_LOUDNESS_RANGE)
            gain = float(np.clip(10 ** ((self.loudness - recent) / 20), low, high))
        start = self._gain if self._gain is not None else gain

        def output(log_gain: float) -> np.ndarray:
            return audio * _gain_curve(audio.shape[-1], lead, tail, start, np.exp(log_gain)).astype(np.float32)

        # The held window: the output's last minute were this clip to come at a gain, before
        # the limiter and after it (limiting a dynamic passage takes loudness with it).
        unlimited = self._output.weigh(audio[:, lead:])
        band = HELD_BAND + HELD_YOUNG_BAND * (1.0 - self._output.filled)

        def before_limiting(log_gain: float) -> float:
            curve = _gain_curve(audio.shape[-1], lead, tail, start, np.exp(log_gain))[lead:]
            return self._output.loudness_with(unlimited * np.square(curve))

        log_gain = _hold(before_limiting, np.log(gain), self.loudness, band)
        limited = limit_peaks(output(log_gain), self.params.sample_rate, LIMITER_CEILING)
        power = self._output.weigh(limited[:, lead:])
        after_limiting = self._output.loudness_with(power)
        taken = before_limiting(log_gain) - after_limiting
        if taken > 0.05 and after_limiting < self.loudness - band:
            log_gain = _hold(lambda value: before_limiting(value) - taken, log_gain, self.loudness, band)
            limited = limit_peaks(output(log_gain), self.params.sample_rate, LIMITER_CEILING)
            power = self._output.weigh(limited[:, lead:])
        self._gain = float(np.exp(log_gain))
        self._output.push(power)
        return limited

    def _loudness_of(self, audio: np.ndarray) -> float:
        """Integrated loudness in LUFS; NaN for a clip shorter than BS.1770's 400-ms block."""
        try:
            return float(self._meter.integrated_loudness(audio.T.astype(np.float64)))
        except ValueError:
            return float("nan")


def _hold(loudness: Callable[[float], float], log_gain: float, target: float, band: float) -> float:
    """``log_gain``, or the log gain nearest it at which ``loudness`` lies within ``band`` LU
    of ``target`` (searched within ``HELD_CORRECTION_DB``; loudness rises with the gain)."""
    level = loudness(log_gain)
    if not np.isfinite(level) or abs(level - target) <= band:
        return log_gain
    goal = target + np.sign(level - target) * band
    low, high = sorted((log_gain, log_gain + np.sign(goal - level) * HELD_CORRECTION_DB / 20 * np.log(10)))
    for _ in range(14):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if loudness(middle) < goal else (low, middle)
    return 0.5 * (low + high)


def _gain_curve(length: int, lead: int, tail: int, start: float, gain: float) -> np.ndarray:
    """Per-sample gain of a clip: ``start`` over the first ``lead`` samples, gliding in dB to
    ``gain`` across the body, and ``gain`` over the last ``tail``."""
    glide = max(length - lead - tail, 1)
    return np.exp(np.concatenate([
        np.full(lead, np.log(start)),
        np.linspace(np.log(start), np.log(gain), glide, endpoint=False),
        np.full(length - lead - glide, np.log(gain)),
    ]))


def stitch_images(images: list[Image.Image], params: SpectrogramParams | None = None,
                  crossfade: float = DEFAULT_CROSSFADE, iterations: int = DEFAULT_ITERATIONS,
                  loudness: float | None = DEFAULT_LOUDNESS, continuity: bool = True) -> np.ndarray:
    """Several spectrogram images as one continuous (channels, samples) signal."""
    stitcher = ClipStitcher(params, crossfade, iterations, loudness, continuity)
    parts = [stitcher.add(image) for image in images]
    parts.append(stitcher.finish())
    return np.concatenate(parts, axis=1)
