"""What a model load is asked for: one frozen dataclass, the defaults, and the cache's home."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.fingerprint import NOT_RECORDED, fingerprint

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
LCM_LORA = "lcm"
LCM_LORA_HUB_ID = "latent-consistency/lcm-lora-sdv1-5"
"""LCM-LoRA for SD 1.5: a distilled adapter that lets any SD 1.5 fine-tune denoise in 2 to 8
steps with the LCM scheduler and no classifier-free guidance (one batch-1 UNet run a step).
Its quality on Riffusion is unpublished and cannot be heard here."""
QUANTIZATIONS = (None, "int8", "hybrid")
PRECISIONS = ("auto", "bf16", "f32")
DEVICES = ("CPU", "GPU", "AUTO")
SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "lcm": "LCMScheduler",
}


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA adapter fused into the model before export: a Hub id, a ``.safetensors`` file or
    a folder holding one, or ``lcm`` (LCM-LoRA for SD 1.5); ``scale`` multiplies its weights."""

    source: str
    scale: float = 1.0

    def __str__(self) -> str:
        return self.source if self.scale == 1.0 else f"{self.source}:{self.scale:g}"


def parse_lora(text: str) -> LoraSpec:
    """``SOURCE`` or ``SOURCE:SCALE`` (``--lora``); one-line RiffstreamError if the scale is unusable."""
    source, _, scale = text.strip().rpartition(":")
    if not source or "/" in scale or "\\" in scale:
        return LoraSpec(text.strip())
    try:
        value = float(scale)
    except ValueError:
        return LoraSpec(text.strip())
    return LoraSpec(source, check_number(value, f"the scale of LoRA {source}", checks.LORA_SCALE))


@dataclass(frozen=True)
class Preset:
    """What a preset sets; every field can still be overridden on its own."""

    name: str
    steps: int
    guidance: float
    scheduler: str
    decoder: str
    loras: tuple[LoraSpec, ...]


PRESETS = {
    "quality": Preset("quality", DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_DECODER, ()),
    "live": Preset("live", 4, 1.0, "lcm", TAESD, (LoraSpec(LCM_LORA),)),
}
"""``quality``: the model as trained, 20 DPM-Solver++ steps with guidance 7 and its own VAE.
``live``: LCM-LoRA fused in, 4 LCM steps without guidance and TAESD, about 10x faster on a CPU
(``benchmarks/live.py``: 0.46x against 0.047x real time in bf16), a little softer (its quality on Riffusion is unheard: compare with ``--preset quality``)."""

PRESET_NAMES = ("auto", "live", "quality")


def auto_preset(playing: bool, device: str) -> str:
    """The preset ``auto`` stands for: ``live`` for live play on a CPU, ``quality`` otherwise.

    A CPU makes a 20-step guided clip at about a hundredth of real time (``benchmarks/live.py``),
    so live play would loop one clip for minutes; renders have no such deadline.
    """
    return "live" if playing and device.upper().split(".")[0] in ("CPU", "AUTO") else "quality"


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
    cache_dir: Path | None = field(default=None, metadata=NOT_RECORDED)
    scheduler: str = DEFAULT_SCHEDULER
    #: "vae" (the model's own decoder), "taesd", or a folder or hub id of a diffusers AutoencoderTiny.
    decoder: str = DEFAULT_DECODER
    #: LoRA adapters fused into the UNet and text encoder before export (a separate cached export).
    loras: tuple[LoraSpec, ...] = ()
    #: Inference precision on CPU: "auto" (bf16 where the CPU has bf16 units, else f32), "bf16" or "f32".
    precision: str = "auto"

    def fingerprint(self, threads: int | str | None) -> dict:
        """Everything about the model that decides the audio, as JSON-able data, with ``threads`` for the thread
        count the clips are made with (OpenVINO's output depends on it)."""
        return fingerprint(replace(self, threads=threads))

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
        if self.precision not in PRECISIONS:
            raise RiffstreamError(f"Unknown precision {self.precision!r}: use auto, bf16 or f32.")
        for lora in self.loras:
            if not isinstance(lora, LoraSpec) or not str(lora.source).strip():
                raise RiffstreamError(f"LoRA {lora!r} is not usable: give a Hub id, a .safetensors file, a folder or 'lcm'")
            check_number(lora.scale, f"the scale of LoRA {lora.source}", checks.LORA_SCALE)
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
