"""The sound card: a PortAudio output stream whose callback only copies from the ring buffer."""

from __future__ import annotations

import time

import numpy as np

from riffstream.errors import RiffstreamError

#: Frames per audio callback: about 23 ms at 44.1 kHz.
BLOCK_FRAMES = 1024
NO_DEVICE_HINT = "use --out FILE --no-play to render to a file instead"


def _sounddevice():
    """The sounddevice module, or a one-line error when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as error:
        raise RiffstreamError(f"cannot play audio: PortAudio is not installed ({error}); {NO_DEVICE_HINT}") from None
    return sounddevice


def _device(device: str | None) -> int | str | None:
    return int(device) if device is not None and device.strip().isdigit() else device


def list_devices() -> str:
    """The audio devices PortAudio sees, one per line (``>`` marks the default output)."""
    sd = _sounddevice()
    return str(sd.query_devices())


def check_output_device(device: str | None = None) -> str:
    """Fail early, with one line, when there is no usable output device; returns its name."""
    sd = _sounddevice()
    try:
        info = sd.query_devices(_device(device), kind="output")
    except (sd.PortAudioError, ValueError) as error:
        which = f"audio output device {device!r}" if device is not None else "audio output device"
        raise RiffstreamError(f"no {which} ({error}); {NO_DEVICE_HINT}, or pick one from --list-devices") from None
    if info["max_output_channels"] < 1:
        raise RiffstreamError(f"{info['name']} has no output channels; {NO_DEVICE_HINT}")
    return str(info["name"])


class Player:
    """Plays a ring buffer live on a PortAudio output stream.

    ``source`` has ``read_into(out) -> frames copied`` and a ``closed`` flag (see
    :class:`riffstream.stream.RingBuffer`). The callback copies what is there, fills any
    shortfall with silence and counts it as an underrun unless the source has ended.
    """

    def __init__(self, source, sample_rate: int, channels: int, device: str | None = None,
                 blocksize: int = BLOCK_FRAMES) -> None:
        sd = _sounddevice()
        self.source = source
        self.underruns = 0
        self.sample_rate = sample_rate
        try:
            self._stream = sd.OutputStream(samplerate=sample_rate, channels=channels, dtype="float32",
                                           device=_device(device), blocksize=blocksize, callback=self._callback)
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
