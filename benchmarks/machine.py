"""The machine a benchmark ran on: its CPU features, printed beside every figure.

CPUs of one machine kind differ (AVX2-only or AVX-512 with bf16 and VNNI), so figures are
only comparable as ratios within one run, on the features listed here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The CPU features that decide OpenVINO's and PyTorch's kernels, from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    match = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    found = set(match.group(1).split()) if match else set()
    return [flag for flag in FLAGS if flag in found]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    match = re.search(r"^model name\s*:(.*)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    return match.group(1).strip() if match else "unknown"


def machine() -> dict:
    """``cpu_model``, ``cpu_flags`` and ``cores`` for a benchmark's JSON line."""
    return {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count()}
