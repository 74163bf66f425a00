"""Where audio goes: files, the sound card, and encoded broadcasts to the network.

Every sink takes the stream's audio through one small interface, :class:`Sink`:
``write((channels, samples) float audio)`` as it is made, then ``close()``. The stream
(:mod:`riffstream.stream`) hands its exact, finished audio to file sinks, and its live
audio, paced by a clock (:mod:`riffstream.stream.clocks`),
to live sinks such as :class:`~riffstream.sinks.broadcast.Broadcast`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from riffstream.sinks.file import (
    FILE_FORMATS,
    AudioFileWriter,
    check_folder_writable,
    check_writable,
    claim_output,
    file_format,
    read_audio,
    write_audio,
)
from riffstream.sinks.player import BLOCK_FRAMES, NO_DEVICE_HINT, check_output_device, list_devices


@runtime_checkable
class Sink(Protocol):
    """Anything the stream can write audio to."""

    def write(self, samples: np.ndarray) -> None:
        """Take the next (channels, samples) float audio."""

    def close(self) -> object:
        """The stream has ended: finish and release."""


__all__ = [
    "BLOCK_FRAMES", "FILE_FORMATS", "NO_DEVICE_HINT", "AudioFileWriter", "Sink", "check_folder_writable",
    "check_output_device", "check_writable", "claim_output", "file_format", "list_devices", "read_audio", "write_audio",
]
