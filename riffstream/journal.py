"""Resumable renders: a journal beside the output, holding the plan and every finished clip.

A render to ``OUT`` keeps ``.OUT.journal/`` beside it:

* ``plan.json``: everything that decides the audio (prompts, seed, steps, model and its
  options, digests of the init audio, loop and timeline), written before the first clip;
* ``clip-00000.png``, ...: each finished clip's spectrogram, lossless, with its EXIF, and
  ``clip-00000.npy`` (its latents) where the next clip starts from them (continuation).

Every file is written whole to a temporary name, synced and renamed, so a render killed
at any instant (SIGKILL included) leaves only whole clips. ``--resume`` replays the
journalled clips through the same stitcher, which rewrites the output from the start
exactly as it was, then generates the rest: the finished file is bit-identical to an
uninterrupted render. At most the clips in flight are lost. A finished render removes
its journal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from riffstream.errors import RiffstreamError
from riffstream.sinks.file import sync_folder, write_failure

#: Bumped when the journal's layout or what its plan records changes.
JOURNAL_VERSION = 2
_CLIP = re.compile(r"^clip-(\d{5,})\.png$")


def journal_folder(out: str | os.PathLike[str]) -> Path:
    """Where the journal of a render to ``out`` lives."""
    out = Path(out)
    return out.with_name(f".{out.name}.journal")


@dataclass(frozen=True)
class FinishedClip:
    """A journalled clip: its spectrogram, and its latents where continuation needs them."""

    image: Image.Image
    latents: np.ndarray | None = None


def _write_atomically(path: Path, write) -> None:
    """``write(temporary path)``, then sync it, rename it into place and sync the folder (so the name is durable
    too, not only the bytes)."""
    partial = path.with_name(path.name + ".tmp")
    try:
        write(partial)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
        sync_folder(path.parent)
    except OSError as error:  # a full disk: the journal keeps the clips before this one
        partial.unlink(missing_ok=True)
        raise write_failure(path, error) from None


class Journal:
    """The journal of one render: :meth:`start` a new one or :meth:`resume` one, :meth:`add` clips as they
    finish, :meth:`finish` when the render is whole."""

    def __init__(self, folder: Path, plan: dict) -> None:
        self.folder, self.plan = folder, plan

    @classmethod
    def start(cls, out: str | os.PathLike[str], plan: dict) -> Journal:
        """A new, empty journal for ``out`` (replacing an old one)."""
        folder = journal_folder(out)
        if folder.exists():
            shutil.rmtree(folder)
        try:
            folder.mkdir()
            sync_folder(folder.parent)
            _write_atomically(folder / "plan.json", lambda path: path.write_text(
                json.dumps({"version": JOURNAL_VERSION, **plan}, indent=1, sort_keys=True), encoding="utf-8"))
        except OSError as error:
            raise RiffstreamError(f"cannot keep a journal beside {out}: {error.strerror or error}") from None
        return cls(folder, plan)

    @staticmethod
    def read_plan(out: str | os.PathLike[str]) -> dict:
        """The plan a journal for ``out`` was started with; one-line RiffstreamError if there is none or it is corrupt."""
        folder = journal_folder(out)
        if not (folder / "plan.json").is_file():
            raise RiffstreamError(f"nothing to resume: {out} has no journal ({folder.name}); start the render "
                                  "without --resume")
        try:
            plan = json.loads((folder / "plan.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RiffstreamError(f"cannot resume {out}: its journal's plan is corrupt ({error})") from None
        if not isinstance(plan, dict) or plan.get("version") != JOURNAL_VERSION:
            raise RiffstreamError(f"cannot resume {out}: its journal was written by another version of riffstream")
        plan.pop("version")
        return plan

    @classmethod
    def resume(cls, out: str | os.PathLike[str], plan: dict,
               latents: bool = False) -> tuple[Journal, list[FinishedClip]]:
        """The journal for ``out`` and its finished clips, in order, if it was started with ``plan``; with
        ``latents`` (a continued render, whose next clip starts from them) each clip's latents too.

        Nothing is changed; a missing, corrupt or mismatched journal is a one-line RiffstreamError.
        """
        recorded = cls.read_plan(out)
        if recorded != plan:
            key, was, now = _first_difference(recorded, plan)
            raise RiffstreamError(
                f"cannot resume {out}: it was started with {key.replace('_', ' ')} {_shown(was)}, "
                f"not {_shown(now)}; give the same options as the render it continues")
        folder = journal_folder(out)
        numbers = sorted(int(m[1]) for m in map(_CLIP.match, os.listdir(folder)) if m)
        if numbers != list(range(len(numbers))):
            raise RiffstreamError(f"cannot resume {out}: its journal is corrupt (clip {_gap(numbers)} is missing)")
        finished = []
        for number in numbers:
            finished.append(cls._read_clip(out, folder, number, latents))
        return cls(folder, plan), finished

    @staticmethod
    def _read_clip(out, folder: Path, number: int, with_latents: bool) -> FinishedClip:
        png, npy = folder / f"clip-{number:05d}.png", folder / f"clip-{number:05d}.npy"
        try:
            with Image.open(png) as image:
                image.load()
                kept = image.copy()
                kept.getexif().update(image.getexif())
            latents = np.load(npy, allow_pickle=False) if with_latents else None
        except (OSError, ValueError, SyntaxError) as error:
            raise RiffstreamError(f"cannot resume {out}: clip {number} of its journal is corrupt ({error})") from None
        return FinishedClip(kept, latents)

    def add(self, index: int, image: Image.Image, latents: np.ndarray | None = None) -> None:
        """Keep clip ``index`` (the clips before it are kept already)."""
        if latents is not None:
            def save(path: Path) -> None:
                with open(path, "wb") as handle:
                    np.save(handle, latents, allow_pickle=False)

            _write_atomically(self.folder / f"clip-{index:05d}.npy", save)
        _write_atomically(self.folder / f"clip-{index:05d}.png",
                          lambda path: image.save(path, format="PNG", exif=image.getexif()))

    def finish(self) -> None:
        """The render is whole: remove the journal, its plan first, so that a process killed midway leaves no
        journal that looks resumable with clips missing."""
        (self.folder / "plan.json").unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _first_difference(recorded: dict, wanted: dict) -> tuple[str, object, object]:
    """The first key (looking inside nested records such as the model's) whose values differ, and both values."""
    key = next(k for k in sorted(set(recorded) | set(wanted)) if recorded.get(k) != wanted.get(k))
    was, now = recorded.get(key), wanted.get(key)
    if isinstance(was, dict) and isinstance(now, dict):
        return _first_difference(was, now)
    return key, was, now


def _shown(value) -> str:
    return "none" if value is None else json.dumps(value) if not isinstance(value, str) else repr(value)


def _gap(numbers: list[int]) -> int:
    return next(n for n in range(len(numbers) + 1) if n not in numbers)
