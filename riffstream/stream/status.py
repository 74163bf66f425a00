"""What a running stream reports: :class:`StreamStats` (progress, updated by its threads) and
:class:`StreamStatus` (one consistent reading of it, for the terminal and the server alike)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from riffstream.planner import Clip

#: The production rate that play decisions use is measured over the last this many clips (and the wait since).
RATE_CLIPS = 8


@dataclass
class StreamStats:
    """Progress, updated by the stream's threads and read by anyone (times are monotonic seconds)."""

    clips: int = 0
    audio_seconds: float = 0.0
    started: float = 0.0
    first_audio: float | None = None
    #: Time spent in the UNet's denoising loops, and the span from the first loop's start to the last one's end.
    denoise_seconds: float = 0.0
    denoise_span: tuple[float, float] | None = None
    decode_seconds: float = 0.0
    loops: int = 0
    #: What the last clip took: the model (denoising and decoding), and the audio stage (reconstructing and
    #: joining it); a steer keeps enough audio to cover both.
    last_model_seconds: float = 0.0
    last_audio_seconds: float = 0.0
    #: Times the live stream was cut short to turn to a prompt at once, and the seconds the last such steer
    #: took from the cut to its first clip joined (None before one): what the next steer must cover.
    cuts: int = 0
    last_steer_seconds: float | None = None
    #: Clips live play could not wait to polish: held to the base Griffin-Lim iterations (see Consumer.can_polish).
    unpolished: int = 0
    finished: bool = False
    #: (when, audio seconds made by then) as each of the last RATE_CLIPS + 1 clips arrived.
    arrivals: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RATE_CLIPS + 1))

    def real_time_factor(self, now: float | None = None) -> float:
        """Seconds of audio made per second of wall time since generation began."""
        elapsed = (now or time.monotonic()) - self.started
        return self.audio_seconds / elapsed if elapsed > 0 else 0.0

    def arrived(self, audio_seconds: float, now: float | None = None) -> None:
        """Note that a clip has arrived, bringing the audio made so far to ``audio_seconds``."""
        self.audio_seconds = audio_seconds
        self.arrivals.append((now or time.monotonic(), audio_seconds))

    def production_rate(self, now: float | None = None) -> float:
        """Seconds of audio made per second lately: over the last clips and the wait since the newest,
        so that it falls at once when clips stop coming (a worker lost, a slower machine). Never above
        the whole run's rate, so that a lucky burst does not start playing too early."""
        now = now or time.monotonic()
        overall = self.real_time_factor(now)
        if len(self.arrivals) < 2:
            return overall
        (first, made_then), (_, made_now) = self.arrivals[0], self.arrivals[-1]
        return min(overall, (made_now - made_then) / (now - first)) if now > first else overall


@dataclass(frozen=True)
class StreamStatus:
    """A stream as its listeners see it, at one moment."""

    clips: int  #: clips joined so far
    elapsed_seconds: float  #: since generation began
    made_seconds: float  #: audio made so far
    real_time_factor: float
    model_seconds: float  #: time the model spent denoising and decoding
    loops: int  #: times live play looped the last clip while waiting for the model
    live: bool  #: it has a clock (it is heard live), not only sinks
    underruns: int  #: the clock's (0 without one)
    playing: bool  #: the clock has started
    ahead_seconds: float  #: audio buffered ahead of the clock
    heard: Clip | None  #: the clip being heard now; None before the first
    behind: bool  #: the newest clip to enter the live stream is a loop of the last one
    queued: tuple[str, ...]  #: prompts asked for or still ahead in the journey, not yet heard
    settings: dict  #: what the clips planned from now on use
    first_prompt: str  #: what plays first (before any clip is heard)
    first_seed: int
    heard_in: float | None = None  #: seconds until the next prompt asked for is heard, once it is in the live stream
    cuts: int = 0  #: times a steer took back audio not yet heard
