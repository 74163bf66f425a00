"""Timelines: a plan for a long render or a live set, read from TOML.

.. code-block:: toml

    bpm = 90                      # optional defaults for every entry
    end = "6:00"                  # where a render (--no-play) ends (--duration overrides)

    [[entry]]
    time = "0:00"
    prompt = "lofi hip hop"

    [[entry]]
    time = "2:30"
    prompt = "lofi hip hop:1 + smooth jazz:2"   # a weighted blend
    transition = "30s"            # the turn starts at 2:30 and is complete at 3:00
    seed = 42

An entry's transition starts at its ``time`` and lasts ``transition`` (default: the
stream's clips per transition). Between transitions the music holds the entry's prompt
while its seed walks on, one step about every ``clips_per_transition`` clips, timed so that
a step lands exactly where the next transition starts. After the last entry it walks on
for ever. :class:`TimelineJourney` plans clips from this: each clip is placed by where its
centre falls in time. Everything here is pure planning, no threads.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

from riffstream import checks
from riffstream.checks import check_input_file, check_number
from riffstream.errors import RiffstreamError
from riffstream.planner import Clip, check_pace_change, check_queued, check_turn, parse_blend, point_of
from riffstream.tempo import check_bpm

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

#: Largest timeline file read, bytes.
MAX_TIMELINE_BYTES = 1_000_000
#: Most entries in a timeline.
MAX_ENTRIES = 10_000
#: Longest time a timeline may name, seconds (as --duration).
MAX_TIME = checks.DURATION.high


@dataclass(frozen=True)
class Entry:
    """One timeline entry: from ``time`` (seconds) the music turns to ``prompt`` over ``transition`` seconds.

    None means "as before" (seed: walk on; negative prompt, strength, bpm: the previous
    entry's, or the timeline's or stream's default). ``line`` is where it is in its file.
    """

    time: float
    prompt: str
    transition: float | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    bpm: float | None = None
    #: A MIDI file the clips start from, from this entry's time (its tempo map then rules the grid).
    init_midi: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Timeline:
    """A parsed timeline: its entries in time order, and defaults for all of them."""

    entries: tuple[Entry, ...]
    bpm: float | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    strength: float | None = None
    transition: float | None = None
    #: Where a render of it ends, seconds; None: it has no end (endless, or --duration decides).
    end: float | None = None
    source: str = "timeline"

    @property
    def prompts(self) -> tuple[str, ...]:
        """Every entry's prompt, in order."""
        return tuple(entry.prompt for entry in self.entries)

    def bpm_at(self, time: float) -> float | None:
        """The tempo in force at ``time`` seconds (the latest entry's that set one), or None."""
        bpm = self.bpm
        for entry in self.entries:
            if entry.time > time:
                break
            bpm = entry.bpm if entry.bpm is not None else bpm
        return bpm

    @property
    def tempi(self) -> list[float]:
        """Every tempo the timeline sets (its default and its entries'), sorted, without repeats."""
        return sorted({bpm for bpm in (self.bpm, *(entry.bpm for entry in self.entries)) if bpm is not None})

    @property
    def uses_bpm(self) -> bool:
        """Whether any part of the timeline is tempo-locked."""
        return bool(self.tempi)


_ENTRY_KEYS = {f.name for f in fields(Entry)} - {"line"}
_TOP_KEYS = {"bpm", "seed", "negative_prompt", "strength", "transition", "end", "entry"}
_ENTRY_HEADER = re.compile(r"^\[\[\s*entry\s*\]\]")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*[=.]""")
_TABLE = re.compile(r"^\[+\s*([^\]]+?)\s*\]+")
_AT = re.compile(r"^(?P<message>.*?)\s*\(at line (?P<line>\d+), column \d+\)$")


def parse_time(value, what: str = "time") -> float:
    """Seconds from ``"2:30"``, ``"1:02:00"``, ``"90s"``, ``"2.5m"``, ``"1h"`` or a number; 0 allowed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a time such as \"2:30\" or a number of seconds")
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            if ":" in text:
                parts = text.split(":")
                if len(parts) > 3 or not all(parts):
                    raise ValueError
                seconds = 0.0
                for part in parts:
                    seconds = seconds * 60 + float(part)
            else:
                scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
                seconds = float(text[:-1]) * scale if scale else float(text)
        except ValueError:
            raise ValueError(f"cannot read {what} {value!r}: use \"2:30\", \"1:02:00\", \"90s\" or seconds") from None
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIME:
        raise ValueError(f"{what} must be from 0 to {MAX_TIME / 3600:g} hours, not {value!r}")
    return seconds


def _key_lines(text: str) -> tuple[dict[str, int], list[tuple[int, dict[str, int]]]]:
    """The line of each top-level key and of each entry's header and keys, for error messages."""
    top: dict[str, int] = {}
    entries: list[tuple[int, dict[str, int]]] = []
    current: dict[str, int] | None = top
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if _ENTRY_HEADER.match(stripped):
            entries.append((number, {}))
            current = entries[-1][1]
        elif (table := _TABLE.match(stripped)) and not _KEY.match(stripped):
            top.setdefault(table[1].split(".")[0].strip("\"'"), number)
            current = None
        elif current is not None and (key := _KEY.match(stripped)):
            current.setdefault(key[1].strip("\"'"), number)
    return top, entries


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text in quotes")
    if len(value) > 1000:
        raise ValueError(f"{what} is too long (most 1000 characters)")
    return value.strip()


def _prompt(value, what: str) -> str:
    text = _text(value, what)
    if not text:
        raise ValueError(f"{what} is empty")
    try:
        parse_blend(text)
    except RiffstreamError as error:
        raise ValueError(str(error)) from None
    return text


def _number(limits: checks.Limits, integer: bool = False):
    def read(value, what: str):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            kind = "a whole number" if integer else "a number"
            raise ValueError(f"{what} must be {kind}, not {value!r}")
        try:
            return check_number(value, what, limits)
        except RiffstreamError as error:
            raise ValueError(str(error)) from None
    return read


def _path(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a file name, not {value!r}")
    return value


def _bpm(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number of beats per minute, not {value!r}")
    try:
        return check_bpm(value, what)
    except RiffstreamError as error:
        raise ValueError(str(error)) from None


_READERS = {
    "time": parse_time, "transition": parse_time, "end": parse_time, "prompt": _prompt,
    "seed": _number(checks.SEED, integer=True), "negative_prompt": _text, "strength": _number(checks.STRENGTH),
    "bpm": _bpm, "init_midi": _path,
}


def parse_timeline(text: str, source: str = "timeline") -> Timeline:
    """Read a timeline from TOML text; a one-line RiffstreamError naming ``source``, the line and the problem."""
    def fail(line: int | None, message: str) -> RiffstreamError:
        return RiffstreamError(f"{source}:{line}: {message}" if line else f"{source}: {message}")

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        found = _AT.match(str(error))
        raise (fail(int(found["line"]), f"not valid TOML: {found['message']}") if found
               else fail(None, f"not valid TOML: {error}")) from None
    top_lines, entry_lines = _key_lines(text)
    for key in data:
        if key not in _TOP_KEYS:
            raise fail(top_lines.get(key), f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    raw_entries = data.get("entry", [])
    if not isinstance(raw_entries, list) or not all(isinstance(item, dict) for item in raw_entries):
        raise fail(top_lines.get("entry"), "entries are written as [[entry]] tables")
    if not raw_entries:
        raise fail(None, "no entries: add at least one [[entry]] with a time and a prompt")
    if len(raw_entries) > MAX_ENTRIES:
        raise fail(None, f"too many entries ({len(raw_entries)}; most {MAX_ENTRIES})")
    defaults = {}
    for key in sorted(_TOP_KEYS - {"entry"}):
        try:
            defaults[key] = _READERS[key](data[key], key) if key in data else None
        except ValueError as error:
            raise fail(top_lines.get(key), str(error)) from None
    entries: list[Entry] = []
    where_is: list[dict[str, int]] = []  # each entry's key lines, its header's as "entry"
    for number, raw in enumerate(raw_entries, 1):
        header, lines = entry_lines[number - 1] if number <= len(entry_lines) else (None, {})
        where_is.append({**lines, "entry": header})
        what = f"entry {number}"
        for key in raw:
            if key not in _ENTRY_KEYS:
                raise fail(lines.get(key, header),
                           f"unknown key {key!r} in {what} (known: {', '.join(sorted(_ENTRY_KEYS))})")
        for key in ("time", "prompt"):
            if key not in raw:
                raise fail(header, f"{what} has no {key}")
        values = {}
        for key in raw:
            try:
                values[key] = _READERS[key](raw[key], key)
            except ValueError as error:
                raise fail(lines.get(key, header), f"{error} in {what}") from None
        entry = Entry(line=header or 0, **values)
        if entries and entry.time <= entries[-1].time:
            raise fail(lines.get("time", header),
                       f"times out of order: {what} at {_clock(entry.time)} is not after entry {number - 1} "
                       f"at {_clock(entries[-1].time)}")
        if not entries and entry.time != 0:
            raise fail(lines.get("time", header),
                       f"the first entry starts the music: give it time = \"0:00\", not {_clock(entry.time)}")
        entries.append(entry)
    timeline = Timeline(entries=tuple(entries), source=source, **defaults)
    for index, entry in enumerate(entries[1:], 1):
        length = entry.transition if entry.transition is not None else timeline.transition
        following = entries[index + 1].time if index + 1 < len(entries) else timeline.end
        if length is not None and following is not None and entry.time + length > following + 1e-9:
            lines = where_is[index]
            raise fail(lines.get("transition", lines["entry"]),
                       f"the transition of the entry at {_clock(entry.time)} lasts {length:g} s: past "
                       f"{'the next entry' if index + 1 < len(entries) else 'the end'} at {_clock(following)}")
    if timeline.end is not None and timeline.end <= entries[-1].time:
        raise fail(top_lines.get("end"),
                   f"end = {_clock(timeline.end)} is not after the last entry at {_clock(entries[-1].time)}")
    return timeline


def read_timeline(path: str | Path) -> Timeline:
    """Read a timeline file (TOML, UTF-8); one-line RiffstreamError naming the file and line if it is unusable."""
    path = check_input_file(path, "timeline", "timeline file")
    if path.stat().st_size > MAX_TIMELINE_BYTES:
        raise RiffstreamError(f"{path}: too large for a timeline (most {MAX_TIMELINE_BYTES // 1000} KB)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RiffstreamError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise RiffstreamError(f"cannot read {path}: {error.strerror}") from None
    timeline = parse_timeline(text, str(path))
    entries = tuple(replace(entry, init_midi=str(path.parent / entry.init_midi)) if entry.init_midi else entry
                    for entry in timeline.entries)
    return replace(timeline, entries=entries)


def _clock(seconds: float) -> str:
    """``"2:30"``, ``"1:02:00"`` or ``"0:04.50"``: a time as a timeline writes it."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    fraction = seconds - whole
    return text + (f"{fraction:.2f}"[1:] if fraction >= 0.005 else "")


# ---------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Waypoint:
    """Where the music is at ``time``: a prompt (or blend), a seed, and the entry's options."""

    time: float
    prompt: str
    seed: int
    negative_prompt: str | None = None
    strength: float | None = None
    #: The clip whose point this is, where a turn started from it (its noise is that clip's).
    origin: Clip | None = None


class TimelineJourney:
    """Plans clips from a :class:`Timeline`, placing each by where its centre falls in time.

    ``clip_advance`` is the seconds from one clip's start to the next; a seed-walk step (and
    a transition with no length given) takes ``clips_per_transition`` of them. It has the
    interface of :class:`~riffstream.planner.Journey`, as :class:`~riffstream.planner.PromptJourney` has. A prompt
    queued while it runs leaves the timeline: the turn to it starts where the segment in
    progress ends, and later entries are dropped.
    """

    def __init__(self, timeline: Timeline, clip_advance: float, seed: int = 0,
                 clips_per_transition: int = 4, total_clips: int | None = None, strength: float = 0.75) -> None:
        if clips_per_transition < 1:
            raise RiffstreamError(f"clips per transition must be 1 or more, not {clips_per_transition}")
        self.timeline = timeline
        self.clip_advance = clip_advance
        self.seed = timeline.seed if timeline.seed is not None else int(seed)
        self.clips_per_transition = clips_per_transition
        self.total_clips = total_clips
        self.strength = strength
        #: Whether a queued prompt has replaced the rest of the timeline, and from what time (seconds).
        self.left_timeline = False
        self.left_at = math.inf
        self._last_time: float | None = None
        # The plan as it was before each turn, by the clip the turn started at, so a rewind past one undoes it.
        self._before_turns: list[tuple[int, tuple]] = []
        self._waypoints = list(self._lay_out())
        self.seed = self._waypoints[0].seed

    @property
    def step(self) -> float:
        """Seconds a seed-walk step takes."""
        return self.clips_per_transition * self.clip_advance

    @property
    def prompts(self) -> list[str]:
        """The prompts the timeline (and prompts queued since) turn to, in order."""
        names: list[str] = []
        for waypoint in self._waypoints:
            if not names or names[-1] != waypoint.prompt:
                names.append(waypoint.prompt)
        return names

    def _lay_out(self) -> Iterator[Waypoint]:
        timeline, entries = self.timeline, self.timeline.entries
        first = entries[0]
        strength = next(s for s in (first.strength, timeline.strength, self.strength) if s is not None)
        current = Waypoint(0.0, first.prompt, first.seed if first.seed is not None else self.seed,
                           first.negative_prompt or timeline.negative_prompt or None, strength)
        yield current
        for index, entry in enumerate(entries[1:], 1):
            length = entry.transition if entry.transition is not None else timeline.transition
            length = self.step if length is None else length
            if index + 1 < len(entries):
                length = min(length, entries[index + 1].time - entry.time)
            for current in self._walk(current, entry.time - current.time):
                yield current
            negative = entry.negative_prompt if entry.negative_prompt is not None else current.negative_prompt
            strength = entry.strength if entry.strength is not None else current.strength
            seed = entry.seed if entry.seed is not None else current.seed + 1
            current = Waypoint(entry.time + length, entry.prompt, seed, negative or None, strength)
            yield current

    def _walk(self, start: Waypoint, span: float) -> list[Waypoint]:
        """Seed-walk waypoints holding ``start``'s prompt for ``span`` seconds, the last at its end:
        steps of about :attr:`step` seconds, so that one lands exactly where the next transition starts."""
        if span <= 1e-9:
            return []
        steps = max(1, round(span / self.step))
        return [replace(start, time=start.time + span * m / steps, seed=start.seed + m) for m in range(1, steps + 1)]

    def _segment(self, time: float) -> tuple[Waypoint, Waypoint, float]:
        """The waypoints ``time`` lies between, and how far along (0..1); past the last, the walk goes on."""
        points = self._waypoints
        j = max(bisect.bisect_right([p.time for p in points], time) - 1, 0)
        if j + 1 < len(points):
            a, b = points[j], points[j + 1]
            return a, b, min(1.0, (time - a.time) / (b.time - a.time)) if b.time > a.time else 1.0
        last = points[-1]
        u = max(0.0, (time - last.time) / self.step)
        walked = math.floor(u)
        a = replace(last, time=last.time + walked * self.step, seed=last.seed + walked)
        return a, replace(a, time=a.time + self.step, seed=a.seed + 1), u - walked

    def rewind(self, index: int, time: float | None = None) -> None:
        """Plan again from clip ``index``, as if no later clip had been planned; ``time`` is where the clip
        before it is centred (None: nothing is planned). A turn made at or after ``index`` is undone."""
        while self._before_turns and self._before_turns[-1][0] >= index:
            _, state = self._before_turns.pop()
            self._waypoints, self.seed, self.left_timeline, self.left_at = state
        self._last_time = time if index > 0 else None

    def turn(self, next_index: int, origin: Clip, prompt: str | None = None, seed: int | None = None) -> None:
        """Turn at once from ``origin``'s point (the clip before ``next_index``, centred where the last clip
        planned was) towards ``prompt`` (None: the prompt ``origin`` heads to) with ``seed`` (None: the walk's
        next), over one seed-walk step; a prompt leaves the rest of the timeline."""
        prompt = check_turn(prompt, self.total_clips)
        if self._last_time is None:
            raise RiffstreamError("a turn needs a clip to start from")
        self._before_turns.append((next_index, (list(self._waypoints), self.seed, self.left_timeline,
                                                self.left_at)))
        start = self._last_time
        label, noise_from = point_of(origin)
        negative = origin.negative_b if origin.alpha >= 0.5 else origin.negative_a
        here = Waypoint(start, label, origin.seed_b, negative, origin.strength, noise_from)
        new_seed = origin.seed_b + 1 if seed is None else int(seed)
        kept = [w for w in self._waypoints if w.time < start - 1e-9]
        end = start + self.step
        if prompt is not None or self.left_timeline:
            if not self.left_timeline:
                self.left_timeline, self.left_at = True, start
            self._waypoints = kept + [here, replace(here, time=end, prompt=prompt or origin.prompt_b, seed=new_seed,
                                                    origin=None)]
        else:  # a new seed on the timeline: turn to where the plan would be one step on, re-seeded, and on as planned
            a, b, alpha = self._segment(end)
            planned = point_of(Clip(0, a.prompt, b.prompt, alpha, a.seed, b.seed))[0]
            later = [w for w in self._waypoints if w.time > end + 1e-9]
            self._waypoints = kept + [here, replace(b, time=end, prompt=planned, seed=new_seed, origin=None)] + [
                replace(w, seed=new_seed + m) for m, w in enumerate(later, 1)]
        if seed is not None:
            self.seed = int(seed)

    def clip(self, index: int, time: float | None = None) -> Clip:
        """Plan clip ``index``, whose centre is at ``time`` seconds (default: ``index`` advances in)."""
        if time is None:
            time = index * self.clip_advance
        self._last_time = time
        a, b, alpha = self._segment(time)
        strength = (1 - alpha) * a.strength + alpha * b.strength if a.strength != b.strength else a.strength
        return Clip(index, a.prompt, b.prompt, float(alpha), a.seed, b.seed,
                    negative_a=a.negative_prompt, negative_b=b.negative_prompt, strength=strength, origin=a.origin)

    def _kept(self) -> int:
        """How many waypoints are passed or in progress: the segment of the last clip planned ends at the last
        of them (made explicit first, if it lies in the endless walk)."""
        if self._last_time is None:
            return 1
        points, time = self._waypoints, self._last_time
        if time >= points[-1].time:
            a, b, _ = self._segment(time)
            steps = round((a.time - points[-1].time) / self.step)
            last = points[-1]
            points.extend(replace(last, time=last.time + m * self.step, seed=last.seed + m) for m in range(1, steps + 1))
            points.append(b)
        return bisect.bisect_right([p.time for p in points], time) + 1

    def upcoming(self, next_index: int) -> list[str]:
        """Prompts still to come after the segment in progress."""
        kept = self._kept()
        names, last = [], self._waypoints[kept - 1].prompt
        for waypoint in self._waypoints[kept:]:
            if waypoint.prompt != last:
                names.append(waypoint.prompt)
                last = waypoint.prompt
        return names

    def queue(self, prompt: str, next_index: int) -> None:
        """Turn to ``prompt`` over one step, after the segment in progress and any prompt queued before."""
        prompt = check_queued(prompt, self.total_clips)
        kept = self._kept()
        if not self.left_timeline:
            del self._waypoints[kept:]
            self.left_timeline, self.left_at = True, self._waypoints[-1].time
        end = self._waypoints[-1]
        self._waypoints.append(replace(end, time=end.time + self.step, prompt=prompt, seed=end.seed + 1))

    def queue_drops_plan(self, next_index: int) -> bool:
        """Whether a prompt queued now drops timeline entries still to come."""
        return not self.left_timeline and bool(self.upcoming(next_index))

    def tempo_time(self, seconds: float) -> float:
        """Once a queued prompt has left the timeline, its tempo where it was left holds."""
        return min(seconds, self.left_at)

    def set_seed(self, seed: int, next_index: int) -> None:
        """Walk on from ``seed`` after the segment in progress (from the start if nothing is planned)."""
        kept = 0 if self._last_time is None else self._kept()
        if kept == len(self._waypoints):
            last = self._waypoints[-1]
            self._waypoints.append(replace(last, time=last.time + self.step, seed=int(seed)))
        else:
            self._waypoints[kept:] = [replace(w, seed=int(seed) + m) for m, w in enumerate(self._waypoints[kept:])]
        self.seed = int(seed)

    def set_clips_per_transition(self, clips: int, next_index: int) -> None:
        """Take ``clips`` clips per seed-walk step from the end of the segment in progress on."""
        check_pace_change(clips, self.total_clips)
        self._kept()
        self.clips_per_transition = clips
