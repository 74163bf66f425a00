"""LoRA adapters: find them, check that they fit the model, and fuse them into its weights.

OpenVINO cannot apply a LoRA at run time (its convolution kernels have no LoRA path), so
an adapter is fused into the UNet and text encoder with diffusers' own ``load_lora_weights``
and ``fuse_lora`` (PEFT) before the export, and the fused export is cached under a key that
names every adapter's content and scale. Any SD 1.x LoRA that diffusers reads (its own
format, PEFT, kohya) fuses; one made for another base is refused in one line before any
weights load into the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import riffstream.model.hub as hub
from riffstream.errors import RiffstreamError
from riffstream.model.cache import build_atomically, cache_entry
from riffstream.model.options import LCM_LORA, LCM_LORA_HUB_ID, TINY_MODEL, LoraSpec

log = logging.getLogger(__name__)

PREFERRED_FILE = "pytorch_lora_weights.safetensors"
"""The file name diffusers gives a saved LoRA; picked first when a repo or folder holds several."""
WEIGHT_SUFFIXES = (".safetensors", ".bin")
BASES_BY_CONTEXT_WIDTH = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "Stable Diffusion XL",
                          4096: "Stable Diffusion 3 or Flux"}
"""The text-embedding width the UNet's cross-attention takes, by the base model family it identifies."""


@dataclass(frozen=True)
class Adapter:
    """A LoRA found on disk: its weights file, a short name, and what identifies its content."""

    spec: LoraSpec
    file: Path
    identity: str
    name: str


def resolve_adapters(loras: tuple[LoraSpec, ...], model: str, cache: Path, progress: bool = True) -> list[Adapter]:
    """The weights file of every adapter in ``loras``, fetched from the Hub when needed (cached there)."""
    return [_resolve(spec, model, cache, progress) for spec in loras]


def _resolve(spec: LoraSpec, model: str, cache: Path, progress: bool) -> Adapter:
    source = spec.source
    path = Path(source).expanduser()
    if source == LCM_LORA and model == TINY_MODEL:
        from riffstream.model.tiny import TINY_VERSION, build_tiny_lora

        identity = f"tiny-lcm-lora:v{TINY_VERSION}"
        folder = build_atomically(cache_entry(cache, "tiny-lcm-lora", identity, "diffusers", kind="sources"),
                                  build_tiny_lora)
        return Adapter(spec, folder / PREFERRED_FILE, identity, "lcm")
    if source == LCM_LORA:
        source = f"{LCM_LORA_HUB_ID}/{PREFERRED_FILE}"
    if path.is_file() or path.is_dir():
        file = path if path.is_file() else path / _pick([p.name for p in path.iterdir() if p.is_file()], str(path))
        digest = _digest(file)  # named by content, so a copy elsewhere reuses the export
        return Adapter(spec, file.resolve(), f"file:{digest}", f"lora-{digest[:8]}")
    if source.startswith((".", "/", "~")) or (source.endswith(WEIGHT_SUFFIXES) and source.count("/") < 2):
        raise RiffstreamError(f"LoRA {spec.source} does not exist: check --lora.")
    repo, filename = _split_hub(source)
    if not hub.is_hub_id(repo):
        raise RiffstreamError(
            f"LoRA {spec.source!r} is not a file, a folder, a Hugging Face Hub id (owner/name[/file]) or 'lcm': "
            "check --lora.")
    file = _fetch(repo, filename, progress)
    return Adapter(spec, file, f"hub:{repo}/{file.name}@{file.parent.name}", repo.split("/")[1])


def _split_hub(source: str) -> tuple[str, str | None]:
    """``owner/name`` or ``owner/name/file.safetensors`` -> (repo, file or None)."""
    parts = source.split("/")
    if len(parts) == 3 and parts[2].endswith(WEIGHT_SUFFIXES):
        return "/".join(parts[:2]), parts[2]
    return source, None


def _digest(path: Path) -> str:
    """A content hash of a weights file, so an edited file gives a new export (about 0.2 s per 100 MB)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def _pick(names: list[str], where: str) -> str:
    """The one LoRA weights file among ``names``: diffusers' own name first, else the only one."""
    weights = sorted(n for n in names if n.endswith(WEIGHT_SUFFIXES) and "/" not in n)
    if PREFERRED_FILE in weights:
        return PREFERRED_FILE
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise RiffstreamError(f"{where} holds no LoRA weights (.safetensors or .bin): check --lora.")
    listed = ", ".join(weights[:4]) + (", ..." if len(weights) > 4 else "")
    raise RiffstreamError(f"{where} holds several weights files ({listed}): name one, e.g. --lora {where}/{weights[0]}")


def _fetch(repo: str, filename: str | None, progress: bool) -> Path:
    """The adapter file from the Hugging Face cache, or downloaded into it (offline: the cache only)."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    def cached() -> Path:  # offline first: a cached adapter needs no network
        nonlocal filename
        if filename is None:
            snapshot = Path(snapshot_download(repo, allow_patterns=[f"*{s}" for s in WEIGHT_SUFFIXES],
                                              local_files_only=True))
            filename = _pick([p.name for p in snapshot.iterdir()], repo)
        return Path(hf_hub_download(repo, filename, local_files_only=True))

    found = hub.in_local_cache(cached)
    if found is not None:
        return found
    if filename is None:
        try:
            names = [s.rfilename for s in HfApi().model_info(repo).siblings or []]
        except Exception as error:
            raise _unreachable(hub.explain_hub_error(error, repo, None, "--lora", "reaching"), repo) from None
        filename = _pick(names, repo)
    log.info("downloading LoRA %s/%s", repo, filename)
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as error:
        raise _unreachable(hub.explain_hub_error(error, repo, None, "--lora", "downloading"), repo) from None


def _unreachable(problem: RiffstreamError, repo: str) -> RiffstreamError:
    """The Hub's one-line error, with the advice for an adapter rather than a model when the Hub is out of reach."""
    if not isinstance(problem, hub.HubUnreachable):
        return problem
    return hub.HubUnreachable(
        f"cannot reach the Hugging Face Hub for LoRA {repo}, and it is not in the local cache: connect and run "
        "once (`riffstream download --preset all` prepares the live preset too), or pass --lora a local .safetensors file.")


def check_fits(adapter: Adapter, context_width: int) -> None:
    """One line, before loading, if ``adapter`` was made for another base model than the UNet's.

    A LoRA's cross-attention key projection takes the text-embedding width of its base:
    768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL. A safetensors header names every tensor's
    shape, so this reads no weights.
    """
    if adapter.file.suffix != ".safetensors":
        return
    from safetensors import safe_open

    try:
        with safe_open(adapter.file, "pt") as weights:
            shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}
    except Exception as error:
        raise RiffstreamError(f"LoRA {adapter.spec.source} is not a readable safetensors file ({error}).") from None
    what = f"LoRA {adapter.spec.source}"
    if any("text_encoder_2" in key or key.startswith("lora_te2_") for key in shapes):
        raise RiffstreamError(f"{what} is for Stable Diffusion XL (it has a second text encoder): riffstream runs "
                              "SD 1.x models such as Riffusion; use a LoRA trained on SD 1.5.")
    widths = {shape[1] for key, shape in shapes.items() if _is_context_projection(key) and len(shape) == 2}
    wrong = sorted(w for w in widths if w != context_width)
    if wrong:
        base = BASES_BY_CONTEXT_WIDTH.get(wrong[0], f"a model whose text embeddings are {wrong[0]} wide")
        ours = BASES_BY_CONTEXT_WIDTH.get(context_width, f"{context_width}-wide text embeddings")
        raise RiffstreamError(f"{what} is for {base}, and this model is {ours}: use a LoRA trained on the same "
                              "base (SD 1.5 for Riffusion).")


def _is_context_projection(key: str) -> bool:
    """Whether ``key`` is the down (A) matrix of a cross-attention key or value projection in a UNet."""
    flat = key.replace(".", "_")
    return ("attn2_to_k" in flat or "attn2_to_v" in flat) and any(
        tag in flat for tag in ("lora_down", "lora_A", "down_weight"))


def fuse(pipeline_dir: Path, adapters: list[Adapter], target: Path) -> Path:
    """Load the staged diffusers pipeline in ``pipeline_dir``, fuse ``adapters`` at their scales, save to ``target``."""
    from diffusers import StableDiffusionPipeline

    context_width = json.loads((pipeline_dir / "unet" / "config.json").read_text())["cross_attention_dim"]
    for adapter in adapters:  # before the pipeline's weights load: seconds on the full-size model
        check_fits(adapter, context_width)
    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    names = []
    for number, adapter in enumerate(adapters):
        name = f"adapter{number}"
        try:
            pipe.load_lora_weights(str(adapter.file.parent), weight_name=adapter.file.name, adapter_name=name)
        except Exception as error:
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            raise RiffstreamError(f"LoRA {adapter.spec.source} does not fit this model: {detail}") from None
        if not any(name in loaded for loaded in pipe.get_list_adapters().values()):
            raise RiffstreamError(f"LoRA {adapter.spec.source} changes no layer of this model's UNet or text "
                                  "encoder: is it an SD 1.x LoRA?")
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[a.spec.scale for a in adapters])
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()
    pipe.save_pretrained(target)
    return target
