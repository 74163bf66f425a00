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


def run_cli(capsys, *args: object) -> tuple[int, str]:
    """``riffstream ARGS`` run in this process, as the console script runs it: (exit status, stderr).

    For tests whose point is what the command says, not the process: no interpreter start, no
    torch import, no Numba compile. Tests of signals, exit codes of a dying process and real
    terminals keep starting the program.
    """
    from riffstream.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in args])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, stderr: str, fragment: str) -> str:
    """The command failed with status 2 and said why in exactly one ``riffstream: error:`` line holding ``fragment``."""
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("riffstream: error:") and fragment in lines[0], lines[0]
    return lines[0]
