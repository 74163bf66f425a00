"""Steering a running stream: prompts typed or posted, and settings changed, kept in one place.

Any thread (the terminal's tick, the server's event loop) asks through :class:`Steering`; the
dispatcher's thread hands what was asked to the :class:`~riffstream.planner.Journey` just before
it plans the next clip. A prompt is *queued* from the moment it is asked for until the first clip
carrying it is heard, so the terminal and the server tell the same story.

Two ways to steer (``--steer``). ``now`` (the default) turns at once: the path runs from the point
of the clip before the first one not yet heard (or made) towards the new prompt or seed, and the
dispatcher takes back audio not yet heard beyond what covers the making of the next clip. ``smooth``
is Riffusion's app: a new prompt waits for the transition in progress to end, and what is made
plays out.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.planner import Clip, Journey, parse_blend
from riffstream.stream.options import STEER_MODES

#: Prompts remembered until heard: more than anyone queues in the time a few clips take to be heard.
REMEMBERED_PROMPTS = 8


class Steering:
    """What listeners asked of a stream, and what its clips to come use.

    ``say(line)`` reports what became of a request (queued, ignored). ``total_clips`` is the
    length of a finite render, whose pace is fixed.
    """

    def __init__(self, journey: Journey, steps: int, negative_prompt: str | None, total_clips: int | None,
                 say: Callable[[str], None], mode: str = "now") -> None:
        if mode not in STEER_MODES:
            raise RiffstreamError(f"steer must be one of {', '.join(STEER_MODES)}, not {mode!r}")
        self.journey = journey
        self.mode = mode
        self.steps, self.negative_prompt = steps, negative_prompt
        self.total_clips = total_clips
        self.say = say
        #: The first clip not yet planned.
        self.next_clip = 0
        self._lock = threading.Lock()
        self._prompts: deque[str] = deque()  # asked for, not yet given to the journey
        self._changes: deque[dict] = deque()
        self._requested: dict = {}  # the latest value asked for of each setting: what clips to come use
        # Each prompt asked for, with the index of the first clip entering the stream with it (None until then).
        self._asked: deque[list] = deque(maxlen=REMEMBERED_PROMPTS)

    # ------------------------------------------------------------------ any thread

    def queue_prompt(self, text: str) -> None:
        """Queue a transition to ``text``, a prompt or blend (ignored when empty); a blend that cannot be read
        is a one-line RiffstreamError, raised in the caller's thread."""
        text = text.strip()
        if not text:
            return
        parse_blend(text)
        with self._lock:
            self._prompts.append(text)
            self._asked.append([text, None])

    def change_settings(self, seed: int | None = None, clips_per_transition: int | None = None,
                        steps: int | None = None, negative_prompt: str | None = None) -> dict:
        """Change settings for the clips planned from now on; returns the settings in force. A value that
        cannot be used is a one-line RiffstreamError and changes nothing.

        None leaves a setting as it is; an empty ``negative_prompt`` clears it. A new seed turns the
        path at once (``now``), or walks on from the next waypoint (``smooth``).
        """
        if seed is not None:
            check_number(seed, "seed", checks.SEED)
        if clips_per_transition is not None:
            check_number(clips_per_transition, "clips per transition", checks.CLIPS_PER_TRANSITION)
            if self.total_clips is not None:
                raise RiffstreamError("the journey of a finite --duration is fixed: its pace cannot change")
        if steps is not None:
            check_number(steps, "steps", checks.STEPS)
        change: dict = {key: value for key, value in
                        (("seed", seed), ("clips_per_transition", clips_per_transition), ("steps", steps))
                        if value is not None}
        if negative_prompt is not None:
            change["negative_prompt"] = negative_prompt.strip() or None
        with self._lock:
            self._requested.update(change)
            self._changes.append(change)
        return self.settings()

    def settings(self) -> dict:
        """The settings the clips planned from now on use, changes asked for included."""
        with self._lock:
            return {"seed": self.journey.seed, "clips_per_transition": self.journey.clips_per_transition,
                    "negative_prompt": self.negative_prompt, "steps": self.steps, **self._requested}

    def queued(self, heard: int | None) -> list[str]:
        """Prompts still to be heard: those ahead in the journey, and those asked for whose first clip is
        not yet heard (``heard``: the index of the clip being heard, None before the first)."""
        heard = -1 if heard is None else heard
        with self._lock:
            reached = [n for n, (_, index) in enumerate(self._asked) if index is not None and index <= heard]
            for _ in range(reached[-1] + 1 if reached else 0):  # heard, or passed over by a later prompt
                self._asked.popleft()
            asked = [text for text, _ in self._asked]
            upcoming = self.journey.upcoming(self.next_clip)
        return list(dict.fromkeys([*upcoming, *asked]))

    # ------------------------------------------------------------------ the dispatcher's thread

    def waiting(self) -> bool:
        """Whether a prompt or change waits to be applied (clips planned but not started are then planned again)."""
        return bool(self._prompts or self._changes)

    def turns_now(self) -> bool:
        """Whether what waits turns the path at once: a prompt or a seed, steered ``now`` in endless play (a
        finite render's journey is fixed)."""
        with self._lock:
            return (self.mode == "now" and self.total_clips is None
                    and bool(self._prompts or any("seed" in change for change in self._changes)))

    def apply(self, index: int, origin: Clip | None = None) -> None:
        """Hand queued prompts and changes to the journey before clip ``index`` is planned; ``origin``, the clip
        before it, is where a ``now`` steer turns from (None: nothing planned, so a prompt is queued)."""
        with self._lock:
            prompts, self._prompts = list(self._prompts), deque()
            changes, self._changes = list(self._changes), deque()
        for change in changes:
            if "clips_per_transition" in change:
                self.journey.set_clips_per_transition(change["clips_per_transition"], index)
            if "steps" in change:
                self.steps = change["steps"]
            if "negative_prompt" in change:
                self.negative_prompt = change["negative_prompt"]
        seeds = [change["seed"] for change in changes if "seed" in change]
        if self.mode == "now" and origin is not None and (prompts or seeds):
            self._turn(index, origin, prompts[-1] if prompts else None, seeds[-1] if seeds else None)
            return
        for prompt in prompts:
            leaving = self.journey.queue_drops_plan(index)
            try:
                self.journey.queue(prompt, index)
                self.say(f"queued a transition to {prompt!r}" + ("; the rest of the timeline is dropped" if leaving else ""))
            except RiffstreamError as error:
                self.say(f"ignored {prompt!r}: {error}")
        for seed in seeds:
            self.journey.set_seed(seed, index)

    def _turn(self, index: int, origin: Clip, prompt: str | None, seed: int | None) -> None:
        leaving = prompt is not None and self.journey.queue_drops_plan(index)
        try:
            self.journey.turn(index, origin, prompt, seed)
        except RiffstreamError as error:
            self.say(f"ignored {prompt or seed!r}: {error}")
            return
        if prompt is not None:
            self.say(f"turning to {prompt!r} now" + ("; the rest of the timeline is dropped" if leaving else ""))

    def first_entered(self) -> int | None:
        """The first clip carrying the earliest prompt asked for and not yet heard, once it has entered the live
        stream (None: it has not, or nothing waits)."""
        with self._lock:
            return next((index for _, index in self._asked), None)

    # ------------------------------------------------------------------ the consumer's thread

    def taken_back(self, index: int) -> None:
        """Clips from ``index`` on left the live stream (a steer took them back): prompts they carried wait again."""
        with self._lock:
            for asked in self._asked:
                if asked[1] is not None and asked[1] >= index:
                    asked[1] = None

    def entered(self, clip: Clip) -> None:
        """Clip ``clip`` has entered the live stream: it is the first heard of a prompt asked for that it turns to."""
        with self._lock:
            for asked in self._asked:
                if asked[1] is None and clip.prompt_b == asked[0]:
                    asked[1] = clip.index
