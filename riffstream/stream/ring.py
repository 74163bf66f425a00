"""Where finished audio waits to be heard: the ring buffer, and the stream's exact ends.

The consumer thread writes the stream's audio into a :class:`RingBuffer`; a clock
(:mod:`riffstream.stream.clocks`) takes it out at the pace it is heard.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

#: How often (seconds) a stream thread waiting on a queue or for room looks at its stop flag.
POLL = 0.02


def put_until(target: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` on ``target``, waiting for room until ``stop`` is set; False if it was."""
    while not stop.is_set():
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
    """

    def __init__(self, capacity: int, channels: int) -> None:
        self.capacity, self.channels = capacity, channels
        self._data = np.zeros((capacity, channels), np.float32)
        self._written = 0
        self._read = 0
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

    def write(self, frames: np.ndarray, stop: threading.Event) -> bool:
        """Append (n, channels) frames, waiting for room; False if ``stop`` was set first."""
        done = 0
        while done < len(frames):
            room = self.capacity - self.available
            if room == 0:
                if stop.wait(POLL):
                    return False
                continue
            start = self._written % self.capacity
            n = min(room, len(frames) - done, self.capacity - start)
            self._data[start : start + n] = frames[done : done + n]
            self._written += n
            done += n
        return True

    def read_into(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` frames into ``out``; returns how many (never waits)."""
        n = min(len(out), self._written - self._read)
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start : start + first]
        out[first:n] = self._data[: n - first]
        self._read += n
        return n
