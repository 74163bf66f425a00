"""The model cache on disk: one folder per model identity and variant, each built whole under a file lock
or not at all. The store's exports, decoders and the adapters' test weights all live here."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from riffstream.errors import RiffstreamError

EXPORT_VERSION = 2
"""Part of every cache key: bump it when the export recipe changes."""
LOW_DISK_BYTES = 16 << 20
"""Free space below which a failed cache write is taken for a full disk."""


def cache_entry(cache: Path, name: str, identity: str, variant: str | None, kind: str = "models") -> Path:
    """The cache folder for one model identity and variant (``kind``: models, decoders or sources)."""
    key = json.dumps({"model": identity, "export": EXPORT_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[-60:]
    return cache / kind / f"{slug}-{digest}" / (variant or "f32")


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished cache entry."""
    return (folder / "riffstream.json").is_file()


def build_atomically(target: Path, build: Callable[[Path], object], rebuild: bool = False) -> Path:
    """Run ``build(tmp)`` and rename the result to ``target``; a crash or a full disk leaves no half-made entry.

    A complete ``target`` is kept as it is, unless ``rebuild``: then it is replaced only once the new one is built.
    One process builds an entry at a time (a file lock beside it, let go if its holder dies): a second process
    that wanted it waits, then takes the finished entry instead of building it again and replacing it.
    """
    if is_complete(target) and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock")):
        if is_complete(target) and not rebuild:
            return target
        return _build(target, build)


def _build(target: Path, build: Callable[[Path], object]) -> Path:
    for stale in target.parent.glob(f"{target.name}.partial-*"):  # left by a holder of the lock that died
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / "riffstream.json").write_text(json.dumps({"export": EXPORT_VERSION}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except Exception as error:
        # OpenVINO's own writers report a full disk as a C++ stream error, not ENOSPC.
        if getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(tmp.parent).free < LOW_DISK_BYTES:
            raise RiffstreamError(
                f"the disk is full while writing {target.parent}: free some space (or use --cache-dir on a bigger "
                "disk) and run again.") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
