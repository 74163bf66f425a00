"""Fetching a checkpoint from the Hugging Face Hub: only the files the pipeline runs.

Files land in the standard Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``), so a model
another tool fetched is reused and one riffstream fetched serves other tools. The client
is ``huggingface_hub``'s own: it resumes an interrupted file from where it stopped (its
``.incomplete`` blobs are that resume state; no snapshot ever points at one).
"""

from __future__ import annotations

import errno
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from riffstream.errors import RiffstreamError
from riffstream.model.checkpoint import INDEX, check_folder, check_pipeline, read_folder, select_files

log = logging.getLogger(__name__)


class HubUnreachable(RiffstreamError):
    """The Hub could not be reached and the model is not in the local cache."""


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def hub_cache() -> Path:
    """Where ``huggingface_hub`` keeps downloads (``HF_HUB_CACHE``, else ``HF_HOME/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hub repo id (``owner/name``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.count("/") != 1 or name.startswith((".", "~", "/")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def explain_hub_error(error: Exception, repo_id: str, revision: str | None, option: str, during: str) -> RiffstreamError:
    """One line that says what went wrong with the Hub and what to do."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"pass {option} a local folder"
    if isinstance(error, GatedRepoError):
        return RiffstreamError(
            f"{repo_id} is gated on the Hugging Face Hub: accept its terms on its page, log in with "
            f"`hf auth login` (or set HF_TOKEN), then run again; or {where}.")
    if isinstance(error, RevisionNotFoundError):
        return RiffstreamError(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub: check --revision.")
    if isinstance(error, RepositoryNotFoundError):
        return RiffstreamError(
            f"{repo_id} was not found on the Hugging Face Hub (or it is private and you are not logged in): "
            f"check {option}, log in with `hf auth login` for a private repo, or {where}.")
    if isinstance(error, DisabledRepoError):
        return RiffstreamError(f"{repo_id} has been disabled on the Hugging Face Hub: {where}.")
    if isinstance(error, EntryNotFoundError) and not isinstance(error, LocalEntryNotFoundError):
        return RiffstreamError(f"{repo_id} changed on the Hub while downloading ({error}): run again.")
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return RiffstreamError(
            f"the disk is full while {during} {repo_id} into {hub_cache()}: free some space (or point HF_HOME "
            "at a bigger disk) and run again; the download resumes where it stopped.")
    if during == "downloading" and not isinstance(error, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        return RiffstreamError(
            f"the download of {repo_id} broke off ({detail}): run the same command again to resume it.")
    return HubUnreachable(
        f"cannot reach the Hugging Face Hub for {repo_id}, and it is not in the local cache ({hub_cache()}): "
        f"connect and run `riffstream download {repo_id}` once, or {where}.")


def in_local_cache(find: Callable[[], Path | None]) -> Path | None:
    """What ``find`` finds in the local Hugging Face cache (it asks with ``local_files_only``, so it needs no
    network), or None when the cache lacks it. Every Hub download here tries this first, so a model, decoder
    or adapter fetched once plays offline; a RiffstreamError (files there but unusable) is raised."""
    try:
        return find()
    except RiffstreamError:
        raise
    except Exception:
        return None


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot of ``repo_id`` if it holds every file the pipeline runs, else None."""
    from huggingface_hub import snapshot_download

    def complete() -> Path | None:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        try:
            check_folder(folder)
        except RiffstreamError:
            return None
        return folder

    return in_local_cache(complete)


def fetch(repo_id: str, revision: str | None = None, *, option: str = "--model", progress: bool = True,
          refresh: bool = False) -> Path:
    """A local snapshot folder of the Hub checkpoint ``repo_id`` with the files the pipeline runs.

    A complete cached snapshot is used without the network unless ``refresh``; otherwise
    the repo's listing is read, its small files (configs, tokenizer) are fetched and
    checked to be an SD 1.x pipeline, and only then its weights, one format each.
    Errors are one line naming ``option``, the setting that chose the model.
    """
    from huggingface_hub import HfApi, snapshot_download

    cached = None if refresh else _cached_snapshot(repo_id, revision)
    if cached is not None:
        return cached
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:
        fallback = _cached_snapshot(repo_id, revision) if refresh else None
        if fallback is not None and isinstance(explain_hub_error(error, repo_id, revision, option, ""), HubUnreachable):
            log.info("the Hub is unreachable; using the cached %s", repo_id)
            return fallback
        raise explain_hub_error(error, repo_id, revision, option, "reading") from None
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or ()}
    small, weights = select_files(sizes)
    if INDEX not in small:
        check_pipeline(lambda name: None if name not in sizes else {}, repo_id)

    def download(files: list[str], during: str, bars: bool) -> Path:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if bars else disable_progress_bars)()
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=files))
        except Exception as error:
            raise explain_hub_error(error, repo_id, revision, option, during) from None
        finally:
            enable_progress_bars()

    folder = download(small, "reading", bars=False)
    check_pipeline(read_folder(folder), repo_id)
    total = sum(sizes[name] for name in weights)
    todo = sum(sizes[name] for name in weights if not (folder / name).is_file())
    free = shutil.disk_usage(_existing_parent(hub_cache())).free
    if todo > free:
        raise RiffstreamError(
            f"{repo_id} needs {_size(todo)} more in {hub_cache()}, and only {_size(free)} is free: free some space "
            "or point HF_HOME at a bigger disk.")
    if todo:
        log.info("downloading %s (commit %s): %d files the pipeline runs, %s, into %s", repo_id, info.sha[:7],
                 len(small) + len(weights), _size(total), hub_cache())
    folder = download(small + weights, "downloading", bars=progress)
    check_folder(folder, repo_id)
    return folder


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path

