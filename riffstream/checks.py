"""Checks for every number and input file riffstream takes, from the command line or the Python API.

One function says what is allowed and what was given, in one line that names the option:
``--guidance must be a number from 0 to 50, not inf``. The command line uses
:func:`option_type` as argparse's ``type``, so a bad value stops before anything loads; the
API's ``validate`` functions call :func:`check_number` on the same limits.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from riffstream.errors import RiffstreamError


@dataclass(frozen=True)
class Limits:
    """What a number may be: finite, whole or not, and within [low, high] (``low`` excluded if ``above``)."""

    low: float
    high: float
    integer: bool = False
    above: bool = False
    unit: str = ""
    hint: str = ""

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        unit = f" {self.unit}" if self.unit else ""
        low, high = (f"{int(v)}" if self.integer else f"{v:g}" for v in (self.low, self.high))
        hint = f" ({self.hint})" if self.hint else ""
        if self.above:
            return f"{kind} above {low}{unit} and at most {high}{unit}{hint}"
        return f"{kind} from {low} to {high}{unit}{hint}"

    def holds(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        if self.integer and value != int(value):
            return False
        return value > self.low if self.above else value >= self.low


GUIDANCE = Limits(0, 50)
STEPS = Limits(1, 1000, integer=True)
SEED = Limits(0, 2**32 - 1, integer=True)
DURATION = Limits(0, 100 * 3600, above=True, unit="s", hint="100 hours")
PREBUFFER = Limits(0, 3600, unit="s")
CLIPS_PER_TRANSITION = Limits(1, 1000, integer=True)
CROSSFADE = Limits(0, 60, unit="s")
LOUDNESS = Limits(-70, 0, unit="LUFS")
STRENGTH = Limits(0, 1, above=True)
WIDTH = Limits(8, 4096, integer=True, unit="pixels")
THREADS = Limits(1, 1024, integer=True)
ITERATIONS = Limits(0, 1000, integer=True)
LORA_SCALE = Limits(-10, 10)


def check_input_file(path: str | os.PathLike[str], kind: str, content: str) -> Path:
    """``path`` as a Path if it can be read as a ``kind`` ("audio file") holding ``content`` ("audio");
    else one line saying what it is instead: missing, a directory, a pipe, or empty (``/dev/null`` too)."""
    path = Path(path)
    article = "an" if kind[:1] in "aeiou" else "a"
    if path.is_dir():
        raise RiffstreamError(f"{path} is a directory, not {article} {kind}")
    if not path.exists():
        raise RiffstreamError(f"no such {kind}: {path}")
    if path.is_fifo() or path.is_socket():
        raise RiffstreamError(f"{path} is not a regular file: give {article} {kind}")
    if path.stat().st_size == 0:
        raise RiffstreamError(f"{path} is empty: it holds no {content}")
    return path


def _shown(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan (not a number)"
        if math.isinf(value):
            return "infinite" if value > 0 else "minus infinite"
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _read(value: object, limits: Limits) -> float | int | None:
    """``value`` (a number, or text to read as one) if it is within ``limits``, else None."""
    if isinstance(value, str):
        try:
            value = int(value.strip()) if limits.integer else float(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
        except OverflowError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not limits.holds(float(value)):
        return None
    return int(value) if limits.integer else float(value)


def complaint(value: object, limits: Limits) -> str:
    """What is wrong with ``value``, to follow an option's name: ``must be a number from 0 to 50, not inf``."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return f"must be {limits.describe()}, not {_shown(value)}"


def check_number(value: object, name: str, limits: Limits) -> float | int:
    """``value`` (a number, or text to read as one) if finite and within ``limits``; else one line naming ``name``."""
    number = _read(value, limits)
    if number is None:
        raise RiffstreamError(f"{name} {complaint(value, limits)}")
    return number


def option_type(limits: Limits) -> Callable[[str], float | int]:
    """An argparse ``type`` that reads and checks a number; argparse names the option in its error."""

    def read(text: str) -> float | int:
        number = _read(text, limits)
        if number is None:
            raise argparse.ArgumentTypeError(complaint(text, limits))
        return number

    read.__name__ = limits.describe()
    return read
