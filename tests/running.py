"""Helpers for tests that run the ``riffstream`` command in a subprocess and watch it work."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], bool], timeout: float, process: subprocess.Popen, what: str = "it") -> None:
    """Poll ``predicate`` until it holds; fail if ``process`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def clip_records(folder: Path) -> list[dict]:
    """The clips a ``--save-spectrograms`` folder lists so far (``clips.jsonl``)."""
    path = folder / "clips.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
