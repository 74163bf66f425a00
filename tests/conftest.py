"""Shared fixtures and the suite's two tiers.

``make check`` runs every test not marked ``slow`` (the inner loop, about three minutes on
two cores); ``make test`` runs them all. The tiny random-weight model is exported once and
kept between test sessions (see :func:`model_cache_dir`), so the inner loop does not pay the
export every time.
"""

import hashlib
import importlib.metadata
import os
import signal
from pathlib import Path

import pytest

import tests.fuzzing  # noqa: F401 (registers and loads Hypothesis's profiles)
from tests.jack import jack_server  # noqa: F401 (a fixture: a private JACK server for live play)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The tests stop commands with SIGINT, as a terminal's Ctrl-C does. A shell starts a background
# job with SIGINT ignored, and the commands would inherit that: give them the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
TINY_SIZE = 128
"""Clip size (pixels) the shared tiny model is compiled for: small, so each step is milliseconds."""

_MODEL_CODE = sorted((ROOT / "riffstream" / "model").glob("*.py"))
_EXPORTERS = ("openvino", "optimum-intel", "optimum", "diffusers", "transformers", "torch", "nncf", "peft")


def _cache_key() -> str:
    """A digest of everything an export depends on: riffstream's model code and the exporting libraries' versions."""
    digest = hashlib.sha256()
    for path in _MODEL_CODE:
        digest.update(path.name.encode() + path.read_bytes())
    for name in _EXPORTERS:
        try:
            digest.update(f"{name}={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The model cache the tests share, kept between sessions: tiny exports and compiled blobs.

    It lives in ``.cache/tests/<key>`` in the checkout (``RIFFSTREAM_TEST_CACHE`` moves it), where
    the key changes with any edit to ``riffstream/model`` or any exporting library's version, so a
    change to either is always tested on a fresh export. The store builds each entry under a file
    lock and renames it into place, so sessions running at once share it safely.
    """
    root = Path(os.environ.get("RIFFSTREAM_TEST_CACHE", ROOT / ".cache" / "tests"))
    folder = root / _cache_key()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def tiny_model(model_cache_dir):
    """The tiny model, exported through the same code path as real models; in f32, the exact path
    the parity tests hold to diffusers' (bf16 has its own test and bound)."""
    from riffstream.model import ModelOptions, RiffusionModel

    options = ModelOptions(model="tiny", height=TINY_SIZE, width=TINY_SIZE, cache_dir=model_cache_dir, precision="f32")
    return RiffusionModel.load(options, progress=False)


@pytest.fixture(scope="session")
def tiny_exported(model_cache_dir, tiny_model) -> Path:
    """The shared cache dir, with the tiny model already exported (for CLI subprocesses)."""
    return model_cache_dir


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded: for errors that must be found before the (slow) load."""
    from riffstream.model import RiffusionModel

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was found")

    monkeypatch.setattr(RiffusionModel, "load", load)
