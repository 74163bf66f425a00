"""Clip planning: the path the stream walks through prompt space, one 5.12-s clip at a time.

As Riffusion's web app does, the path runs through *waypoints* ``(prompt, seed)``. Waypoint
``j`` has seed ``seed + j``; its prompt is the j-th prompt of the journey, and past the
last one the prompt stays the same while the seed keeps walking, so the music never
freezes. A clip sits at a position ``u`` on the path: between waypoints ``floor(u)`` and
``floor(u) + 1`` at ``alpha = u - floor(u)``. Its text embedding is the lerp of the two
prompts' embeddings and its starting noise the slerp of the two seeds' noise.

Endless play steps ``u`` by ``1 / clips_per_transition`` (the web app used 4 clips:
alpha 0.25, 0.5, 0.75, 1.0); a finite ``--duration`` spreads the whole journey over the
clips it needs. A prompt may be a weighted blend, ``"lofi hip hop:2 + smooth jazz:1"``:
one waypoint whose embedding is the weighted mean of its parts' (:func:`blend_embedding`).
Everything here is a pure function or plain data, no threads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from riffstream.checks import DURATION, check_number
from riffstream.errors import RiffstreamError

#: |cos| of the angle above which slerp falls back to lerp, as Riffusion does.
SLERP_DOT_THRESHOLD = 0.9995
#: Clips per transition in endless play, as Riffusion's web app (alpha 0.25 ... 1.0).
DEFAULT_CLIPS_PER_TRANSITION = 4

_SEPARATOR = re.compile(r"(?<!\S)to(?!\S)", re.IGNORECASE)
_WEIGHT = re.compile(r"^(?P<text>.*?)\s*:\s*(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$", re.DOTALL)
#: Largest weight a blend's part may have (weights are relative: only their ratios matter).
MAX_WEIGHT = 1000.0


def parse_prompts(text: str) -> list[str]:
    """Split ``"lofi to jazz to techno"`` into its prompts; every part must be non-empty (and a valid blend)."""
    parts = [part.strip() for part in _SEPARATOR.split(f" {text} ")]
    if not text.strip() or not all(parts):
        raise RiffstreamError(f"empty prompt in {text!r}: give text such as \"lofi hip hop to smooth jazz\"")
    for part in parts:
        parse_blend(part)
    return parts


def parse_blend(text: str) -> tuple[tuple[str, float], ...]:
    """The parts of a prompt and their normalised weights: ``"lofi:2 + jazz"`` -> (("lofi", 2/3), ("jazz", 1/3)).

    Parts are joined by ``+``; a part's weight is an optional ``:NUMBER`` at its end (1 if
    none). A plain prompt is one part of weight 1. Parts with the same text add up.
    """
    weights: dict[str, float] = {}
    for raw in text.split("+"):
        match = _WEIGHT.match(raw.strip())
        part, weight = (match["text"].strip(), float(match["weight"])) if match else (raw.strip(), 1.0)
        if not part:
            raise RiffstreamError(f"empty part in the blend {text!r}: write it as \"lofi hip hop:2 + smooth jazz:1\"")
        if not 0 < weight <= MAX_WEIGHT:
            raise RiffstreamError(f"the weight of {part!r} in {text!r} must be more than 0 and at most {MAX_WEIGHT:g}, "
                                  f"not {weight:g}")
        weights[part] = weights.get(part, 0.0) + weight
    total = sum(weights.values())
    return tuple((part, weight / total) for part, weight in weights.items())


def blend_embedding(encode: Callable[[str], np.ndarray], text: str) -> np.ndarray:
    """The embedding of a prompt or blend: the weighted mean of its parts' embeddings, float32."""
    parts = parse_blend(text)
    if len(parts) == 1:
        return encode(parts[0][0])
    mixed = sum(weight * np.asarray(encode(part), np.float64) for part, weight in parts)
    return np.asarray(mixed, np.float32)


@dataclass(frozen=True)
class Clip:
    """One clip of the path: ``alpha`` of the way from (prompt_a, seed_a) to (prompt_b, seed_b).

    A timeline may also give each end its own negative prompt (None: the stream's) and the
    clip its own img2img strength (None: the stream's). A path steered while a transition was
    under way starts from where the stream was: ``origin`` is then the clip it turned after, and
    end a is that clip's point (``prompt_a`` names it as a blend; its noise is that clip's noise).
    """

    index: int
    prompt_a: str
    prompt_b: str
    alpha: float
    seed_a: int
    seed_b: int
    negative_a: str | None = None
    negative_b: str | None = None
    strength: float | None = None
    origin: Clip | None = None


#: Turns on turns: a path steered again before its last turn ended starts from a point that is itself a
#: blend of points. Past this depth the oldest starting point is taken as its nearer end (its weight by then
#: is at most a few percent), so a listener who steers every second for an hour never makes a clip's noise
#: cost more than this many draws.
MAX_TURN_DEPTH = 6


def point_of(clip: Clip) -> tuple[str, Clip | None]:
    """Where ``clip`` is on the path, as the start of a new one: its prompts' blend (a prompt or a flat
    weighted blend of the prompts under it) and the clip whose noise it has, or None where that is
    one seed's (``clip`` lies on a waypoint)."""
    if clip.alpha >= 1.0 - 1e-9:
        return clip.prompt_b, None
    if clip.alpha <= 1e-9:
        return clip.prompt_a, None if clip.origin is None else _shallow(clip.origin, MAX_TURN_DEPTH)
    weights: dict[str, float] = {}
    for text, share in ((clip.prompt_a, 1.0 - clip.alpha), (clip.prompt_b, clip.alpha)):
        for part, weight in parse_blend(text):
            weights[part] = weights.get(part, 0.0) + share * weight
    label = " + ".join(part if len(weights) == 1 else f"{part}:{weight:.6g}" for part, weight in weights.items()
                       if weight > 1e-6)
    return label, _shallow(clip, MAX_TURN_DEPTH)


def clip_noise(clip: Clip, noise_for_seed: Callable[[int], np.ndarray]) -> np.ndarray:
    """A clip's starting noise: its seeds' noise slerped by ``alpha``, from its origin's noise where a turn
    started its path from a point between waypoints."""
    start = clip_noise(clip.origin, noise_for_seed) if clip.origin is not None else noise_for_seed(clip.seed_a)
    return slerp(start, noise_for_seed(clip.seed_b), clip.alpha)


def _shallow(clip: Clip, depth: int) -> Clip:
    """``clip`` with its chain of origins cut at ``depth``: the deepest kept one starts from its nearer seed."""
    if clip.origin is None:
        return clip
    if depth <= 1:
        return replace(clip, origin=None)
    return replace(clip, origin=_shallow(clip.origin, depth - 1))


def lerp(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Linear interpolation, float32 (prompt embeddings)."""
    return ((1.0 - alpha) * np.asarray(a, np.float32) + alpha * np.asarray(b, np.float32)).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation of noise, float32; lerp when the two are nearly parallel (as Riffusion)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot = float(np.sum(a64 * b64) / (np.linalg.norm(a64) * np.linalg.norm(b64)))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        return lerp(a, b, alpha)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    mixed = (math.sin((1.0 - alpha) * theta) / sin_theta) * a64 + (math.sin(alpha * theta) / sin_theta) * b64
    return mixed.astype(np.float32)


class Journey(Protocol):
    """The path a stream takes: what each clip plays, and how a change made while it runs bends it.

    The stream plans clips in order through it, and rewinds it when clips planned but not
    started are planned again. :class:`PromptJourney` walks prompts clip by clip;
    :class:`~riffstream.timeline.TimelineJourney` walks a timeline in seconds.
    """

    seed: int
    clips_per_transition: int

    def clip(self, index: int, time: float | None = None) -> Clip:
        """Plan clip ``index``, whose centre falls at ``time`` seconds."""

    def rewind(self, index: int, time: float | None = None) -> None:
        """Plan again from clip ``index``; ``time`` is where the clip before it is centred."""

    def upcoming(self, next_index: int) -> list[str]:
        """Prompts still to come after the transition in progress."""

    def queue(self, prompt: str, next_index: int) -> None:
        """Add a transition to ``prompt``; ``next_index`` is the first clip not yet planned."""

    def queue_drops_plan(self, next_index: int) -> bool:
        """Whether a prompt queued now drops prompts planned ahead (the rest of a timeline)."""

    def set_seed(self, seed: int, next_index: int) -> None:
        """Walk on from ``seed`` after the transition in progress."""

    def turn(self, next_index: int, origin: Clip, prompt: str | None = None, seed: int | None = None) -> None:
        """Turn at once: from clip ``next_index`` on, the path runs from ``origin``'s point (the clip before
        it) to ``prompt`` (None: where ``origin`` was heading) with ``seed`` (None: the walk's next), over
        the usual number of clips."""

    def set_clips_per_transition(self, clips: int, next_index: int) -> None:
        """Pace the transitions to come."""

    def tempo_time(self, seconds: float) -> float:
        """The time whose tempo clips centred at ``seconds`` lock to: ``seconds``, unless the plan that set
        the tempi was left behind, whose last tempo then holds."""


class PromptJourney:
    """The waypoints of a stream: the given prompts, then the seed walking forward on the last.

    ``clip(i)`` plans clip ``i``. With ``total_clips`` the journey through all the given
    prompts is spread evenly over that many clips (the last clip lands on the last prompt);
    without it (or with a single prompt) each transition takes ``clips_per_transition``
    clips, forever.
    ``queue(prompt)`` adds a prompt while the stream runs: the transition to it starts at
    the next waypoint the stream reaches.
    """

    def __init__(self, prompts: list[str], seed: int = 0, clips_per_transition: int = DEFAULT_CLIPS_PER_TRANSITION,
                 total_clips: int | None = None) -> None:
        if not prompts or not all(p.strip() for p in prompts):
            raise RiffstreamError("empty prompt: give at least one non-empty prompt")
        if clips_per_transition < 1:
            raise RiffstreamError(f"clips per transition must be 1 or more, not {clips_per_transition}")
        if total_clips is not None and total_clips < 1:
            raise RiffstreamError(f"a stream needs at least one clip, not {total_clips}")
        self.prompts = list(prompts)
        self.seed = int(seed)
        self.clips_per_transition = clips_per_transition
        self.total_clips = total_clips
        self._last_position = 0.0
        # Endless play: clip `index` lies at `anchor position + (index - anchor index) / clips_per_transition`.
        self._anchor = (0, 0.0)
        # (first waypoint, its seed): later waypoints walk on from the latest entry that covers them.
        self._seeds = [(0, self.seed)]
        # Waypoints that are points a turn started from: waypoint -> the clip whose point it is.
        self._origins: dict[int, Clip] = {}
        # The plan as it was before each turn, by the clip the turn started at, so a rewind past one undoes it.
        self._before_turns: list[tuple[int, tuple]] = []

    def position(self, index: int) -> float:
        """Where clip ``index`` lies on the path, in waypoints."""
        transitions = len(self.prompts) - 1
        if self.total_clips is not None and transitions > 0:
            return 0.0 if self.total_clips == 1 else transitions * index / (self.total_clips - 1)
        anchor_index, anchor_position = self._anchor
        return anchor_position + (index - anchor_index) / self.clips_per_transition

    def waypoint(self, j: int) -> tuple[str, int]:
        """(prompt, seed) of waypoint ``j``."""
        first, seed = next((first, seed) for first, seed in reversed(self._seeds) if first <= j)
        return self.prompts[min(j, len(self.prompts) - 1)], seed + j - first

    def _reached(self, next_index: int) -> int:
        """The waypoint the last planned clip is at or heading to (0 before any clip is planned)."""
        return math.ceil(self._last_position - 1e-9) if next_index > 0 else 0

    def upcoming(self, next_index: int) -> list[str]:
        """Prompts queued beyond the transition in progress."""
        return self.prompts[self._reached(next_index) + 1 :]

    def set_seed(self, seed: int, next_index: int) -> None:
        """Walk on from ``seed`` after the waypoint in progress (from the start if nothing is planned)."""
        reached = self._reached(next_index)
        first = reached + 1 if next_index > 0 else 0
        self._seeds = [entry for entry in self._seeds if entry[0] < first] + [(first, int(seed))]
        self.seed = int(seed)

    def set_clips_per_transition(self, clips: int, next_index: int) -> None:
        """Take ``clips`` clips per transition from clip ``next_index`` on, without a jump in position."""
        check_pace_change(clips, self.total_clips)
        self._anchor = (next_index, self.position(next_index))
        self.clips_per_transition = clips

    def rewind(self, index: int, time: float | None = None) -> None:
        """Plan again from clip ``index``, as if no later clip had been planned (``time``: where the clip before
        it is centred, for timelines). A turn made at or after ``index`` is undone."""
        while self._before_turns and self._before_turns[-1][0] >= index:
            _, state = self._before_turns.pop()
            self.prompts, self.seed, self._anchor, self._seeds, self._origins = state
        self._last_position = self.position(index - 1) if index > 0 else 0.0

    def turn(self, next_index: int, origin: Clip, prompt: str | None = None, seed: int | None = None) -> None:
        """Turn at once from ``origin``'s point (clip ``next_index - 1``) towards ``prompt`` with ``seed``
        (None: the prompt ``origin`` heads to; the walk's next seed), over ``clips_per_transition`` clips."""
        prompt = check_turn(prompt, self.total_clips)
        self._before_turns.append((next_index, (list(self.prompts), self.seed, self._anchor, list(self._seeds),
                                                dict(self._origins))))
        start = math.floor(self.position(next_index - 1) + 1e-9) + 1  # a waypoint no planned clip reached
        label, noise_from = point_of(origin)
        new_seed = origin.seed_b + 1 if seed is None else int(seed)
        self.prompts = [self.waypoint(j)[0] for j in range(start)] + [label, prompt or origin.prompt_b]
        self._seeds = [entry for entry in self._seeds if entry[0] < start] + [(start, origin.seed_b),
                                                                              (start + 1, new_seed)]
        self._origins = {j: clip for j, clip in self._origins.items() if j < start}
        if noise_from is not None:
            self._origins[start] = noise_from
        self._anchor = (next_index - 1, float(start))
        self._last_position = float(start)
        if seed is not None:
            self.seed = int(seed)

    def clip(self, index: int, time: float | None = None) -> Clip:
        """Plan clip ``index`` (clips are planned in order; ``queue`` only affects later ones).

        ``time``, where the clip's centre falls, is for timelines; a journey goes by clips.
        """
        u = self.position(index)
        self._last_position = u
        j = math.floor(u + 1e-9)
        alpha = u - j
        if alpha < 1e-9:  # exactly on a waypoint: the end of the previous transition
            j, alpha = max(j - 1, 0), (1.0 if j > 0 else 0.0)
        (prompt_a, seed_a), (prompt_b, seed_b) = self.waypoint(j), self.waypoint(j + 1)
        if index == 0 and alpha == 0.0:
            prompt_b, seed_b = prompt_a, seed_a
        return Clip(index, prompt_a, prompt_b, float(alpha), seed_a, seed_b, origin=self._origins.get(j))

    def queue(self, prompt: str, next_index: int) -> None:
        """Add a transition to ``prompt``; ``next_index`` is the first clip not yet planned.

        In endless play the transition starts at the next waypoint (at once if the last
        planned clip ended a transition), so it never jumps mid-transition. A finite
        journey is fixed by its duration and rejects new prompts.
        """
        prompt = check_queued(prompt, self.total_clips)
        reached = self._reached(next_index)
        # Waypoints up to `reached` are passed or in progress; later ones may be redefined.
        if reached >= len(self.prompts) - 1:
            self.prompts = [self.waypoint(j)[0] for j in range(reached + 1)] + [prompt]
        else:
            self.prompts.append(prompt)

    def queue_drops_plan(self, next_index: int) -> bool:
        """A queued prompt follows the prompts given: none is dropped."""
        return False

    def tempo_time(self, seconds: float) -> float:
        """Prompts set no tempo: the time as it is."""
        return seconds


def check_queued(prompt: str, total_clips: int | None) -> str:
    """``prompt``, stripped, if it can be queued on a journey of ``total_clips`` (None: endless)."""
    prompt = prompt.strip()
    if not prompt:
        raise RiffstreamError("empty prompt")
    parse_blend(prompt)
    if total_clips is not None:
        raise RiffstreamError("the journey of a finite --duration is fixed: new prompts go to endless streams")
    return prompt


def check_turn(prompt: str | None, total_clips: int | None) -> str | None:
    """``prompt`` (None: a new seed only), stripped, if a journey of ``total_clips`` (None: endless) can turn to it."""
    if prompt is not None:
        return check_queued(prompt, total_clips)
    if total_clips is not None:
        raise RiffstreamError("the journey of a finite --duration is fixed: its seeds cannot change")
    return None


def check_pace_change(clips: int, total_clips: int | None) -> None:
    """Refuse a new number of clips per transition that is below 1, or on a finite journey."""
    if clips < 1:
        raise RiffstreamError(f"clips per transition must be 1 or more, not {clips}")
    if total_clips is not None:
        raise RiffstreamError("the journey of a finite --duration is fixed: its pace cannot change")


def clips_for_duration(total: int, clip: int, crossfade: int) -> int:
    """How many clips of ``clip`` samples, overlapping by ``crossfade``, cover ``total`` samples.

    n clips last n*clip - (n-1)*crossfade samples.
    """
    if total <= 0:
        raise RiffstreamError("duration must be more than 0 seconds")
    if not 0 <= crossfade < clip:
        raise RiffstreamError("the crossfade must be shorter than a clip")
    return max(1, -(-(total - crossfade) // (clip - crossfade)))


def parse_duration(text: str, name: str = "--duration") -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"2.5m"``, ``"1h"`` or ``"1:30"``; must be more than 0."""
    value = text.strip().lower()
    try:
        if ":" in value:
            seconds = 0.0
            for part in value.split(":"):
                seconds = seconds * 60 + float(part)
        else:
            scale = {"s": 1, "m": 60, "h": 3600}.get(value[-1:], None)
            seconds = float(value[:-1]) * scale if scale else float(value)
    except (ValueError, OverflowError):
        raise RiffstreamError(f"cannot read duration {text!r}: use seconds (90), 2.5m, 1h or 1:30") from None
    return check_number(seconds, name, DURATION)
