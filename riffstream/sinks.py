"""Where audio goes: files written incrementally, and (in the stream) the sound card.
Reading audio files lives here too, so that all file formats are handled in one place.

Files are written to a hidden temporary name beside the target and renamed into place
when closed, so a failed run leaves nothing half-written, while a render that is
interrupted still closes cleanly with every finished clip in it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile

from riffstream.checks import check_input_file
from riffstream.errors import RiffstreamError

#: Container and sample format for each extension soundfile can stream to.
FILE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}
#: Largest block handed to libsndfile at once: very large single OGG writes are known to
#: crash or truncate in libsndfile.
WRITE_BLOCK = 1 << 16


def file_format(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(format, subtype) for an output path, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise RiffstreamError(f"cannot write {suffix or 'files without an extension'}: use .wav, .flac or .ogg")
    return FILE_FORMATS[suffix]


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with one line, if an output file cannot be created at ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise RiffstreamError(f"cannot write {path}: it is a directory")
    if not directory.is_dir():
        raise RiffstreamError(f"cannot write {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RiffstreamError(f"cannot write {path}: permission denied")
    return path


def check_folder_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with one line, if a folder cannot be used or created at ``path`` (nothing is created)."""
    path = Path(path)
    if str(path).strip() == "":
        raise RiffstreamError("a folder must be named, not ''")
    if path.exists() and not path.is_dir():
        raise RiffstreamError(f"cannot use {path} as a folder: it is a file")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RiffstreamError(f"cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RiffstreamError(f"cannot write in {existing}: permission denied")
    return path


class AudioFileWriter:
    """Streams float audio (channels, samples) to WAV, FLAC or OGG, block by block.

    ``close()`` renames the finished file into place; ``discard()`` removes it. Used as a
    context manager it closes on success and on KeyboardInterrupt (keeping what was
    written), and discards on any other error.
    """

    def __init__(self, path: str | os.PathLike[str], sample_rate: int, channels: int) -> None:
        self.path = check_writable(path)
        container, subtype = file_format(self.path)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        try:
            self._file = soundfile.SoundFile(
                self._partial, "w", samplerate=sample_rate, channels=channels, format=container, subtype=subtype
            )
        except (OSError, soundfile.LibsndfileError) as error:
            raise RiffstreamError(f"cannot write {self.path}: {error}") from None
        self.frames_written = 0

    def write(self, samples: np.ndarray) -> None:
        """Append (channels, samples) or (samples,) float audio."""
        block = np.atleast_2d(np.asarray(samples, dtype=np.float32)).T
        for start in range(0, block.shape[0], WRITE_BLOCK):
            self._file.write(block[start : start + WRITE_BLOCK])
        self._file.flush()
        self.frames_written += block.shape[0]

    def close(self) -> Path:
        """Finish the file and move it to its final name."""
        if not self._file.closed:
            self._file.close()
            os.replace(self._partial, self.path)
        return self.path

    def discard(self) -> None:
        """Abandon the file, leaving nothing behind."""
        if not self._file.closed:
            self._file.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> AudioFileWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None or issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self.close()
        else:
            self.discard()


def write_audio(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> Path:
    """Write a whole (channels, samples) or (samples,) signal to ``path``."""
    samples = np.atleast_2d(samples)
    with AudioFileWriter(path, sample_rate, samples.shape[0]) as writer:
        writer.write(samples)
    return writer.path


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """(channels, samples) float64 audio and its sample rate from any file libsndfile reads."""
    path = check_input_file(path, "audio file", "audio")
    try:
        samples, sample_rate = soundfile.read(path, dtype="float64", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise RiffstreamError(f"cannot read {path} as audio: {error}") from None
    if samples.size == 0:
        raise RiffstreamError(f"{path} holds no audio")
    return samples.T, int(sample_rate)


# --------------------------------------------------------------------------- the sound card

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
