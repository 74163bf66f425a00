"""What a model load is asked for: one frozen dataclass, the defaults, and the cache's home."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError

DEFAULT_MODEL = "riffusion/riffusion-model-v1"
DEFAULT_STEPS = 20
"""DPM-Solver++ (2M) reaches in about 20 steps what PNDM/DDIM need 50 for; fewer steps
start to blur the spectrogram's harmonics, more add little (see README)."""
DEFAULT_GUIDANCE = 7.0
DEFAULT_SCHEDULER = "dpm++"
DEFAULT_DECODER = "vae"
TAESD = "taesd"
TAESD_HUB_ID = "madebyollin/taesd"
"""TAESD: a tiny distilled decoder for SD 1.x latents (about 1.2 M parameters against the VAE
decoder's 49 M); on 2 CPU cores it decodes a 512x512 clip in about 4 s against 54 s, a little softer."""
TINY_MODEL = "tiny"
QUANTIZATIONS = (None, "int8", "hybrid")
DEVICES = ("CPU", "GPU", "AUTO")
SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}


@dataclass(frozen=True)
class ModelOptions:
    """How to find, convert and run the model. Everything that changes the IR is in the cache key."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "CPU"
    threads: int | None = None
    height: int = 512
    width: int = 512
    quantization: str | None = None
    cache_dir: Path | None = None
    scheduler: str = DEFAULT_SCHEDULER
    #: "vae" (the model's own decoder), "taesd", or a folder or hub id of a diffusers AutoencoderTiny.
    decoder: str = DEFAULT_DECODER

    def check(self) -> None:
        """Raise a one-line :class:`RiffstreamError` for an option no model load could satisfy."""
        if not isinstance(self.device, str) or self.device.upper().split(".")[0] not in DEVICES:
            raise RiffstreamError(f"Unknown device {self.device!r}: use CPU, GPU or AUTO.")
        check_number(self.width, "width", checks.WIDTH)
        check_number(self.height, "height", checks.WIDTH)
        if self.threads is not None:
            check_number(self.threads, "threads", checks.THREADS)
        if self.height % 8 or self.width % 8:
            raise RiffstreamError(f"Image size {self.width}x{self.height} must be multiples of 8.")
        if self.scheduler not in SCHEDULERS:
            raise RiffstreamError(f"Unknown scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}.")
        if self.quantization not in QUANTIZATIONS:
            raise RiffstreamError(f"Unknown quantization {self.quantization!r}: use one of int8, hybrid, or none.")
        if not self.model.strip() or not self.decoder.strip():
            raise RiffstreamError("the model and the decoder must be named: give a Hub id, a folder or 'tiny'")

    @property
    def cache(self) -> Path:
        """The riffstream cache folder these options use (exports, compiled models)."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()


def default_cache_dir() -> Path:
    """``$RIFFSTREAM_CACHE``, else the user cache dir (``$XDG_CACHE_HOME/riffstream`` on Linux)."""
    if os.environ.get("RIFFSTREAM_CACHE"):
        return Path(os.environ["RIFFSTREAM_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("riffstream", appauthor=False))
