"""Hypothesis's two profiles, and how many examples a property test runs under each.

``ci`` (what ``make test`` passes as ``--hypothesis-profile ci``) runs each test's full,
derandomised budget; ``dev``, the default, a tenth of it for the inner loop. Both are
derandomised, so a failure seen once is seen again.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"derandomize": True, "deadline": None,
           "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=100, **_COMMON)
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def examples(full: int) -> int:
    """How many examples to run: ``full`` under the ``ci`` profile, a tenth of it (at least 3) under ``dev``."""
    return max(3, round(full * settings.default.max_examples / 100))
