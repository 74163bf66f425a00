"""What an SD 1.x checkpoint in diffusers layout looks like, and which of its files riffstream runs.

Published fine-tunes such as ``riffusion/riffusion-model-v1`` (late 2022) carry more than
the pipeline runs: a safety checker (1.2 GB) and a feature extractor named in
``model_index.json``, a 14 GB ``.ckpt``, a traced UNet, and later maybe ``.safetensors``
twins or ``fp16`` variants. This module picks the five parts text-to-image needs, one
weight format each (safetensors when present, else ``.bin``), tells an SD 1.x pipeline
from other models with one line, and lays out a folder that names only those parts, so
that diffusers and optimum-intel never reach for anything else.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from riffstream.errors import RiffstreamError

PARTS = ("scheduler", "text_encoder", "tokenizer", "unet", "vae")
"""The pipeline components text-to-image and img2img run."""
WEIGHTED_PARTS = ("text_encoder", "unet", "vae")
INDEX = "model_index.json"
PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")

_WEIGHT = re.compile(r"(diffusion_pytorch_model|model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")
"""Full-precision weights, single or sharded, with no variant infix (``.fp16.``, ``.non_ema.``)."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".gguf")
_SMALL_SUFFIXES = (".json", ".txt")


def _weights_of(names: list[str]) -> list[str]:
    """One format of full-precision weights among a part's file ``names``: safetensors if any, else bin."""
    full = [n for n in names if _WEIGHT.fullmatch(n.rsplit("/", 1)[-1])]
    safetensors = [n for n in full if ".safetensors" in n]
    return safetensors or [n for n in full if ".bin" in n]


def select_files(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split a repo's file list into (small files, weight files) the pipeline runs; the rest is never fetched.

    Small files are ``model_index.json`` and the parts' JSON and text files (configs,
    tokenizer); weights are one format per weighted part.
    """
    names = sorted(set(names))
    small = [INDEX] if INDEX in names else []
    weights: list[str] = []
    for part in PARTS:
        inside = [n for n in names if n.startswith(f"{part}/") and n.count("/") == 1]
        small += [n for n in inside if n.endswith(_SMALL_SUFFIXES) and not n.endswith(".index.json")]
        if part in WEIGHTED_PARTS:
            weights += _weights_of([n for n in inside if n.endswith(_WEIGHT_SUFFIXES) or n.endswith(".index.json")])
    return small, weights


def _config(read: Callable[[str], dict | None], name: str) -> dict:
    return read(name) or {}


def check_pipeline(read: Callable[[str], dict | None], what: str) -> None:
    """Raise a one-line error unless the checkpoint ``what`` is an SD 1.x text-to-image pipeline.

    ``read(path)`` returns the parsed JSON file at ``path`` in the checkpoint, or None if absent,
    so the same check runs on a local folder and on a Hub repo before its weights download.
    """
    expected = "riffstream runs Stable Diffusion 1.x text-to-image checkpoints in diffusers layout, such as riffusion/riffusion-model-v1"
    index = read(INDEX)
    if index is None:
        if read("config.json") is not None:
            raise RiffstreamError(f"{what} is a single model, not a diffusers pipeline (no {INDEX}): {expected}.")
        raise RiffstreamError(f"{what} is not a diffusers pipeline (no {INDEX}): {expected}.")
    kind = str(index.get("_class_name", "unknown"))
    if kind.startswith("OV"):
        kind = kind[2:]
    if "XL" in kind:
        raise RiffstreamError(f"{what} is a Stable Diffusion XL pipeline ({kind}): {expected}.")
    if kind not in PIPELINE_CLASSES:
        raise RiffstreamError(f"{what} is a diffusers {kind}, not a Stable Diffusion text-to-image pipeline: {expected}.")
    missing = [part for part in PARTS if part not in index]
    if missing:
        raise RiffstreamError(f"{what} lacks the pipeline part{'s' * (len(missing) > 1)} {', '.join(missing)}: {expected}.")
    unet = _config(read, "unet/config.json")
    scheduler = _config(read, "scheduler/scheduler_config.json")
    if not unet:
        raise RiffstreamError(f"{what} has no unet/config.json: {expected}.")
    if unet.get("addition_embed_type") or unet.get("cross_attention_dim") == 2048:
        raise RiffstreamError(f"{what} is a Stable Diffusion XL checkpoint: {expected}.")
    if scheduler.get("prediction_type") == "v_prediction" or unet.get("cross_attention_dim") == 1024:
        raise RiffstreamError(
            f"{what} is a Stable Diffusion 2.x checkpoint (v-prediction or a 1024-wide text encoder, 768-pixel "
            f"training): {expected}.")
    if unet.get("in_channels", 4) != 4:
        raise RiffstreamError(
            f"{what} has a UNet with {unet['in_channels']} input channels (an inpainting or depth model), "
            f"not text-to-image: {expected}.")


def read_folder(folder: Path) -> Callable[[str], dict | None]:
    """A ``read`` for :func:`check_pipeline` on a local folder; unreadable JSON is a one-line error."""

    def read(name: str) -> dict | None:
        path = folder / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RiffstreamError(f"{path} is not valid JSON: {error}") from None

    return read


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder``, as repo-relative posix paths (symlinks followed, as in the Hub cache)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def missing_weights(folder: Path) -> list[str]:
    """The weighted parts of ``folder`` that have no full-precision weights riffstream can load."""
    _, weights = select_files(folder_files(folder))
    return [part for part in WEIGHTED_PARTS if not any(w.startswith(f"{part}/") for w in weights)]


def check_folder(folder: Path, what: str | None = None) -> None:
    """:func:`check_pipeline` on a local folder, and every weighted part has loadable weights."""
    what = what or str(folder)
    check_pipeline(read_folder(folder), what)
    missing = missing_weights(folder)
    if missing:
        raise RiffstreamError(
            f"{what} has no full-precision weights for {', '.join(missing)} (expected "
            f"diffusion_pytorch_model.safetensors or .bin, model.safetensors or pytorch_model.bin).")


def stage(source: Path, target: Path) -> Path:
    """Lay out in ``target`` a pipeline folder naming only :data:`PARTS`, linked to ``source``'s files.

    The rewritten ``model_index.json`` drops the safety checker and feature extractor (so no
    loader looks for them: transformers 5 has no ``CLIPFeatureExtractor``), and each part
    folder links only the files :func:`select_files` keeps, so a folder holding both
    ``.bin`` and ``.safetensors`` is read in one format. Nothing is copied.
    """
    index = json.loads((source / INDEX).read_text(encoding="utf-8"))
    kept = {key: value for key, value in index.items() if key.startswith("_") or key in PARTS}
    kept["_class_name"] = "StableDiffusionPipeline"
    kept["requires_safety_checker"] = False
    target.mkdir(parents=True, exist_ok=True)
    (target / INDEX).write_text(json.dumps(kept, indent=2), encoding="utf-8")
    small, weights = select_files(folder_files(source))
    for name in small + weights:
        if name == INDEX:
            continue
        link = target / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("tokenizer/") and name.endswith(".json") and '"__type"' in (source / name).read_text("utf-8"):
            # Tokenizers of 2022 tag special tokens with "__type": "AddedToken", which the
            # tokenizers library now ignores with a line on stdout per token.
            content = _without_type_tags(json.loads((source / name).read_text("utf-8")))
            link.write_text(json.dumps(content, indent=2), encoding="utf-8")
        else:
            os.symlink((source / name).resolve(), link)
    return target


def _without_type_tags(value):
    """``value`` with every ``__type`` key dropped, at any depth."""
    if isinstance(value, dict):
        return {k: _without_type_tags(v) for k, v in value.items() if k != "__type"}
    if isinstance(value, list):
        return [_without_type_tags(v) for v in value]
    return value
