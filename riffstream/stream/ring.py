"""Where finished audio waits to be heard: the ring buffer, the stream's exact ends, and where it
can be cut.

The consumer thread writes the stream's audio into a :class:`RingBuffer`; a clock
(:mod:`riffstream.stream.clocks`) takes it out at the pace it is heard. A steer that turns at
once takes back audio not yet heard, at a :class:`CutPoint`, as a :class:`CutRequest` asks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: How often (seconds) a stream thread waiting on a queue or for room looks at its stop flag.
POLL = 0.02


def put_until(target: queue.Queue, item, stop: threading.Event,
              give_up: Callable[[], bool] | None = None) -> bool:
    """Put ``item`` on ``target``, waiting for room until ``stop`` is set (or, while it waits,
    ``give_up()`` says to); False if the item was not put."""
    while not stop.is_set():
        if give_up is not None and give_up():
            return False
        try:
            target.put(item, timeout=POLL)
            return True
        except queue.Full:
            continue
    return False


def get_until(source: queue.Queue, stop: threading.Event):
    """The next item of ``source``, waiting until ``stop`` is set; None if it was."""
    while not stop.is_set():
        try:
            return source.get(timeout=POLL)
        except queue.Empty:
            continue
    return None


@dataclass(frozen=True)
class CutPoint:
    """A place the live stream can be cut: the end of clip ``index``'s audio (or of a ``loop`` of it) at
    ring frame ``frame``. ``number`` names it in a :class:`CutRequest`."""

    number: int
    index: int
    frame: int
    loop: bool = False


@dataclass(frozen=True)
class CutRequest:
    """Drop every clip from ``first`` on that was planned before plan ``generation``; take the live stream
    back to cut point ``point`` (None: take nothing back). With ``crop``, the clip (or loop) that followed
    that point is joined again, cut to its first ``crop`` columns: a cut between clip boundaries."""

    generation: int
    first: int
    point: int | None
    crop: int | None = None
    #: When the steer was taken (monotonic seconds), to measure how soon its first clip is ready.
    asked_at: float = 0.0


class StreamEnds:
    """Gives the stream its exact length and click-free ends, block by block.

    The first ``edge_fade`` samples fade in and the last fade out. ``push`` returns the
    samples that are final so far, holding back ``edge_fade`` of them for a fade-out that
    may still come; ``finish`` returns the rest. With ``total`` the output is exactly that
    many samples long, and ends (with its fade-out) inside the push that reaches it.
    """

    def __init__(self, channels: int, edge_fade: int, total: int | None = None) -> None:
        self.channels, self.edge_fade, self.total = channels, edge_fade, total
        self._held: np.ndarray | None = None
        self.emitted = 0
        self.done = False

    def _ramp(self, frames: int) -> np.ndarray:
        return np.arange(1, frames + 1, dtype=np.float32) / np.float32(max(frames, 1))

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add the next block (channels, n); returns the samples that are now final."""
        block = np.atleast_2d(np.asarray(block, dtype=np.float32))
        if self.done:
            return np.zeros((self.channels, 0), np.float32)
        if self._held is None:
            body = block.copy()
            fade = min(self.edge_fade, body.shape[1])
            body[:, :fade] *= self._ramp(fade)
        else:
            body = np.concatenate([self._held, block], axis=1)
        if self.total is not None and self.emitted + body.shape[1] >= self.total:
            return self._end(body[:, : self.total - self.emitted])
        split = max(0, body.shape[1] - self.edge_fade)
        ready, self._held = body[:, :split], body[:, split:]
        self.emitted += ready.shape[1]
        return ready

    def finish(self) -> np.ndarray:
        """The held-back end, faded out; the stream is over after this."""
        if self.done or self._held is None:
            self.done = True
            return np.zeros((self.channels, 0), np.float32)
        return self._end(self._held)

    def _end(self, tail: np.ndarray) -> np.ndarray:
        tail = tail.copy()
        fade = min(self.edge_fade, tail.shape[1])
        if fade:
            tail[:, tail.shape[1] - fade :] *= self._ramp(fade)[::-1]
        self.emitted += tail.shape[1]
        self._held, self.done = None, True
        return tail



class RingBuffer:
    """A preallocated single-producer, single-consumer ring of float32 frames (frames, channels).

    The writer (consumer thread) blocks while it is full; the reader (the audio callback)
    never blocks, never allocates and takes no lock: each side only advances its own
    counter, after copying, so the other side always sees whole frames.

    ``ahead`` (default: the capacity) is the most audio written ahead of the reader. The writer
    may also keep what was read until it takes it with :meth:`take_played` (a recording of what
    was heard): frames are never overwritten before that, so ``capacity`` must leave room for it.
    The writer may take back audio not yet heard with :meth:`truncate`.
    """

    def __init__(self, capacity: int, channels: int, ahead: int | None = None, records: bool = False) -> None:
        self.capacity, self.channels = capacity, channels
        self.ahead = capacity if ahead is None else min(ahead, capacity)
        self.records = records
        self._data = np.zeros((capacity, channels), np.float32)
        self._written = 0
        self._read = 0
        self._recorded = 0
        #: Set by the writer once the stream has ended: running empty is then no underrun.
        self.closed = False

    @property
    def available(self) -> int:
        """Frames written and not yet read."""
        return self._written - self._read

    @property
    def written(self) -> int:
        """Frames written since the start."""
        return self._written

    @property
    def read(self) -> int:
        """Frames read (heard) since the start."""
        return self._read

    def _room(self) -> int:
        room = self.ahead - self.available
        if self.records:
            room = min(room, self.capacity - (self._written - self._recorded))
        return max(room, 0)

    def write(self, frames: np.ndarray, stop: threading.Event,
              while_waiting: Callable[[], bool] | None = None) -> bool:
        """Append (n, channels) frames, waiting for room; False if ``stop`` was set first, or if
        ``while_waiting()``, called as it waits, says to give up (the rest is then not written)."""
        done = 0
        while done < len(frames):
            room = self._room()
            if room == 0:
                if while_waiting is not None and while_waiting():
                    return False
                if stop.wait(POLL):
                    return False
                continue
            start = self._written % self.capacity
            n = min(room, len(frames) - done, self.capacity - start)
            self._data[start : start + n] = frames[done : done + n]
            self._written += n
            done += n
        return True

    def truncate(self, frame: int) -> None:
        """Take back the audio written from ``frame`` on (the writer's thread; it must lie ahead of the reader
        by more than one of its reads, which the caller keeps)."""
        if not self._read <= frame <= self._written:
            raise ValueError(f"cannot cut the ring at frame {frame}: {self._read} read, {self._written} written")
        self._written = frame

    def take_played(self) -> np.ndarray:
        """The frames read since the last call, (n, channels) (the writer's thread, with ``records``)."""
        end = self._read
        indices = np.arange(self._recorded, end) % self.capacity
        self._recorded = end
        return self._data[indices]

    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` frames into ``out``; returns how many (never waits)."""
        n = min(len(out), self._written - self._read)
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start : start + first]
        out[first:n] = self._data[: n - first]
        self._read += n
        return n
