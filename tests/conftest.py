"""Shared fixtures. One tiny random-weight model is exported per test session and reused."""

import os
import signal
from pathlib import Path

import pytest

from tests.jack import jack_server  # noqa: F401 (a fixture: a private JACK server for live play)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The tests stop commands with SIGINT, as a terminal's Ctrl-C does. A shell starts a background
# job with SIGINT ignored, and the commands would inherit that: give them the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TINY_SIZE = 128
"""Clip size (pixels) the shared tiny model is compiled for: small, so each step is milliseconds."""


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    """A cache dir private to this test session (exports, compiled-model blobs)."""
    return tmp_path_factory.mktemp("riffstream-cache")


@pytest.fixture(scope="session")
def tiny_model(model_cache_dir):
    """The tiny model, exported once per session through the same code path as real models; in f32,
    the exact path the parity tests hold to diffusers' (bf16 has its own test and bound)."""
    from riffstream.model import ModelOptions, RiffusionModel

    options = ModelOptions(model="tiny", height=TINY_SIZE, width=TINY_SIZE, cache_dir=model_cache_dir, precision="f32")
    return RiffusionModel.load(options, progress=False)


@pytest.fixture(scope="session")
def tiny_exported(model_cache_dir, tiny_model) -> Path:
    """The session cache dir, with the tiny model already exported (for CLI subprocesses)."""
    return model_cache_dir
