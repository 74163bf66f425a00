"""Clocks: what takes the ring buffer's audio out at the pace it is heard.

Two implement :class:`Clock`: the sound card's :class:`Player` (its PortAudio callback only
copies from the ring, as sounddevice's examples do) and :class:`RealTimeClock`, which hands
the audio to live sinks (a broadcast) at real-time pace where there is no sound card. On an
underrun either fills silence and counts it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from riffstream.errors import RiffstreamError
from riffstream.sinks.player import BLOCK_FRAMES, NO_DEVICE_HINT, device_id, sounddevice_module
from riffstream.stream.ring import RingBuffer

if TYPE_CHECKING:
    from riffstream.sinks import Sink

#: Block the real-time clock hands to live sinks, seconds.
CLOCK_BLOCK = 0.05
#: A clock this far behind its schedule (seconds) starts a new one instead of rushing to catch up.
CLOCK_SLIP = 1.0


class Clock(Protocol):
    """Takes a ring buffer's audio at the pace it is heard."""

    sample_rate: int
    #: Times it found the ring empty before the stream ended (and played silence).
    underruns: int

    def start(self) -> None:
        """Start taking audio."""

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until the ring has ended and all of it is heard."""

    def close(self) -> None:
        """Stop and release what it holds (idempotent)."""


class Player:
    """Plays a ring buffer live on a PortAudio output stream.

    ``source`` has ``read_into(out) -> frames copied`` and a ``closed`` flag (see
    :class:`~riffstream.stream.ring.RingBuffer`). The callback copies what is there, fills any
    shortfall with silence and counts it as an underrun unless the source has ended.
    """

    def __init__(self, source: RingBuffer, sample_rate: int, channels: int, device: str | None = None,
                 blocksize: int = BLOCK_FRAMES) -> None:
        sd = sounddevice_module()
        self.source = source
        self.underruns = 0
        self.sample_rate = sample_rate
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=channels, dtype="float32",
                                           device=device_id(device), blocksize=blocksize, callback=self._callback)
        except (sd.PortAudioError, ValueError) as error:
            raise RiffstreamError(f"cannot open the audio output ({error}); {NO_DEVICE_HINT}") from None

    def _callback(self, outdata: np.ndarray, frames: int, when, status) -> None:
        copied = self.source.read_into(outdata)
        if copied < frames:
            outdata[copied:] = 0
            if not self.source.closed:
                self.underruns += 1

    def start(self) -> None:
        """Start playing (the callback begins pulling from the source)."""
        self._stream.start()

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until the source is empty and the device has played it out."""
        deadline = time.monotonic() + timeout
        while self._stream.active and self.source.available > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(min(self._stream.latency + 2 * self._stream.blocksize / self.sample_rate, 1.0))

    def close(self) -> None:
        """Stop and release the device (idempotent)."""
        if not self._stream.closed:
            self._stream.stop()
            self._stream.close()


class RealTimeClock:
    """Takes audio from the ring buffer at real-time pace and hands it to live sinks, block by block.

    The sound card's :class:`Player` without a sound card: it has the
    same ``start``/``drain``/``close`` and ``underruns``, and its thread (started by
    :meth:`start`) only copies from the ring and calls the sinks. Silence fills an
    underrun, so listeners hear a steady stream; ``silence_frames`` counts it, which maps
    ring frames to the clock's own time (:meth:`stream_frame`).
    """

    def __init__(self, source: RingBuffer, sample_rate: int, sinks: Sequence[Sink],
                 block_seconds: float = CLOCK_BLOCK) -> None:
        self.source, self.sample_rate, self.sinks = source, sample_rate, list(sinks)
        self.block = np.zeros((max(1, round(block_seconds * sample_rate)), source.channels), np.float32)
        self.underruns = 0
        self.frames_out = 0
        self.silence_frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riffstream-clock", daemon=True)

    @property
    def stream_seconds(self) -> float:
        """Audio handed to the sinks so far, seconds: the clock's own time."""
        return self.frames_out / self.sample_rate

    def stream_frame(self, ring_frame: int) -> int:
        """The clock time (frames) at which ring frame ``ring_frame`` is heard, if no underrun comes first."""
        return ring_frame + self.silence_frames

    def start(self) -> None:
        """Start handing out audio."""
        self._thread.start()

    def _run(self) -> None:
        period = len(self.block) / self.sample_rate
        due = time.monotonic()
        try:
            while not self._stop.is_set():
                copied = self.source.read_into(self.block)
                if copied < len(self.block):
                    if self.source.closed and self.source.available == 0:
                        if copied:
                            self._hand_out(self.block[:copied])
                        break
                    self.block[copied:] = 0
                    self.underruns += 1
                    self.silence_frames += len(self.block) - copied
                self._hand_out(self.block)
                due += period
                late = time.monotonic() - due
                if late > CLOCK_SLIP:
                    due = time.monotonic()
                elif late < 0:
                    self._stop.wait(-late)
        finally:
            for sink in self.sinks:
                sink.close()

    def _hand_out(self, frames: np.ndarray) -> None:
        audio = np.ascontiguousarray(frames.T)
        for sink in self.sinks:
            sink.write(audio)
        self.frames_out += len(frames)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait until the source has ended and everything in it has been handed out."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop handing out audio and close the sinks (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        elif self._thread.ident is None:
            for sink in self.sinks:
                sink.close()
