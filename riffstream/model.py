"""The model runtime: Riffusion (Stable Diffusion v1.5 on spectrograms) on OpenVINO.

Loading resolves ``ModelOptions.model`` to an OpenVINO IR folder, exporting it once with
optimum-intel and caching it under the cache dir (keyed by model, revision and
quantisation), then compiles it through ``OVStableDiffusionPipeline`` with OpenVINO's
compiled-model cache (``CACHE_DIR``) on, so a second start neither exports nor compiles.

Generation exposes the pieces a morphing producer needs: cached prompt embeddings,
explicit starting noise, negative embeddings that really reach the UNet, img2img from an
init image, and a per-step callback. The denoising loop is the diffusers one, run on the
OpenVINO components of the pipeline, so txt2img and img2img share one compiled model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from riffstream.errors import RiffstreamError

log = logging.getLogger(__name__)

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

EXPORT_VERSION = 1
"""Part of every cache key: bump it when the export recipe changes."""

CALIBRATION_PROMPTS = (
    "lofi hip hop beat, jazzy piano, vinyl crackle",
    "funky bass guitar groove with slap",
    "epic orchestral strings, cinematic",
    "deep house, four on the floor kick, warm pads",
    "acoustic folk guitar fingerpicking",
    "heavy metal guitar riff, double kick drums",
    "smooth jazz saxophone solo",
    "ambient synth drone, slow evolving textures",
    "reggae offbeat guitar and dub bass",
    "techno, hypnotic arpeggio, 130 bpm",
    "classical piano sonata",
    "trap beat with 808 bass and hi-hats",
)
"""Built-in music prompts that calibrate hybrid quantisation (no dataset download)."""
CALIBRATION_STEPS = 3
"""Denoising steps run per calibration prompt; each step adds one UNet input sample."""

_HUB_PATTERNS = ["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "unet/*", "vae/*"]
_HUB_IGNORE = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*fp16*", "*.non_ema.*"]
_SCHEDULERS = {
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


@dataclass
class Generation:
    """One generated spectrogram image, and its final latents when asked for."""

    image: PIL.Image.Image
    latents: np.ndarray | None = None


def default_cache_dir() -> Path:
    """``$RIFFSTREAM_CACHE``, else the user cache dir (``$XDG_CACHE_HOME/riffstream`` on Linux)."""
    if os.environ.get("RIFFSTREAM_CACHE"):
        return Path(os.environ["RIFFSTREAM_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("riffstream", appauthor=False))


def noise_for_seed(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise, exactly what diffusers draws from ``Generator().manual_seed(seed)``."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(tuple(shape), generator=generator, dtype=torch.float32).numpy()


# --------------------------------------------------------------------------- resolving the IR


def _is_ov_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet" / "openvino_model.xml").is_file()


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet" / "config.json").is_file()


def _cache_entry(cache: Path, name: str, identity: str, quantization: str | None, kind: str = "models") -> Path:
    """The cache folder for one model identity and quantisation variant (``kind``: models or decoders)."""
    key = json.dumps({"model": identity, "export": EXPORT_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[-60:]
    return cache / kind / f"{slug}-{digest}" / (quantization or "f32")


def _is_complete(folder: Path) -> bool:
    return (folder / "riffstream.json").is_file()


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` and move the result to ``target``; a crash leaves no half-made entry."""
    if _is_complete(target):
        return target
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / "riffstream.json").write_text(json.dumps({"export": EXPORT_VERSION}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download(model_id: str, revision: str | None, progress: bool, patterns: list[str] | None = None,
              option: str = "--model") -> Path:
    """Download a diffusers model from the Hugging Face Hub (or find it in the hub cache);
    errors name the command-line ``option`` that chose it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    kwargs = dict(revision=revision, allow_patterns=patterns or _HUB_PATTERNS, ignore_patterns=_HUB_IGNORE)
    try:
        return Path(snapshot_download(model_id, local_files_only=True, **kwargs))
    except Exception:
        pass
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    try:
        log.info("Downloading %s from the Hugging Face Hub", model_id)
        return Path(snapshot_download(model_id, **kwargs))
    except GatedRepoError as e:
        raise RiffstreamError(
            f"Model {model_id!r} is gated on the Hugging Face Hub: accept its licence there and log in with "
            f"`huggingface-cli login`, or pass {option} a local folder."
        ) from e
    except RevisionNotFoundError as e:
        raise RiffstreamError(f"Revision {revision!r} of model {model_id!r} does not exist on the Hugging Face Hub.") from e
    except RepositoryNotFoundError as e:
        raise RiffstreamError(
            f"Model {model_id!r} was not found on the Hugging Face Hub: check the id, or pass {option} a local folder."
        ) from e
    except Exception as e:
        raise RiffstreamError(
            f"Cannot download model {model_id!r} (no network or the Hugging Face Hub is unreachable) and it is not "
            f"cached: pre-download it with `huggingface-cli download {model_id} --local-dir DIR` and pass {option} DIR"
            + (", or pass --model a local diffusers or OpenVINO folder." if option == "--model" else ".")
        ) from e


def _export(source: Path, target: Path) -> None:
    """Export a local diffusers folder to OpenVINO IR (f32) in ``target``."""
    from optimum.intel import OVStableDiffusionPipeline

    log.info("Exporting %s to OpenVINO (once; cached in %s)", source, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = OVStableDiffusionPipeline.from_pretrained(source, export=True, compile=False)
        pipe.save_pretrained(target)


def _quantize(f32_ir: Path, target: Path, quantization: str, options: ModelOptions) -> None:
    """Write the int8 (weight compression) or hybrid-quantised variant of ``f32_ir`` to ``target``."""
    from optimum.intel import OVConfig, OVQuantizer, OVStableDiffusionPipeline, OVWeightQuantizationConfig

    log.info("Quantising %s (%s; once; cached in %s)", f32_ir, quantization, target)
    if quantization == "int8":
        pipe = OVStableDiffusionPipeline.from_pretrained(
            f32_ir, compile=False, quantization_config=OVWeightQuantizationConfig(bits=8)
        )
        pipe.save_pretrained(target)
        return

    import nncf
    from optimum.intel import OVCalibrationDataset
    from optimum.intel.openvino.configuration import OVQuantizationMethod
    from optimum.intel.openvino.quantization import InferRequestWrapper

    # Collect UNet inputs by running a few denoising steps per built-in prompt (optimum's own
    # collection would run its default 50 steps per prompt, far too slow on a small CPU).
    model = RiffusionModel._from_ir(f32_ir, options, reshape=False)
    samples: list = []
    unet = model._pipe.unet
    unet.request = InferRequestWrapper(unet.request, samples)
    for seed, prompt in enumerate(CALIBRATION_PROMPTS):
        model.generate(
            model.encode_prompt(prompt),
            latents=noise_for_seed(seed, model.latents_shape),
            steps=CALIBRATION_STEPS,
        )
    unet.request = unet.request.request
    config = OVWeightQuantizationConfig(
        bits=8,
        dataset=list(CALIBRATION_PROMPTS),
        num_samples=len(samples),
        quant_method=OVQuantizationMethod.HYBRID,
    )
    pipe = model._pipe
    pipe.clear_requests()
    OVQuantizer(pipe).quantize(
        ov_config=OVConfig(quantization_config=config),
        calibration_dataset=OVCalibrationDataset({"unet": nncf.Dataset(samples)}),
    )
    pipe.save_pretrained(target)


def resolve_ir(options: ModelOptions, progress: bool = True) -> Path:
    """Return an OpenVINO IR folder for ``options``, downloading/exporting/quantising into the cache once."""
    if options.quantization not in QUANTIZATIONS:
        raise RiffstreamError(f"Unknown quantization {options.quantization!r}: use one of int8, hybrid, or none.")
    cache = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    model = options.model
    path = Path(model).expanduser()

    if model == TINY_MODEL:
        from riffstream.tiny_model import TINY_VERSION, build_tiny_pipeline

        name, identity = "tiny", f"tiny:v{TINY_VERSION}"

        def source() -> Path:
            folder = cache / "sources" / f"tiny-v{TINY_VERSION}"
            return _build_atomically(folder, build_tiny_pipeline)

    elif path.is_dir():
        path = path.resolve()
        if _is_ov_folder(path):
            if options.quantization is None:
                return path
            name, identity = path.name, f"ov:{path}"
        elif _is_diffusers_folder(path):
            name, identity = path.name, f"dir:{path}"
        else:
            raise RiffstreamError(
                f"{path} is neither a diffusers model folder nor an OpenVINO export (no model_index.json with a unet/)."
            )

        def source() -> Path:
            return path

    elif re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith((".", "~")):
        name, identity = model, f"hub:{model}@{options.revision or 'main'}"

        def source() -> Path:
            return _download(model, options.revision, progress)

    else:
        raise RiffstreamError(
            f"Model {model!r} is not a folder, a Hugging Face Hub id (owner/name) or 'tiny': check --model."
        )

    f32 = _cache_entry(cache, name, identity, None)
    if identity.startswith("ov:"):
        f32 = path
    elif not _is_complete(f32):
        src = source()
        _build_atomically(f32, lambda tmp: _export(src, tmp))
    if options.quantization is None:
        return f32
    target = _cache_entry(cache, name, identity, options.quantization)
    return _build_atomically(target, lambda tmp: _quantize(f32, tmp, options.quantization, options))


def _export_decoder(source: Path, target: Path) -> None:
    """Convert the decoder of a diffusers ``AutoencoderTiny`` folder to OpenVINO IR in ``target``.

    optimum-intel cannot export a pipeline whose VAE is an AutoencoderTiny, so the decoder
    alone is converted with OpenVINO's own ``convert_model`` (dynamic spatial shape).
    """
    import openvino as ov
    from diffusers import AutoencoderTiny

    log.info("Converting the tiny decoder %s to OpenVINO (once; cached in %s)", source, target)
    try:
        vae = AutoencoderTiny.from_pretrained(source).eval()
    except (OSError, ValueError, TypeError) as e:
        raise RiffstreamError(f"{source} is not a diffusers AutoencoderTiny (TAESD) decoder: {e}") from None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = ov.convert_model(vae.decoder, example_input=torch.zeros(1, vae.config.latent_channels, 8, 8))
    ir.reshape({0: [1, vae.config.latent_channels, -1, -1]})
    ov.save_model(ir, target / "openvino_model.xml")


def resolve_decoder(options: ModelOptions, progress: bool = True) -> Path | None:
    """The OpenVINO IR (``openvino_model.xml``) of the tiny decoder ``options.decoder`` asks for,
    converting it into the cache once; None for the model's own VAE decoder."""
    decoder = options.decoder
    if decoder == DEFAULT_DECODER:
        return None
    cache = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
    path = Path(decoder).expanduser()
    if decoder == TAESD and options.model == TINY_MODEL:
        from riffstream.tiny_model import TINY_VERSION, build_tiny_decoder

        name, identity = "taesd-tiny", f"taesd-tiny:v{TINY_VERSION}"

        def source() -> Path:
            return _build_atomically(cache / "sources" / f"taesd-tiny-v{TINY_VERSION}", build_tiny_decoder)

    elif path.is_dir():
        path = path.resolve()
        name, identity = path.name, f"dir:{path}"

        def source() -> Path:
            return path

    else:
        hub_id = TAESD_HUB_ID if decoder == TAESD else decoder
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id) or hub_id.startswith((".", "~")):
            raise RiffstreamError(
                f"Decoder {decoder!r} is not 'vae', 'taesd', a folder or a Hugging Face Hub id (owner/name): check --decoder."
            )
        name, identity = hub_id, f"hub:{hub_id}"

        def source() -> Path:
            return _download(hub_id, None, progress, patterns=["config.json", "*.safetensors"], option="--decoder")

    target = _cache_entry(cache, name, identity, None, kind="decoders")
    if not _is_complete(target):
        src = source()
        _build_atomically(target, lambda tmp: _export_decoder(src, tmp))
    return target / "openvino_model.xml"


# --------------------------------------------------------------------------- runtime


def _check_device(device: str) -> None:
    import openvino as ov

    if device == "AUTO":
        return
    available = ov.Core().available_devices
    if device not in available and not any(d.split(".")[0] == device for d in available):
        raise RiffstreamError(
            f"OpenVINO device {device!r} is not available on this machine (found: {', '.join(available)}); "
            "use --device CPU or AUTO."
        )


def _ov_config(options: ModelOptions, cache: Path) -> dict:
    """OpenVINO properties: compiled-model cache, f32 precision, latency hint, thread count on CPU."""
    device = options.device.upper()
    config: dict = {"CACHE_DIR": str(cache / "ov_compiled"), "PERFORMANCE_HINT": "LATENCY"}
    if device != "AUTO":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if options.threads and device.startswith("CPU"):
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
    return config


class RiffusionModel:
    """A compiled Riffusion pipeline on OpenVINO, with the generation API the producer needs."""

    def __init__(self, pipe, options: ModelOptions, is_tiny: bool, decoder=None):
        self._pipe = pipe
        self._decoder = decoder  # a compiled tiny decoder (TAESD) replacing the VAE decoder, or None
        self.options = options
        self.is_tiny = is_tiny
        self.vae_scale_factor = pipe.vae_scale_factor
        self.latents_shape = (1, pipe.unet.config.get("in_channels", 4), options.height // 8, options.width // 8)
        self._embeddings: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, options: ModelOptions, progress: bool = True) -> RiffusionModel:
        """Resolve, export/quantise if needed (cached), and compile the model for ``options``."""
        device = options.device.upper()
        if device.split(".")[0] not in DEVICES:
            raise RiffstreamError(f"Unknown device {options.device!r}: use CPU, GPU or AUTO.")
        if options.height % 8 or options.width % 8 or options.height <= 0 or options.width <= 0:
            raise RiffstreamError(f"Image size {options.width}x{options.height} must be positive multiples of 8.")
        if options.scheduler not in _SCHEDULERS:
            raise RiffstreamError(f"Unknown scheduler {options.scheduler!r}: use one of {', '.join(_SCHEDULERS)}.")
        _check_device(device)
        decoder = resolve_decoder(options, progress)
        return cls._from_ir(resolve_ir(options, progress), options, decoder=decoder)

    @classmethod
    def _from_ir(cls, ir: Path, options: ModelOptions, reshape: bool = True, decoder: Path | None = None) -> RiffusionModel:
        from optimum.intel import OVStableDiffusionPipeline

        cache = Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir()
        # Offline, optimum-intel 2.2 looks for an exported folder as if it were a hub id, fails on
        # a path and logs that it "could not infer" whether it is exported: the folder is, so drop that.
        optimum_log = logging.getLogger("optimum.intel.openvino.modeling_base")

        def keep(record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith("Could not infer whether")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimum_log.addFilter(keep)
            try:
                pipe = OVStableDiffusionPipeline.from_pretrained(
                    ir, device=options.device.upper(), ov_config=_ov_config(options, cache), compile=False
                )
            finally:
                optimum_log.removeFilter(keep)
        if reshape:
            # Static spatial shape, dynamic batch: CFG runs the UNet at batch 2, guidance <= 1 at batch 1.
            pipe.reshape(batch_size=-1, height=options.height, width=options.width, num_images_per_prompt=1)
        pipe.set_progress_bar_config(disable=True)
        compiled_decoder = None
        if decoder is not None:
            import openvino as ov

            core = ov.Core()
            tiny = core.read_model(decoder)
            tiny.reshape({0: [1, tiny.input(0).get_partial_shape()[1], options.height // 8, options.width // 8]})
            compiled_decoder = core.compile_model(tiny, options.device.upper(), _ov_config(options, cache))
        for part in (pipe.text_encoder, pipe.unet) + ((pipe.vae_decoder,) if decoder is None else ()):
            part.compile()  # the VAE encoder compiles on first img2img use
        return cls(pipe, options, is_tiny=options.model == TINY_MODEL, decoder=compiled_decoder)

    def encode_prompt(self, text: str) -> np.ndarray:
        """CLIP embeddings of ``text``, shape (1, 77, D) float32; cached per text (read-only array)."""
        if text not in self._embeddings:
            with torch.no_grad():
                embeds = self._pipe.encode_prompt(
                    text, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
                )[0]
            array = embeds.numpy().astype(np.float32, copy=True)
            array.setflags(write=False)
            self._embeddings[text] = array
        return self._embeddings[text]

    def _scheduler(self):
        import diffusers

        cls = getattr(diffusers, _SCHEDULERS[self.options.scheduler])
        return cls.from_config(self._pipe.scheduler.config)

    @torch.no_grad()
    def encode_image(self, image: PIL.Image.Image) -> np.ndarray:
        """The VAE latents of ``image`` (scaled as the UNet sees them), for img2img: (1, 4, H/8, W/8)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        pixels = self._pipe.image_processor.preprocess(
            image.convert("RGB"), height=self.options.height, width=self.options.width
        )
        latents = retrieve_latents(self._pipe.vae.encode(pixels.float()), sample_mode="argmax")
        return (latents * self._pipe.vae.config.scaling_factor).numpy().astype(np.float32)

    @torch.no_grad()
    def denoise(
        self,
        prompt_embeds: np.ndarray,
        negative_prompt_embeds: np.ndarray | None = None,
        latents: np.ndarray | None = None,
        *,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        init_latents: np.ndarray | None = None,
        strength: float = 0.75,
        on_step: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Denoise ``latents`` (the starting noise) into the latents of a spectrogram image.

        With ``init_latents`` (from :meth:`encode_image`) this is img2img: ``latents`` is the
        noise added to them at ``strength``, and only the last ``strength`` fraction of the
        steps run. ``negative_prompt_embeds`` (default: the empty prompt) is the unconditional
        branch of classifier-free guidance, used when ``guidance > 1``. ``on_step(i, total)``
        is called after each step with the 0-based step index.
        """
        pipe = self._pipe
        do_cfg = guidance > 1.0

        # 1. Prompt embeddings
        embeds = torch.tensor(np.asarray(prompt_embeds, dtype=np.float32))
        if do_cfg:
            if negative_prompt_embeds is None:
                negative_prompt_embeds = self.encode_prompt("")
            negative = torch.tensor(np.asarray(negative_prompt_embeds, dtype=np.float32))
            embeds = torch.cat([negative, embeds])

        # 2. Timesteps
        scheduler = self._scheduler()
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps
        if init_latents is not None:
            if not 0.0 < strength <= 1.0:
                raise ValueError(f"strength must be in (0, 1], got {strength}")
            t_start = steps - min(int(steps * strength), steps)
            timesteps = timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)

        # 3. Starting latents
        noise = torch.from_numpy(
            np.ascontiguousarray(latents, dtype=np.float32)
            if latents is not None
            else np.random.default_rng().standard_normal(self.latents_shape, dtype=np.float32)
        )
        if tuple(noise.shape) != self.latents_shape:
            raise ValueError(f"latents must have shape {self.latents_shape}, got {tuple(noise.shape)}")
        if init_latents is None:
            x = noise * scheduler.init_noise_sigma
        else:
            image_latents = torch.from_numpy(np.ascontiguousarray(init_latents, dtype=np.float32))
            x = scheduler.add_noise(image_latents, noise, timesteps[:1]) if len(timesteps) else image_latents

        # 4. Denoising loop
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            model_input = torch.cat([x] * 2) if do_cfg else x
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds)[0]
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond - uncond)
            x = scheduler.step(noise_pred, t, x).prev_sample
            if on_step is not None:
                on_step(i, total)
        return x.numpy().copy()

    @torch.no_grad()
    def decode(self, latents: np.ndarray) -> PIL.Image.Image:
        """The spectrogram image the VAE decodes from denoised ``latents``."""
        pipe = self._pipe
        x = np.ascontiguousarray(latents, dtype=np.float32)
        if self._decoder is not None:  # TAESD decodes the UNet's latents as they are, to [-1, 1]
            decoded = torch.from_numpy(np.asarray(self._decoder(x)[0]))
        else:
            decoded = pipe.vae.decode(torch.from_numpy(x) / pipe.vae.config.scaling_factor)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")[0]

    def generate(
        self,
        prompt_embeds: np.ndarray,
        negative_prompt_embeds: np.ndarray | None = None,
        latents: np.ndarray | None = None,
        *,
        steps: int = DEFAULT_STEPS,
        guidance: float = DEFAULT_GUIDANCE,
        init_image: PIL.Image.Image | None = None,
        strength: float = 0.75,
        on_step: Callable[[int, int], None] | None = None,
        return_latents: bool = False,
    ) -> Generation:
        """:meth:`encode_image` (img2img only), :meth:`denoise` and :meth:`decode` in one call."""
        init_latents = self.encode_image(init_image) if init_image is not None else None
        x = self.denoise(
            prompt_embeds, negative_prompt_embeds, latents, steps=steps, guidance=guidance,
            init_latents=init_latents, strength=strength, on_step=on_step,
        )
        return Generation(image=self.decode(x), latents=x if return_latents else None)
