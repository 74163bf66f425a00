"""The live preset's parts on the tiny model: LoRA fusion, the LCM scheduler, the export cache, precision.

Parity tolerance is the runtime's (see test_model.py): f32 8-bit images within 2 levels in
any pixel and 0.05 on average. bf16 keeps 8 bits of mantissa, so its bound is looser: within
16 levels and 2 on average (measured on the tiny model: 8 and 0.7). The decoders stay in f32.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import riffstream.model.store as store
import riffstream.model.tiny as tm
from riffstream.cli import parse, plan_generation
from riffstream.errors import RiffstreamError
from riffstream.model import ModelOptions, RiffusionModel, noise_for_seed
from riffstream.model.options import LoraSpec, auto_preset, parse_lora
from riffstream.model.runtime import cpu_has_bf16, noise_seed, resolve_precision
from tests.conftest import TINY_SIZE

STEPS = 4
F32_BOUND = (2, 0.05)
BF16_BOUND = (16, 2.0)
PROMPT = "lofi hip hop beat"


def _diff(a: PIL.Image.Image, b: PIL.Image.Image) -> tuple[float, float]:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return d.max(), d.mean()


def _within(a, b, bound) -> None:
    biggest, mean = _diff(a, b)
    assert biggest <= bound[0] and mean <= bound[1], (biggest, mean)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory) -> Path:
    """A LoRA for the tiny UNet in diffusers' PEFT format, other than the LCM stand-in."""
    return tm.build_tiny_lora(tmp_path_factory.mktemp("lora") / "style-lora", seed=11)


@pytest.fixture(scope="module")
def source(model_cache_dir, tiny_model) -> Path:
    return store.cache_entry(model_cache_dir, "tiny", f"tiny:v{tm.TINY_VERSION}", "diffusers", kind="sources")


def _torch_pipe(source: Path, scheduler: str = "dpm++"):
    import diffusers

    from riffstream.model.options import SCHEDULERS

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None)
    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _torch_image(pipe, model: RiffusionModel, noise: np.ndarray, guidance: float, steps: int = STEPS,
                 generator=None) -> PIL.Image.Image:
    with torch.no_grad():
        return pipe(prompt_embeds=torch.from_numpy(model.encode_prompt(PROMPT)),
                    negative_prompt_embeds=torch.from_numpy(model.encode_prompt("")),
                    latents=torch.from_numpy(noise), num_inference_steps=steps, guidance_scale=guidance,
                    height=TINY_SIZE, width=TINY_SIZE, generator=generator).images[0]


def _ov_image(model: RiffusionModel, noise: np.ndarray, guidance: float, steps: int = STEPS) -> PIL.Image.Image:
    return model.generate(model.encode_prompt(PROMPT), latents=noise, steps=steps, guidance=guidance).image


@pytest.fixture(scope="module")
def fused_model(model_cache_dir, tiny_model, lora_dir) -> RiffusionModel:
    options = replace(tiny_model.options, loras=(LoraSpec(str(lora_dir), 0.7),))
    return RiffusionModel.load(options, progress=False)


@pytest.fixture(scope="module")
def lcm_model(model_cache_dir, tiny_model) -> RiffusionModel:
    """The live preset's model on the tiny checkpoint: the LCM-LoRA stand-in fused, LCM scheduler, f32."""
    options = replace(tiny_model.options, loras=(LoraSpec("lcm"),), scheduler="lcm")
    return RiffusionModel.load(options, progress=False)


def test_a_fused_lora_export_matches_diffusers_load_lora_weights_and_fuse_lora(fused_model, tiny_model, source,
                                                                               lora_dir):
    noise = noise_for_seed(5, fused_model.latents_shape)
    pipe = _torch_pipe(source)
    pipe.load_lora_weights(str(lora_dir), weight_name="pytorch_lora_weights.safetensors")
    pipe.fuse_lora(lora_scale=0.7)
    expected = _torch_image(pipe, fused_model, noise, guidance=7.0)
    _within(_ov_image(fused_model, noise, 7.0), expected, F32_BOUND)
    # and the LoRA really is in the export: without it the image is far from diffusers' fused one
    assert _diff(_ov_image(tiny_model, noise, 7.0), expected)[1] > 10 * F32_BOUND[1]


def _as_kohya(lora_dir: Path, folder: Path) -> Path:
    """The same adapter in kohya's key layout (``lora_unet_..._to_q.lora_down.weight`` and ``.alpha``),
    as many published SD 1.5 LoRAs are saved."""
    from safetensors.torch import load_file, save_file

    peft = load_file(lora_dir / "pytorch_lora_weights.safetensors")
    kohya = {}
    for key, value in peft.items():
        module, kind = key.removeprefix("unet.").rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        if kind.startswith("A"):
            kohya[f"{stem}.alpha"] = torch.tensor(float(value.shape[0]))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(kohya, folder / "style_kohya.safetensors")
    return folder / "style_kohya.safetensors"


def test_a_kohya_format_lora_fuses_to_the_same_model_as_its_peft_twin(fused_model, lora_dir, tmp_path):
    kohya = _as_kohya(lora_dir, tmp_path / "kohya")
    twin = RiffusionModel.load(replace(fused_model.options, loras=(LoraSpec(str(kohya), 0.7),)), progress=False)
    noise = noise_for_seed(6, twin.latents_shape)
    _within(_ov_image(twin, noise, 7.0), _ov_image(fused_model, noise, 7.0), F32_BOUND)


def test_the_lcm_path_matches_diffusers_lcm_scheduler_pipeline(lcm_model, source, model_cache_dir):
    from riffstream.model.adapters import resolve_adapters

    noise = noise_for_seed(9, lcm_model.latents_shape)
    pipe = _torch_pipe(source, "lcm")
    lora = resolve_adapters((LoraSpec("lcm"),), "tiny", model_cache_dir, progress=False)[0].file
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    pipe.fuse_lora()
    generator = torch.Generator("cpu").manual_seed(noise_seed(noise))
    expected = _torch_image(pipe, lcm_model, noise, guidance=1.0, generator=generator)
    _within(_ov_image(lcm_model, noise, 1.0), expected, F32_BOUND)


def test_lcm_clips_are_reproducible_and_differ_by_seed(lcm_model):
    embeds = lcm_model.encode_prompt(PROMPT)
    first, again, other = (lcm_model.denoise(embeds, latents=noise_for_seed(seed, lcm_model.latents_shape),
                                             steps=STEPS, guidance=1.0) for seed in (1, 1, 2))
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_lcm_img2img_runs_every_step_on_the_strength_share_of_the_schedule(lcm_model):
    image = PIL.Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), 128, np.uint8))
    init = lcm_model.encode_image(image)
    embeds, noise = lcm_model.encode_prompt(PROMPT), noise_for_seed(3, lcm_model.latents_shape)
    distance = {}
    for strength in (0.2, 1.0):
        calls = []
        latents = lcm_model.denoise(embeds, latents=noise, steps=STEPS, guidance=1.0, init_latents=init,
                                    strength=strength, on_step=lambda i, total: calls.append(total))
        assert calls == [STEPS] * STEPS  # LCM spreads all its steps over the shorter schedule, as diffusers' does
        distance[strength] = float(np.abs(latents - init).mean())
    assert distance[0.2] < 0.5 * distance[1.0], distance


def test_the_export_cache_is_keyed_by_adapter_content_and_scale(fused_model, tiny_model, lora_dir, tmp_path,
                                                                 monkeypatch):
    ir = store.resolve_ir(fused_model.options, progress=False)
    assert ir != store.resolve_ir(tiny_model.options, progress=False)
    moved = shutil.copytree(lora_dir, tmp_path / "elsewhere")  # the same content under another path: reused

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(store, "_export", no_export)
    assert store.resolve_ir(replace(fused_model.options, loras=(LoraSpec(str(moved), 0.7),)), progress=False) == ir
    with pytest.raises(AssertionError, match="exported again"):
        store.resolve_ir(replace(fused_model.options, loras=(LoraSpec(str(lora_dir), 0.5),)), progress=False)
    tm.build_tiny_lora(moved, seed=12)  # other content at the same path: a new export
    with pytest.raises(AssertionError, match="exported again"):
        store.resolve_ir(replace(fused_model.options, loras=(LoraSpec(str(moved), 0.7),)), progress=False)


def _lora_file(folder: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: torch.zeros(shape) for key, shape in shapes.items()}, folder / "pytorch_lora_weights.safetensors")
    return folder / "pytorch_lora_weights.safetensors"


ATTN2 = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.mark.parametrize("name, shapes, expected", [
    ("sdxl", {f"{ATTN2}.to_k.lora_A.weight": (4, 2048), f"{ATTN2}.to_k.lora_B.weight": (640, 4),
              "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": (4, 1280)}, "Stable Diffusion XL"),
    ("sd2", {f"{ATTN2}.to_k.lora_A.weight": (4, 1024), f"{ATTN2}.to_k.lora_B.weight": (640, 4)},
     "Stable Diffusion 2.x"),
    ("kohya-sd2", {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v.lora_down.weight": (4, 1024),
                   "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v.lora_up.weight": (640, 4)},
     "Stable Diffusion 2.x"),
    ("llm", {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 32)}, "changes no layer"),
])
def test_a_lora_for_another_base_is_one_line(tiny_model, tmp_path, name, shapes, expected):
    file = _lora_file(tmp_path / name, shapes)
    options = replace(tiny_model.options, loras=(LoraSpec(str(file)),))
    with pytest.raises(RiffstreamError) as excinfo:
        store.resolve_ir(options, progress=False)
    assert expected in _one_line(excinfo)
    assert not list((tiny_model.options.cache / "models").glob("*/*.partial-*"))


@pytest.mark.parametrize("source, expected", [
    ("missing/adapter.safetensors", "does not exist"),
    ("not a lora!", "not a file, a folder"),
    ("no-such-owner/no-such-lora", "cannot reach the Hugging Face Hub"),
    ("EMPTY", "holds no LoRA weights"),
    ("GARBAGE", "not a readable safetensors file"),
])
def test_a_missing_or_unreadable_lora_is_one_line(tiny_model, tmp_path, source, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.safetensors").write_bytes(b"<html>not weights</html>")
    source = {"EMPTY": str(tmp_path / "empty"), "GARBAGE": str(tmp_path / "garbage.safetensors")}.get(source, source)
    with pytest.raises(RiffstreamError) as excinfo:
        store.resolve_ir(replace(tiny_model.options, loras=(LoraSpec(source),)), progress=False)
    assert expected in _one_line(excinfo)


def test_lora_scales_parse_and_bad_ones_are_refused():
    assert parse_lora("owner/name") == LoraSpec("owner/name", 1.0)
    assert parse_lora("owner/name:0.8") == LoraSpec("owner/name", 0.8)
    assert parse_lora("./style.safetensors:-1") == LoraSpec("./style.safetensors", -1.0)
    with pytest.raises(RiffstreamError, match="from -10 to 10"):
        parse_lora("owner/name:99")
    with pytest.raises(RiffstreamError, match="not a number|not nan"):
        parse_lora("owner/name:nan")


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    return set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_units():
    has_bf16 = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert cpu_has_bf16() == has_bf16
    assert resolve_precision(ModelOptions(precision="auto")) == ("bf16" if has_bf16 else "f32")
    assert resolve_precision(ModelOptions(precision="f32")) == "f32"


def test_bf16_runs_within_its_bound_where_the_cpu_has_it_and_is_refused_where_not(tiny_model, source):
    options = replace(tiny_model.options, precision="bf16")
    if not cpu_has_bf16():
        with pytest.raises(RiffstreamError) as excinfo:
            RiffusionModel.load(options, progress=False)
        assert "no bf16 units" in _one_line(excinfo)
        return
    model = RiffusionModel.load(options, progress=False)
    assert model.precision == "bf16"
    noise = noise_for_seed(4, model.latents_shape)
    expected = _torch_image(_torch_pipe(source), model, noise, guidance=7.0)
    _within(_ov_image(model, noise, 7.0), expected, BF16_BOUND)


def _plan(*argv: str):
    return plan_generation(parse(["lofi", "--model", "tiny", *argv]))


def test_auto_preset_is_live_for_live_play_on_a_cpu_and_quality_for_renders(tmp_path):
    assert auto_preset(playing=True, device="CPU") == "live"
    assert auto_preset(playing=False, device="CPU") == "quality"
    assert auto_preset(playing=True, device="GPU") == "quality"
    render = _plan("--no-play", "--out", str(tmp_path / "x.wav"))
    assert render.preset == "quality"
    assert (render.stream.steps, render.stream.guidance, render.model.loras) == (20, 7.0, ())
    live = _plan("--preset", "live", "--no-play", "--out", str(tmp_path / "x.wav"))
    assert (live.stream.steps, live.stream.guidance) == (4, 1.0)
    assert (live.model.scheduler, live.model.decoder, live.model.loras) == ("lcm", "taesd", (LoraSpec("lcm"),))


def test_a_preset_keeps_every_override(tmp_path):
    plan = _plan("--preset", "live", "--steps", "2", "--guidance", "1.5", "--decoder", "vae", "--scheduler", "euler",
                 "--lora", "owner/style:0.5", "--precision", "f32", "--no-play", "--out", str(tmp_path / "x.wav"))
    assert plan.preset == "live"
    assert (plan.stream.steps, plan.stream.guidance) == (2, 1.5)
    assert (plan.model.decoder, plan.model.scheduler, plan.model.precision) == ("vae", "euler", "f32")
    assert plan.model.loras == (LoraSpec("lcm"), LoraSpec("owner/style", 0.5))
    quality = _plan("--preset", "quality", "--lora", "lcm", "--no-play", "--out", str(tmp_path / "x.wav"))
    assert quality.model.loras == (LoraSpec("lcm"),) and quality.stream.steps == 20
