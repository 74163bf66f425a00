"""The model runtime, on the tiny random-weight model (offline, exported like a real model).

Parity tolerance: the OpenVINO pipeline and the diffusers PyTorch pipeline, given the same
embeddings, noise and scheduler, must produce 8-bit images that differ by at most 2 levels
in any pixel and 0.05 levels on average (both run in f32; measured: max 1, mean < 1e-3).
"""

import re
import shutil
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import riffstream.model.store as store
import riffstream.model.tiny as tm
from riffstream.errors import RiffstreamError
from riffstream.model import ModelOptions, RiffusionModel, noise_for_seed
from tests.conftest import TINY_SIZE

STEPS = 4
MAX_DIFF, MEAN_DIFF = 2, 0.05


def _pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _assert_close(a: PIL.Image.Image, b: PIL.Image.Image) -> None:
    diff = np.abs(_pixels(a) - _pixels(b))
    assert diff.max() <= MAX_DIFF and diff.mean() <= MEAN_DIFF, (diff.max(), diff.mean())


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.fixture(scope="module")
def torch_pipes(model_cache_dir, tiny_model):
    """The diffusers PyTorch txt2img and img2img pipelines on the same tiny weights."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    source = store.cache_entry(model_cache_dir, "tiny", f"tiny:v{tm.TINY_VERSION}", "diffusers", kind="sources")
    txt2img = StableDiffusionPipeline.from_pretrained(source, safety_checker=None, feature_extractor=None)
    txt2img.scheduler = DPMSolverMultistepScheduler.from_config(txt2img.scheduler.config)
    txt2img.set_progress_bar_config(disable=True)
    img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)
    img2img.set_progress_bar_config(disable=True)
    return txt2img, img2img


@pytest.fixture(scope="module")
def init_image() -> PIL.Image.Image:
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 255, TINY_SIZE)[None, :, None] * np.ones((TINY_SIZE, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(pixels)


def test_the_tiny_model_paints_an_image_that_follows_its_prompt_and_seed(tiny_model):
    assert tiny_model.is_tiny
    assert tiny_model.latents_shape == (1, 4, TINY_SIZE // 8, TINY_SIZE // 8)

    def paint(prompt: str, seed: int) -> np.ndarray:
        result = tiny_model.generate(tiny_model.encode_prompt(prompt), latents=noise_for_seed(seed, tiny_model.latents_shape),
                                     steps=2)
        assert result.image.mode == "RGB" and result.image.size == (TINY_SIZE, TINY_SIZE) and result.latents is None
        return _pixels(result.image)

    image = paint("x", 0)
    assert image.std() > 1  # not a flat image
    np.testing.assert_array_equal(paint("x", 0), image)  # the same inputs, the same image
    assert not np.array_equal(paint("y", 0), image) and not np.array_equal(paint("x", 1), image)


def test_parity_txt2img_with_diffusers(tiny_model, torch_pipes):
    txt2img, _ = torch_pipes
    embeds = tiny_model.encode_prompt("lofi hip hop beat, jazzy piano")
    negative = tiny_model.encode_prompt("vocals")
    noise = noise_for_seed(7, tiny_model.latents_shape)
    ours = tiny_model.generate(embeds, negative, noise, steps=STEPS, guidance=7.0, return_latents=True)
    reference = txt2img(
        prompt_embeds=torch.from_numpy(embeds.copy()),
        negative_prompt_embeds=torch.from_numpy(negative.copy()),
        latents=torch.from_numpy(noise),
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        height=TINY_SIZE,
        width=TINY_SIZE,
        output_type="pil",
    ).images[0]
    _assert_close(ours.image, reference)
    assert ours.latents.shape == tiny_model.latents_shape


def test_parity_img2img_with_diffusers(tiny_model, torch_pipes, init_image):
    txt2img, img2img = torch_pipes
    embeds = tiny_model.encode_prompt("funky bass")
    negative = tiny_model.encode_prompt("")
    seed, strength = 11, 0.6
    ours = tiny_model.generate(
        embeds, negative, noise_for_seed(seed, tiny_model.latents_shape), steps=STEPS, init_image=init_image, strength=strength
    )
    # diffusers draws the noise from the generator; noise_for_seed draws the same numbers.
    pixels = img2img.image_processor.preprocess(init_image, height=TINY_SIZE, width=TINY_SIZE)
    with torch.no_grad():
        init_latents = txt2img.vae.encode(pixels).latent_dist.mode() * txt2img.vae.config.scaling_factor
    reference = img2img(
        image=init_latents,
        prompt_embeds=torch.from_numpy(embeds.copy()),
        negative_prompt_embeds=torch.from_numpy(negative.copy()),
        generator=torch.Generator("cpu").manual_seed(seed),
        strength=strength,
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        output_type="pil",
    ).images[0]
    _assert_close(ours.image, reference)
    txt = tiny_model.generate(embeds, negative, noise_for_seed(seed, tiny_model.latents_shape), steps=STEPS)
    assert np.abs(_pixels(txt.image) - _pixels(ours.image)).max() > MAX_DIFF


def test_noise_for_seed_matches_torch_generator():
    shape = (1, 4, 8, 8)
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(5)).numpy()
    assert noise_for_seed(5, shape).dtype == np.float32
    np.testing.assert_array_equal(noise_for_seed(5, shape), expected)
    assert not np.array_equal(noise_for_seed(6, shape), expected)


def test_generation_is_deterministic(tiny_model):
    embeds = tiny_model.encode_prompt("ambient drone")
    noise = noise_for_seed(3, tiny_model.latents_shape)
    first = tiny_model.generate(embeds, latents=noise, steps=STEPS, return_latents=True)
    second = tiny_model.generate(embeds, latents=noise, steps=STEPS, return_latents=True)
    np.testing.assert_array_equal(first.latents, second.latents)
    np.testing.assert_array_equal(_pixels(first.image), _pixels(second.image))


def test_negative_prompt_reaches_the_model(tiny_model):
    embeds = tiny_model.encode_prompt("techno arpeggio")
    noise = noise_for_seed(4, tiny_model.latents_shape)
    plain = tiny_model.generate(embeds, latents=noise, steps=STEPS, return_latents=True)
    negative = tiny_model.generate(
        embeds, tiny_model.encode_prompt("distorted guitar"), noise, steps=STEPS, return_latents=True
    )
    assert np.abs(plain.latents - negative.latents).max() > 1e-3


def test_guidance_one_runs_without_cfg(tiny_model):
    # The UNet keeps a dynamic batch: batch 1 (no guidance) and batch 2 (CFG) both run.
    embeds = tiny_model.encode_prompt("piano")
    noise = noise_for_seed(2, tiny_model.latents_shape)
    plain = tiny_model.generate(embeds, tiny_model.encode_prompt("drums"), noise, steps=2, guidance=1.0, return_latents=True)
    other = tiny_model.generate(embeds, tiny_model.encode_prompt("bass"), noise, steps=2, guidance=1.0, return_latents=True)
    np.testing.assert_array_equal(plain.latents, other.latents)  # negative unused without CFG


def test_on_step_called_once_per_step(tiny_model, init_image):
    calls = []
    embeds = tiny_model.encode_prompt("jazz")
    tiny_model.generate(embeds, steps=5, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(5)]
    calls.clear()
    tiny_model.generate(embeds, steps=10, init_image=init_image, strength=0.5, on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(5)]


def test_encode_prompt_is_cached(tiny_model, monkeypatch):
    first = tiny_model.encode_prompt("a cached prompt")
    assert first.shape == (1, 77, 32) and first.dtype == np.float32
    monkeypatch.setattr(tiny_model._pipe, "encode_prompt", lambda *a, **k: pytest.fail("encoded twice"))
    assert tiny_model.encode_prompt("a cached prompt") is first
    assert not first.flags.writeable


@pytest.mark.slow
def test_processes_compiling_the_same_model_at_once_all_load_it(tiny_exported, tmp_path):
    """Ray workers on one machine load the same model at the same moment. OpenVINO writes its
    compiled-model cache in place, so without riffstream's lock one of three or four such
    processes failed to load here ("cannot set permissions: No such file or directory")."""
    import subprocess
    import sys

    load = ("import sys; from riffstream.model import ModelOptions, RiffusionModel; "
            "RiffusionModel.load(ModelOptions(model='tiny', cache_dir=sys.argv[1]), "
            "progress=False); print('loaded')")
    for attempt in range(3):
        cache = tmp_path / f"cache{attempt}"
        shutil.copytree(tiny_exported / "models", cache / "models")  # exported, never compiled
        processes = [subprocess.Popen([sys.executable, "-c", load, str(cache)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [(process.wait(timeout=300), *process.communicate()) for process in processes]
        assert all(code == 0 and out.strip() == "loaded" for code, out, _ in results), results
        assert list((cache / "ov_compiled").rglob("*.blob"))


@pytest.mark.slow
def test_each_precision_compiles_into_a_cache_of_its_own(tiny_exported, tmp_path):
    """OpenVINO's cache key leaves out the precision hint: an f32 compile then a bf16 load from one
    folder reused the f32 blob, and crashed on an AMX CPU. Renders in f32 and then at the CPU's own
    choice (bf16 where it has bf16 units) each run, on one cache, in either order."""
    import shutil
    import subprocess
    import sys

    from riffstream.model.runtime import compiled_cache, resolve_precision

    auto = resolve_precision(ModelOptions(model="tiny")) or "default"
    for order in (["f32", "auto"], ["auto", "f32"]):
        cache = tmp_path / "-".join(order)
        shutil.copytree(tiny_exported / "models", cache / "models")
        for precision in order:
            result = subprocess.run(
                [sys.executable, "-m", "riffstream", "lofi", "--model", "tiny", "--width", "64", "--steps", "2",
                 "--duration", "1", "--no-play", "--no-progress", "--out", str(cache / f"{precision}.wav"),
                 "--cache-dir", str(cache), "--precision", precision], capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, (order, precision, result.returncode, result.stderr[-2000:])
        assert list(compiled_cache(cache, "f32").glob("*.blob"))
        assert list(compiled_cache(cache, None if auto == "default" else auto).glob("*.blob"))


@pytest.fixture(scope="module")
def own_cache(tiny_model, model_cache_dir, tmp_path_factory):
    """A cache holding a copy of the shared tiny export and, once loaded there, only this model's compiled blobs
    (the shared cache keeps every blob any test compiled, in any session)."""
    cache = tmp_path_factory.mktemp("own-cache")
    shutil.copytree(model_cache_dir / "models", cache / "models")
    options = ModelOptions(model="tiny", height=TINY_SIZE, width=TINY_SIZE, cache_dir=cache, precision="f32")
    RiffusionModel.load(options, progress=False)
    return options


def test_second_load_reuses_the_cache(tiny_model, own_cache, monkeypatch):
    ir = store.resolve_ir(own_cache)
    xml = ir / "unet" / "openvino_model.xml"
    mtime = xml.stat().st_mtime_ns
    blobs = list((own_cache.cache / "ov_compiled").rglob("*.blob"))
    assert blobs, "OpenVINO's compiled-model cache (CACHE_DIR) was not written"

    def fail(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(store, "_export", fail)
    monkeypatch.setattr(tm, "build_tiny_pipeline", fail)
    again = RiffusionModel.load(own_cache, progress=False)
    assert xml.stat().st_mtime_ns == mtime
    assert {b.name for b in (own_cache.cache / "ov_compiled").rglob("*.blob")} == {b.name for b in blobs}
    embeds = tiny_model.encode_prompt("same")
    noise = noise_for_seed(1, tiny_model.latents_shape)
    np.testing.assert_array_equal(
        _pixels(again.generate(embeds, latents=noise, steps=2).image),
        _pixels(tiny_model.generate(embeds, latents=noise, steps=2).image),
    )


def test_compiled_blobs_hold_no_copy_of_the_weights(own_cache):
    # A full blob is a second copy of the weights on disk, and loading one made both resident.
    ir = store.resolve_ir(own_cache)
    weights = (ir / "unet" / "openvino_model.bin").stat().st_size
    blobs = list((own_cache.cache / "ov_compiled").rglob("*.blob"))
    assert blobs
    assert max(blob.stat().st_size for blob in blobs) < weights / 4


def _resident_bytes(folder) -> int:
    """Resident bytes of this process's mappings of files under ``folder`` (Linux smaps)."""
    root, resident, inside = str(folder.resolve()) + "/", 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = len(fields) > 5 and fields[5].startswith(root)
            elif inside and fields[0] == "Rss:":
                resident += int(fields[1]) * 1024
    return resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_weight_files_are_mapped_but_not_resident_once_the_model_has_run(tiny_model):
    from riffstream.model.residency import weight_mappings

    ir = store.resolve_ir(tiny_model.options)
    model = RiffusionModel.load(tiny_model.options, progress=False)  # fresh: it has not decoded yet
    embeds = model.encode_prompt("resident")
    image = model.generate(embeds, latents=noise_for_seed(3, model.latents_shape), steps=2).image
    mapped = sum(end - start for start, end, _ in weight_mappings([ir]))
    # The compiled model takes its weights from the mapped IR (the blobs hold none); once each
    # part has run, its repacked copy is what runs, and the file's pages have been dropped.
    assert mapped >= (ir / "unet" / "openvino_model.bin").stat().st_size
    assert _resident_bytes(ir) < 0.05 * mapped
    # Dropped pages are only gone from this process: the model works as before, and as the other.
    reference = tiny_model.generate(embeds, latents=noise_for_seed(3, model.latents_shape), steps=2).image
    np.testing.assert_array_equal(_pixels(image), _pixels(reference))


def _resident_set() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_the_vae_hands_its_working_memory_back_after_each_decode(tiny_model):
    from riffstream.model.runtime import _release_working_memory

    # At a real clip's 512x512 the tiny VAE's working memory is about 50 MB (the full VAE's, 0.75 GB).
    options = ModelOptions(model="tiny", height=512, width=512, cache_dir=tiny_model.options.cache, precision="f32")
    model = RiffusionModel.load(options, progress=False)
    latents = noise_for_seed(5, model.latents_shape)
    first = model.decode(latents)
    after_decode = _resident_set()
    model._pipe.vae.decode(torch.from_numpy(latents) / model._pipe.vae.config.scaling_factor)  # keeps it
    held = _resident_set()
    kept = held - after_decode
    assert kept > 25e6, kept / 1e6
    _release_working_memory(model._pipe.vae_decoder.request)
    again = model.decode(latents)
    # decode() hands it back again: most of what the kept decode held is gone (a share of what
    # was measured, so that the bound scales with the machine's allocator and page sizes).
    assert _resident_set() < held - 0.6 * kept, (held - _resident_set()) / 1e6
    # Released memory is allocated again when the next decode needs it: the same image comes out.
    np.testing.assert_array_equal(_pixels(again), _pixels(first))


def test_exported_folder_loads_directly(tiny_model, monkeypatch):
    ir = store.resolve_ir(tiny_model.options)
    monkeypatch.setattr(store, "_export", lambda *a, **k: pytest.fail("exported an exported folder"))
    options = ModelOptions(model=str(ir), height=TINY_SIZE, width=TINY_SIZE, cache_dir=tiny_model.options.cache_dir)
    assert store.resolve_ir(options) == ir.resolve()
    assert not RiffusionModel.load(options, progress=False).is_tiny


def test_tiny_weights_are_reproducible(tmp_path):
    first = tm.build_tiny_pipeline(tmp_path / "a")
    second = tm.build_tiny_pipeline(tmp_path / "b")
    for part in ("unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"):
        assert (first / part).read_bytes() == (second / part).read_bytes()


def _weight_types(ir) -> set[str]:
    """The element types of the UNet's constants (its weights among them)."""
    return set(re.findall(r'<data element_type="(\w+)" shape="[^"]*" offset', (ir / "unet" / "openvino_model.xml").read_text()))


def test_int8_variant_is_cached_separately_with_its_weights_in_8_bits(tiny_model):
    options = ModelOptions(
        model="tiny", height=TINY_SIZE, width=TINY_SIZE, quantization="int8", cache_dir=tiny_model.options.cache_dir
    )
    model = RiffusionModel.load(options, progress=False)
    int8, f32 = store.resolve_ir(options), store.resolve_ir(tiny_model.options)
    assert int8 != f32
    # The weights are stored as 8-bit integers (about a quarter of the file), decompressed as they are used.
    assert "u8" in _weight_types(int8) and "u8" not in _weight_types(f32)
    size = (int8 / "unet" / "openvino_model.bin").stat().st_size
    assert size < 0.35 * (f32 / "unet" / "openvino_model.bin").stat().st_size
    embeds, noise = model.encode_prompt("x"), noise_for_seed(0, model.latents_shape)
    image = _pixels(model.generate(embeds, latents=noise, steps=2).image)
    reference = _pixels(tiny_model.generate(tiny_model.encode_prompt("x"), latents=noise, steps=2).image)
    assert image.shape == reference.shape and not np.array_equal(image, reference)


@pytest.mark.parametrize("model", ["/nonexistent/riffusion", "./no/such/folder", "not a model id!"])
def test_bad_model_is_a_one_line_error(model, tmp_path):
    with pytest.raises(RiffstreamError) as excinfo:
        RiffusionModel.load(ModelOptions(model=model, cache_dir=tmp_path), progress=False)
    _one_line_error(excinfo)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(RiffstreamError) as excinfo:
        RiffusionModel.load(ModelOptions(model=str(tmp_path), cache_dir=tmp_path), progress=False)
    assert "model_index.json" in _one_line_error(excinfo)


def test_hub_model_offline_without_cache_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    import httpx

    def no_network(*args, **kwargs):
        raise AssertionError("the Hub was asked, offline")

    monkeypatch.setattr(httpx.Client, "send", no_network)  # fail fast: no request, so no retry or time-out
    with pytest.raises(RiffstreamError) as excinfo:
        RiffusionModel.load(ModelOptions(model="riffstream-test/not-cached", cache_dir=tmp_path), progress=False)
    message = _one_line_error(excinfo)
    assert "riffstream download riffstream-test/not-cached" in message and "--model" in message


@pytest.mark.parametrize("device", ["GPU", "TPU"])
def test_bad_device_is_a_one_line_error(device, tmp_path):
    import openvino as ov

    if any(d.startswith(device) for d in ov.Core().available_devices):
        pytest.skip(f"this machine has a {device}")
    with pytest.raises(RiffstreamError) as excinfo:
        RiffusionModel.load(ModelOptions(model="tiny", device=device, cache_dir=tmp_path), progress=False)
    assert device in _one_line_error(excinfo)


def test_bad_options_are_one_line_errors(tmp_path):
    for options in (
        ModelOptions(model="tiny", quantization="int4", cache_dir=tmp_path),
        ModelOptions(model="tiny", height=500, cache_dir=tmp_path),
        ModelOptions(model="tiny", scheduler="nope", cache_dir=tmp_path),
    ):
        with pytest.raises(RiffstreamError) as excinfo:
            RiffusionModel.load(options, progress=False)
        _one_line_error(excinfo)


def test_hybrid_quantization_offline(tiny_model, monkeypatch):
    # Calibrated on the built-in music prompts (cut down here for speed): no dataset download.
    monkeypatch.setattr(store, "CALIBRATION_PROMPTS", store.CALIBRATION_PROMPTS[:2])
    monkeypatch.setattr(store, "CALIBRATION_STEPS", 2)
    options = ModelOptions(
        model="tiny", height=TINY_SIZE, width=TINY_SIZE, quantization="hybrid", cache_dir=tiny_model.options.cache_dir
    )
    model = RiffusionModel.load(options, progress=False)
    unet_xml = (store.resolve_ir(options) / "unet" / "openvino_model.xml").read_text()
    assert "FakeQuantize" in unet_xml  # activations quantised, not only weights
    result = model.generate(model.encode_prompt("x"), latents=noise_for_seed(0, model.latents_shape), steps=2)
    assert result.image.size == (TINY_SIZE, TINY_SIZE)


def test_taesd_decoder_matches_diffusers_autoencoder_tiny(tiny_model):
    from diffusers import AutoencoderTiny

    options = ModelOptions(model="tiny", height=TINY_SIZE, width=TINY_SIZE, decoder="taesd", precision="f32",
                           cache_dir=tiny_model.options.cache_dir)
    model = RiffusionModel.load(options, progress=False)
    latents = model.denoise(model.encode_prompt("x"), latents=noise_for_seed(1, model.latents_shape), steps=2)
    ours = model.decode(latents)
    source = store.cache_entry(tiny_model.options.cache_dir, "taesd-tiny", f"taesd-tiny:v{tm.TINY_VERSION}", "diffusers",
                               kind="sources")
    with torch.no_grad():
        decoded = AutoencoderTiny.from_pretrained(source).decode(torch.from_numpy(latents)).sample
    theirs = model._pipe.image_processor.postprocess(decoded, output_type="pil")[0]
    assert ours.size == (TINY_SIZE, TINY_SIZE)
    _assert_close(ours, theirs)
    assert not np.array_equal(_pixels(ours), _pixels(tiny_model.decode(latents)))


@pytest.mark.parametrize("decoder", ["not a decoder!", "/no/such/decoder/folder", "nobody/no-such-decoder"])
def test_a_bad_decoder_is_a_one_line_error(decoder, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id cannot be fetched here: the error must say so in one line
    options = ModelOptions(model="tiny", height=TINY_SIZE, width=TINY_SIZE, decoder=decoder,
                           cache_dir=tiny_model.options.cache_dir)
    with pytest.raises(RiffstreamError) as excinfo:
        RiffusionModel.load(options, progress=False)
    assert "decoder" in _one_line_error(excinfo).lower()


@pytest.mark.parametrize("option, value", [("guidance", float("inf")), ("guidance", float("nan")), ("steps", 0),
                                           ("steps", 2.5), ("strength", float("nan"))])
def test_the_api_refuses_numbers_out_of_range_in_one_line(tiny_model, init_image, option, value):
    embeds = tiny_model.encode_prompt("x")
    with pytest.raises(RiffstreamError) as excinfo:
        tiny_model.generate(embeds, latents=noise_for_seed(0, tiny_model.latents_shape), init_image=init_image,
                            **{"steps": 2, option: value})
    assert _one_line_error(excinfo).startswith(f"{option} must be")
