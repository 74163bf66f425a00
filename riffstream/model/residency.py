"""Keep a model's memory-mapped weight files out of the process's resident memory.

OpenVINO maps an IR's weights file and, on a model's first inference, repacks every weight
into its kernels' own layout (and precision) in memory of its own. From then on the mapped
file is never read again, yet every page the load and the first inference touched stays
counted in the process's resident set: 3.2 GB for the full-size UNet, on top of the
repacked copy. Measured on the full-size model, that doubled peak memory.

Read-only file pages can be dropped from the process with ``madvise(MADV_DONTNEED)`` at
no risk: they stay in the page cache, and a later read faults them back in from there.
So while a model loads and warms up, a ticker drops the weight files' pages every
``INTERVAL`` seconds, and once more when it stops. This is the one thread outside the
stream layer: a C call (a compile, a first inference) cannot be interrupted for it, and
the ticker shares no data with anything.

Linux only; elsewhere, or where ``madvise`` is refused, nothing is dropped and nothing fails.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

#: Seconds between drops while a model loads and warms up.
INTERVAL = 0.25
_MADV_DONTNEED = 4


@functools.cache
def _libc_function(name: str, *argtypes):
    """The C library's function ``name`` on Linux, or None where there is none (not glibc, not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    return function


def _madvise():
    return _libc_function("madvise", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def weight_mappings(folders: Iterable[Path]) -> list[tuple[int, int, str]]:
    """(start, end, path) of this process's read-only mappings of files under ``folders``."""
    roots = [str(Path(folder).resolve()) + "/" for folder in folders]
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or "w" in fields[1]:
                    continue
                path = fields[5].strip()
                if any(path.startswith(root) for root in roots):
                    start, end = (int(address, 16) for address in fields[0].split("-"))
                    found.append((start, end, path))
    except OSError:
        return []
    return found


def drop_weight_pages(folders: Iterable[Path]) -> int:
    """Drop the resident pages of read-only mappings of files under ``folders``; bytes of mappings advised."""
    madvise = _madvise()
    if madvise is None:
        return 0
    advised = 0
    for start, end, _ in weight_mappings(folders):
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``).

    glibc raises its mmap threshold as large blocks are freed, so the audio stage's
    per-clip buffers (tens of MB each) end up on the heap, and freed heap memory stays
    resident: 0.2 GB after one clip's reconstruction, measured here. Trimming takes 5 ms;
    the memory it hands back is faulted in again when next used (0.06 s on the next clip's
    audio), so it is for the moments before a memory peak, not for every clip.
    """
    trim = _libc_function("malloc_trim", ctypes.c_size_t)
    if trim is not None:
        trim(0)


class DroppingWeightPages:
    """Context manager: drop the weight files' pages every ``INTERVAL`` seconds while it is open."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.folders = [Path(folder) for folder in folders]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="riffstream-weight-pages", daemon=True)

    def __enter__(self) -> DroppingWeightPages:
        if _madvise() is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        drop_weight_pages(self.folders)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            drop_weight_pages(self.folders)
