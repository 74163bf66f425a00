"""Riffusion on OpenVINO: the store (find, download, export, cache) and the runtime (encode, denoise, decode).

>>> from riffstream.model import ModelOptions, RiffusionModel
>>> model = RiffusionModel.load(ModelOptions(model="tiny"))
"""

from riffstream.model.options import (
    DEFAULT_DECODER,
    DEFAULT_GUIDANCE,
    DEFAULT_MODEL,
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    TINY_MODEL,
    ModelOptions,
    default_cache_dir,
)
from riffstream.model.runtime import Generation, RiffusionModel, noise_for_seed
from riffstream.model.store import resolve_decoder, resolve_ir

__all__ = [
    "DEFAULT_DECODER",
    "DEFAULT_GUIDANCE",
    "DEFAULT_MODEL",
    "DEFAULT_SCHEDULER",
    "DEFAULT_STEPS",
    "TINY_MODEL",
    "Generation",
    "ModelOptions",
    "RiffusionModel",
    "default_cache_dir",
    "noise_for_seed",
    "resolve_decoder",
    "resolve_ir",
]
