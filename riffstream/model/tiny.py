"""A tiny random-weight Riffusion checkpoint, built offline in the layout the real one has.

It has the architecture *shape* of Riffusion / SD 1.5 (UNet with cross-attention, a VAE
with four blocks = 8x downsampling, a CLIP text encoder, a CLIP tokenizer with
``model_max_length=77``) but only a few thousand channels in total, so it exports in
seconds and runs a step in well under a second. Its output is noise: it exists so that
tests and smoke runs exercise the real loading/export/generation path without the hub.

:func:`write_riffusion_layout` saves any SD 1.x components the way
``riffusion/riffusion-model-v1`` was published in late 2022 (diffusers 0.9): PyTorch
``.bin`` weights, a ``model_index.json`` naming a safety checker and a
``CLIPFeatureExtractor``, an old-format PNDM scheduler config and a tokenizer with no
``tokenizer.json``. The tiny model goes through the model store exactly as that
checkpoint does, and the benchmarks lay out the full-size architecture the same way.

The tokenizer uses a byte-level vocabulary made in code (every byte, its end-of-word
variant and the two CLIP specials; no BPE merges), so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

TINY_VERSION = 2
"""Bump when the architecture, weights or layout change, so cached copies are rebuilt."""

SEED = 0
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_DIFFUSERS_VERSION = "0.9.0"
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte-to-printable-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _added_token(content: str) -> dict:
    """A special token as tokenizers of 2022 serialised it."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_byte_tokenizer(folder: Path) -> int:
    """Write a byte-level CLIP tokenizer to ``folder`` in the 2022 file set (no ``tokenizer.json``);
    returns its vocabulary size."""
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [_BOS, _EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    _json(folder / "special_tokens_map.json", {"bos_token": _added_token(_BOS), "eos_token": _added_token(_EOS),
                                              "pad_token": _EOS, "unk_token": _added_token(_EOS)})
    _json(folder / "tokenizer_config.json", {
        "add_prefix_space": False, "bos_token": _added_token(_BOS), "do_lower_case": True,
        "eos_token": _added_token(_EOS), "errors": "replace", "model_max_length": 77, "pad_token": _EOS,
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token(_EOS)})
    return len(vocab)


def _save_bin(model: torch.nn.Module, config: dict, folder: Path, weights: str) -> None:
    """A component as a config and a pickled PyTorch state dict, as checkpoints were saved in 2022."""
    _json(folder / "config.json", config)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / weights)


def write_riffusion_layout(folder: Path, unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module,
                           safety_checker: torch.nn.Module | None = None) -> Path:
    """Save SD 1.x components in ``folder`` as ``riffusion/riffusion-model-v1`` is laid out.

    The tokenizer must already be in ``folder/tokenizer`` (:func:`write_byte_tokenizer`).
    ``safety_checker`` is a ``StableDiffusionSafetyChecker``; None writes a tiny random one.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    folder = Path(folder)
    if safety_checker is None:
        torch.manual_seed(SEED + 4)
        safety_checker = StableDiffusionSafetyChecker(CLIPConfig(
            text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
            vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
            projection_dim=768))
    _json(folder / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": _DIFFUSERS_VERSION,
        "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    _json(folder / "scheduler" / "scheduler_config.json", {
        "_class_name": "PNDMScheduler", "_diffusers_version": _DIFFUSERS_VERSION, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False})
    _json(folder / "feature_extractor" / "preprocessor_config.json", {
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
        "resample": 3, "size": 224})
    for name, model in (("unet", unet), ("vae", vae)):
        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        config.update(_class_name=type(model).__name__, _diffusers_version=_DIFFUSERS_VERSION)
        _save_bin(model, config, folder / name, "diffusion_pytorch_model.bin")
    for name, model in (("text_encoder", text_encoder), ("safety_checker", safety_checker)):
        config = model.config.to_dict()
        config.update(architectures=[type(model).__name__], transformers_version="4.22.0.dev0")
        _save_bin(model, config, folder / name, "pytorch_model.bin")
    return folder


def tiny_unet() -> UNet2DConditionModel:
    """The tiny UNet, with its fixed-seed random weights: SD 1.x's block types at a few channels."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


LORA_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2", "conv_shortcut")
"""The UNet layers LCM-LoRA adapts: attention projections and the ResNet convolutions."""


def build_tiny_lora(folder: Path, seed: int = SEED + 4, rank: int = 4) -> Path:
    """Save a random LoRA for the tiny UNet in ``folder``: the offline stand-in for LCM-LoRA, over the same kinds of layer."""
    return write_random_lora(folder, tiny_unet(), seed, rank)


def write_random_lora(folder: Path, unet: UNet2DConditionModel, seed: int, rank: int) -> Path:
    """Save a random LoRA for ``unet`` over :data:`LORA_LAYERS` in diffusers' PEFT format
    (``pytorch_lora_weights.safetensors``), as ``save_lora_weights`` writes a trained one."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_LAYERS), init_lora_weights=False))
    state = get_peft_model_state_dict(unet)
    with torch.no_grad():  # PEFT's default init leaves B at zero (no change): draw it small instead
        for key, value in state.items():
            if "lora_B" in key:
                value.copy_(torch.randn_like(value) * 0.05)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True)
    return Path(folder)


def build_tiny_pipeline(folder: Path) -> Path:
    """Build the tiny random-weight checkpoint in ``folder``, in Riffusion's published layout.

    Weights come from a fixed seed, so the saved files (and the export) are reproducible.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    vocab_size = write_byte_tokenizer(folder / "tokenizer")
    bos, eos = vocab_size - 2, vocab_size - 1
    unet = tiny_unet()
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=512,
    )
    torch.manual_seed(SEED + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    return write_riffusion_layout(folder, unet, vae, text_encoder)


def build_tiny_decoder(folder: Path) -> Path:
    """Build a tiny random-weight TAESD-shaped ``AutoencoderTiny`` (8x upsampling) in ``folder``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(SEED + 3)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(folder)
    return Path(folder)
