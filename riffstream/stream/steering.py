"""Steering a running stream: prompts typed or posted, and settings changed, kept in one place.

Any thread (the terminal's tick, the server's event loop) asks through :class:`Steering`; the
dispatcher's thread hands what was asked to the :class:`~riffstream.planner.Journey` just before
it plans the next clip. A prompt is *queued* from the moment it is asked for until the first clip
carrying it is heard, so the terminal and the server tell the same story.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.planner import Clip, Journey, parse_blend

#: Prompts remembered until heard: more than anyone queues in the time a few clips take to be heard.
REMEMBERED_PROMPTS = 8


class Steering:
    """What listeners asked of a stream, and what its clips to come use.

    ``say(line)`` reports what became of a request (queued, ignored). ``total_clips`` is the
    length of a finite render, whose pace is fixed.
    """

    def __init__(self, journey: Journey, steps: int, negative_prompt: str | None, total_clips: int | None,
                 say: Callable[[str], None]) -> None:
        self.journey = journey
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

        None leaves a setting as it is; an empty ``negative_prompt`` clears it. The seed walks on
        from the next waypoint, so a transition in progress ends as planned.
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

    def apply(self, index: int) -> None:
        """Hand queued prompts and changes to the journey before clip ``index`` is planned."""
        with self._lock:
            prompts, self._prompts = list(self._prompts), deque()
            changes, self._changes = list(self._changes), deque()
        for prompt in prompts:
            leaving = self.journey.queue_drops_plan(index)
            try:
                self.journey.queue(prompt, index)
                self.say(f"queued a transition to {prompt!r}" + ("; the rest of the timeline is dropped" if leaving else ""))
            except RiffstreamError as error:
                self.say(f"ignored {prompt!r}: {error}")
        for change in changes:
            if "seed" in change:
                self.journey.set_seed(change["seed"], index)
            if "clips_per_transition" in change:
                self.journey.set_clips_per_transition(change["clips_per_transition"], index)
            if "steps" in change:
                self.steps = change["steps"]
            if "negative_prompt" in change:
                self.negative_prompt = change["negative_prompt"]

    # ------------------------------------------------------------------ the consumer's thread

    def entered(self, clip: Clip) -> None:
        """Clip ``clip`` has entered the live stream: it is the first heard of a prompt asked for that it turns to."""
        with self._lock:
            for asked in self._asked:
                if asked[1] is None and clip.prompt_b == asked[0]:
                    asked[1] = clip.index
