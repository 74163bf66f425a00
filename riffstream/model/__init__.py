"""Riffusion on OpenVINO: the store (find, download, export, cache) and the runtime (encode, denoise, decode).

Imports run one way, from the runtime down to the cache:

* :mod:`~riffstream.model.runtime`: :class:`RiffusionModel`, compiled and run; :func:`resolve_ir`
  (the store's, with hybrid quantisation calibrated on the running model);
* :mod:`~riffstream.model.store`: a model's OpenVINO IR and decoder, fetched, exported, quantised, cached;
* :mod:`~riffstream.model.adapters`: LoRA weights found or fetched, and fused before export;
* :mod:`~riffstream.model.hub`: the Hugging Face Hub: the local cache first, then the network, and
  its errors as one line (:func:`~riffstream.model.hub.explain_hub_error`);
* :mod:`~riffstream.model.cache`: cache folders, each built whole under a lock;
* :mod:`~riffstream.model.checkpoint`, :mod:`~riffstream.model.tiny`, :mod:`~riffstream.model.residency`:
  checkpoint layouts, the offline test model, resident memory;
* :mod:`~riffstream.model.options`: :class:`ModelOptions` and the presets, plain data.

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
from riffstream.model.runtime import Generation, RiffusionModel, noise_for_seed, resolve_ir
from riffstream.model.store import resolve_decoder

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
