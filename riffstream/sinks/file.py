"""Audio files: written incrementally as the stream goes, and read for conversions.
Reading lives here too, so that all file formats are handled in one place.

Files are written to a hidden temporary name beside the target and renamed into place
when closed, so a failed run leaves nothing half-written, while a render that is
interrupted still closes cleanly with every finished clip in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile
from filelock import SoftFileLock, Timeout

from riffstream.checks import check_input_file
from riffstream.errors import RiffstreamError, WriteFailed

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


def claim_path(path: str | os.PathLike[str]) -> Path:
    """The lock file that marks ``path`` (and its journal) as being written: ``.NAME.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def claim_output(path: str | os.PathLike[str], option: str = "--out") -> Iterator[None]:
    """Hold ``path`` as this process's output for the ``with`` block: one writer per file.

    A render, a resume or a recording that would write a file another riffstream process is
    writing is refused with one line naming that process, before anything is loaded or touched.
    The claim is a ``filelock.SoftFileLock``: a marker file holding the writer's pid (and its
    start time, so a reused pid is not mistaken for it), created exclusively and removed when
    released. A marker left by a process that died (SIGKILL, power loss) is taken over.
    """
    lock = SoftFileLock(claim_path(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = f"pid {lock.pid}" if lock.pid is not None else "its pid is not recorded yet"
        raise RiffstreamError(f"{path} is being written by another riffstream process ({holder}): wait for it "
                              f"to finish, or give another {option}") from None
    except OSError as error:
        raise RiffstreamError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        yield
    finally:
        lock.release()


def write_failure(path: str | os.PathLike[str], error: BaseException) -> WriteFailed:
    """The one-line error for a write to ``path`` that failed: "the disk is full" when it is."""
    folder = Path(path).parent
    try:
        full = shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        full = False
    reason = "the disk is full" if full else (getattr(error, "strerror", None) or str(error) or type(error).__name__)
    return WriteFailed(f"cannot write {path}: {reason}")


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Make the names in ``folder`` durable: a rename into it survives a power loss only once this returns."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AudioFileWriter:
    """Streams float audio (channels, samples) to WAV, FLAC or OGG, block by block.

    ``close()`` syncs the finished file and renames it into place; ``discard()`` removes it.
    Used as a context manager it closes on success, on KeyboardInterrupt and on a failed write
    (keeping what was written), and discards on any other error. :meth:`is_on_disk` tells whether the file at
    ``path`` is still the one this writer wrote.
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
        self._written: tuple[int, int] | None = None  # (device, inode) of the file renamed into place

    def write(self, samples: np.ndarray) -> None:
        """Append (channels, samples) or (samples,) float audio."""
        block = np.atleast_2d(np.asarray(samples, dtype=np.float32)).T
        try:
            for start in range(0, block.shape[0], WRITE_BLOCK):
                self._file.write(block[start : start + WRITE_BLOCK])  # a short write fails soundfile's assert
            self._file.flush()
        except (OSError, RuntimeError, AssertionError) as error:  # LibsndfileError is a RuntimeError
            self._cut_back()
            raise write_failure(self.path, error) from None
        self.frames_written += block.shape[0]

    def _cut_back(self) -> None:
        """After a failed write, drop its part-written frames, so the file ends with the last whole write."""
        with contextlib.suppress(Exception):
            if self._file.seekable():
                self._file.truncate(self.frames_written)

    def close(self) -> Path:
        """Finish the file and move it to its final name."""
        if not self._file.closed:
            try:
                self._file.close()
                with open(self._partial, "rb") as handle:
                    os.fsync(handle.fileno())
                    written = os.fstat(handle.fileno())
                os.replace(self._partial, self.path)
                sync_folder(self.path.parent)
            except (OSError, RuntimeError) as error:
                raise write_failure(self.path, error) from None
            self._written = (written.st_dev, written.st_ino)
        return self.path

    def is_on_disk(self) -> bool:
        """Whether ``path`` is the file this writer closed (not replaced or removed since by anyone else)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return False
        return self._written == (now.st_dev, now.st_ino)

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
        elif issubclass(kind, WriteFailed):  # a full disk: keep what was finished if the file can still close
            try:
                self.close()
            except WriteFailed:
                self.discard()
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
