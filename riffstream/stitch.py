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
4. **Loudness on a long time scale** (``riffstream.loudness``): a slow follower corrects
   only drift, holding the last five minutes near the target (-16 LUFS by default) and
   leaving the contour carried across the seams alone; a look-ahead limiter holds true
   peaks below -1 dBTP. Its gain is constant over each clip's overlaps, so it never
   steps at a seam.

``ClipStitcher`` is a plain object with no threads: the stream's consumer thread and the
``image-to-audio`` command both feed it images, so files and live play are stitched alike.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.loudness import LIMITER_CEILING, LoudnessFollower, limit_peaks
from riffstream.phase import DEFAULT_ITERATIONS, reconstruct
from riffstream.spectrogram import SpectrogramParams, mel_from_image, params_for_image

#: Seconds by which consecutive clips overlap and crossfade. On real music (benchmarks/seams.py)
#: seams are within 0.3 dB of the interior on average at 0.5 s and at 1 s; the longer overlap
#: gives the level carried across a seam twice the columns to be measured on.
DEFAULT_CROSSFADE = 1.0
#: Target long-term loudness, LUFS: AES TD1004's recommendation for streaming, and Apple
#: Music's level. The louder -14 of other services leaves 13 dB for peaks under -1 dBTP,
#: and audio rebuilt from spectrograms peaks 15 to 22 dB over its loudness (about 4 dB
#: more than the music it was cut from; benchmarks/seams.py's corpus): at -14 the limiter
#: took 2 to 9 dB (6 on average) off its peaks, and even a perfectly still gain lost 0.8 dB
#: of spectral convergence to ``--loudness off``; at -16 it gained 2.3.
DEFAULT_LOUDNESS = -16.0
#: Seconds at each clip edge kept out of the crossfade: half the 100-ms analysis window.
EDGE_GUARD = 0.05
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
        self._tail: np.ndarray | None = None
        self._lead_in: np.ndarray | None = None
        self._mel_tail: np.ndarray | None = None  # the last clip's mel over its closing overlap
        self._contour = 1.0  # the last clip's gain relative to the first, from the overlaps
        self._contour_rms = 0.0  # the last clip's RMS at that gain
        self._follower = LoudnessFollower(loudness, self.params.sample_rate, self.params.channels) if (
            loudness is not None) else None
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
        if self._follower is not None:
            audio = self._follower.level(audio, before * self.params.hop_length, after * self.params.hop_length)
        else:
            audio = limit_peaks(audio, self.params.sample_rate, LIMITER_CEILING)
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


def stitch_images(images: list[Image.Image], params: SpectrogramParams | None = None,
                  crossfade: float = DEFAULT_CROSSFADE, iterations: int = DEFAULT_ITERATIONS,
                  loudness: float | None = DEFAULT_LOUDNESS, continuity: bool = True) -> np.ndarray:
    """Several spectrogram images as one continuous (channels, samples) signal."""
    stitcher = ClipStitcher(params, crossfade, iterations, loudness, continuity)
    parts = [stitcher.add(image) for image in images]
    parts.append(stitcher.finish())
    return np.concatenate(parts, axis=1)
