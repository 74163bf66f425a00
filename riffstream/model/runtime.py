"""The model runtime: a compiled Riffusion pipeline on OpenVINO, and the three things it does.

:meth:`RiffusionModel.load` asks the store (:mod:`riffstream.model.store`) for an OpenVINO
IR folder and compiles it through optimum-intel's ``OVStableDiffusionPipeline`` with
OpenVINO's compiled-model cache (``CACHE_DIR``) on, so a second start neither exports nor
compiles. Then it encodes prompts, denoises latents and decodes them to spectrogram images:
the pieces a morphing clip source needs, with cached prompt embeddings, explicit starting
noise, negative embeddings that really reach the UNet, img2img, and a per-step callback.
The denoising loop is the diffusers one, run on the OpenVINO components, so txt2img and
img2img share one compiled model. Compiled blobs are weightless (the weights stay in the
IR's mapped file), and the load warms the UNet up while the file's pages are dropped from
resident memory, so the repacked weights are the only resident copy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from filelock import FileLock

import riffstream.model.store as store
from riffstream import checks
from riffstream.checks import check_number
from riffstream.errors import RiffstreamError
from riffstream.model.options import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    SCHEDULERS,
    TINY_MODEL,
    ModelOptions,
)
from riffstream.model.residency import DroppingWeightPages, drop_weight_pages, trim_heap


@dataclass
class Generation:
    """One generated spectrogram image, and its final latents when asked for."""

    image: PIL.Image.Image
    latents: np.ndarray | None = None


def noise_for_seed(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise, exactly what diffusers draws from ``Generator().manual_seed(seed)``."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(tuple(shape), generator=generator, dtype=torch.float32).numpy()


def noise_seed(noise: np.ndarray) -> int:
    """The seed of the generator a stepping scheduler draws its in-between noise from: a hash of the starting noise."""
    return zlib.crc32(np.ascontiguousarray(noise, dtype=np.float32).tobytes())


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


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 units here (AVX-512 bf16 or AMX)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(options: ModelOptions) -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` for ``options``: "bf16" or "f32" on CPU, None for the device's default.

    "auto" takes bf16 where the CPU has bf16 units: about 1.9x faster than f32 on the UNet
    (``benchmarks/live.py``), within the bf16 parity bound; f32 elsewhere.
    """
    device = options.device.upper()
    if not device.startswith("CPU"):
        if options.precision == "bf16":
            raise RiffstreamError(f"--precision bf16 is for CPUs; {device} picks its own: use auto or f32.")
        return None if options.precision == "auto" else "f32"
    if options.precision == "f32":
        return "f32"
    if cpu_has_bf16():
        return "bf16"
    if options.precision == "bf16":
        raise RiffstreamError("this CPU has no bf16 units (AVX-512 bf16 or AMX): use --precision f32 or auto.")
    return "f32"


def compiled_cache(cache: Path, precision: str | None) -> Path:
    """The folder of OpenVINO's compiled-model cache for models compiled at ``precision`` (None: the device's own).

    OpenVINO 2026.4 leaves the precision hint out of a compiled blob's cache key: measured here,
    a model compiled in f32 and then loaded in bf16 from one cache folder reused the f32 blob,
    and on an AMX CPU every later load crashed (a segfault at the first UNet step). So each
    precision gets a folder of its own, and ``--precision f32`` really is the exact path.
    The key leaves the cache mode out too, so weightless blobs (see :func:`_ov_config`) have
    folders of their own: a full blob from an older riffstream would be loaded instead.
    """
    return cache / "ov_compiled" / f"{precision or 'default'}-weightless"


def _ov_config(options: ModelOptions, cache: Path, precision: str | None) -> dict:
    """OpenVINO properties: compiled-model cache, ``precision`` (None: the device's own), latency hint, CPU threads."""
    device = options.device.upper()
    config: dict = {"CACHE_DIR": str(compiled_cache(cache, precision)), "PERFORMANCE_HINT": "LATENCY"}
    if device.startswith("CPU"):
        # Weightless blobs: the compiled model takes its weights from the IR's own (mapped) file.
        # A full blob holds a second copy, and loading one read both: 7.5 GB at the peak of a
        # bf16 UNet load against 4.3 GB, measured here; and 3.7 GB less disk per precision.
        config["CACHE_MODE"] = "OPTIMIZE_SIZE"
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if options.threads and device.startswith("CPU"):
        config["INFERENCE_NUM_THREADS"] = int(options.threads)
        # OpenVINO pins a process's threads to the first cores: several single-thread processes on one
        # machine (Ray workers) would all share core 0. With a thread count given, let the OS place them.
        config["ENABLE_CPU_PINNING"] = False
    return config


def _release_working_memory(compiled) -> None:
    """Hand back the memory a compiled model keeps for its intermediate tensors between inferences.

    OpenVINO keeps each compiled model's working memory from one inference to the next. For the
    full VAE at 512x512 that is 0.75 GB, held through a whole clip's denoising, in which the
    VAE has no part. Measured on the full-size model: releasing it takes 20 ms, and the next
    decode (8 s) is no slower and gives the same pixels. Part of it goes back to the C heap,
    not to the system: :func:`~riffstream.model.residency.trim_heap` hands that back. A
    compiled model busy in another thread, or a plugin that cannot release, keeps its memory.
    """
    if compiled is None:
        return
    try:
        compiled.release_memory()
    except (RuntimeError, AttributeError):
        pass


@contextlib.contextmanager
def compiling(cache: Path) -> Iterator[None]:
    """Hold the compiled-model cache's lock while compiling, so one process at a time writes it.

    OpenVINO writes a compiled blob in place and then changes its permissions; measured here,
    three or four processes compiling the same model at once into an empty cache (Ray workers
    on one machine, a server beside a render) made one of them fail to load ("cannot set
    permissions: No such file or directory"). Under the lock the first process compiles and
    writes the blob, and the others then read it from the cache, which is faster anyway. The
    lock is a ``filelock.FileLock`` (an ``flock`` on POSIX), so a process that dies holding it lets go of it.
    """
    folder = cache / "ov_compiled"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):
        # Earlier layouts' blobs: of unknown precision (unusable), or full ones (superseded).
        for blob in [*folder.glob("*.blob"), *(blob for name in ("f32", "bf16", "default")
                                              for blob in (folder / name).glob("*.blob"))]:
            blob.unlink(missing_ok=True)
        yield


class RiffusionModel:
    """A compiled Riffusion pipeline on OpenVINO, with the generation API a clip source needs."""

    def __init__(self, pipe, options: ModelOptions, is_tiny: bool, decoder=None, precision: str = "f32",
                 weights: list[Path] | None = None):
        self._pipe = pipe
        self._decoder = decoder  # a compiled tiny decoder (TAESD) replacing the VAE decoder, or None
        self.options = options
        self.is_tiny = is_tiny
        self.vae_scale_factor = pipe.vae_scale_factor
        self.latents_shape = (1, pipe.unet.config.get("in_channels", 4), options.height // 8, options.width // 8)
        self._embeddings: dict[str, np.ndarray] = {}
        #: The inference precision the model was compiled for ("bf16", "f32" or the device's default).
        self.precision = precision
        self._weights = weights or []  # folders of the weight files OpenVINO maps
        self._decoded = False

    @property
    def decoder_takes_turns(self) -> bool:
        """Whether the decoder should not run beside the UNet: the full VAE on a CPU, whose working
        memory (0.75 GB at 512x512) would add to the UNet's, and whose threads gain nothing from
        sharing the cores with the UNet's (see :class:`~riffstream.stream.sources.LocalSource`)."""
        return self._decoder is None and self.options.device.upper().startswith("CPU")

    @classmethod
    def load(cls, options: ModelOptions, progress: bool = True) -> RiffusionModel:
        """Resolve, export/quantise if needed (cached), and compile the model for ``options``."""
        options.check()
        device = options.device.upper()
        _check_device(device)
        resolve_precision(options)  # a precision this CPU lacks is one line before any download or export
        decoder = store.resolve_decoder(options, progress)
        return cls.from_ir(resolve_ir(options, progress), options, decoder=decoder)

    @classmethod
    def from_ir(cls, ir: Path, options: ModelOptions, reshape: bool = True, decoder: Path | None = None,
                release_graphs: bool = True) -> RiffusionModel:
        """Compile the OpenVINO IR folder ``ir``; ``release_graphs=False`` keeps the graphs (to quantise them)."""
        from optimum.intel import OVStableDiffusionPipeline

        cache = options.cache
        precision = resolve_precision(options)
        config = _ov_config(options, cache, precision)
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
                    ir, device=options.device.upper(), ov_config=config, compile=False
                )
            finally:
                optimum_log.removeFilter(keep)
        if reshape:
            # Static spatial shape, dynamic batch: CFG runs the UNet at batch 2, guidance <= 1 at batch 1.
            pipe.reshape(batch_size=-1, height=options.height, width=options.width, num_images_per_prompt=1)
        pipe.set_progress_bar_config(disable=True)
        # The image side stays f32: a spectrogram's pixels are its levels in dB, and a bf16 VAE
        # moved them by 15 of 255 levels on average where the bf16 UNet moved latents by under 1%.
        exact = ({**config, "INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(compiled_cache(cache, "f32"))}
                 if precision else config)
        for part in filter(None, (pipe.vae_decoder, pipe.vae_encoder)):
            part.ov_config = dict(exact)
        compiled_decoder = None
        weights = [ir] + ([decoder if decoder.is_dir() else decoder.parent] if decoder is not None else [])
        with DroppingWeightPages(weights):
            with compiling(cache):
                if decoder is not None:
                    import openvino as ov

                    core = ov.Core()
                    tiny = core.read_model(decoder)
                    tiny.reshape({0: [1, tiny.input(0).get_partial_shape()[1], options.height // 8,
                                      options.width // 8]})
                    compiled_decoder = core.compile_model(tiny, options.device.upper(), exact)
                for part in (pipe.text_encoder, pipe.unet) + ((pipe.vae_decoder,) if decoder is None else ()):
                    part.compile()  # the VAE encoder compiles on first img2img use
                    if release_graphs:
                        # As in optimum's compile-only mode, the compiled model now answers for the graph.
                        part.model = part.request
            model = cls(pipe, options, is_tiny=options.model == TINY_MODEL, decoder=compiled_decoder,
                        precision=precision or "the device's default", weights=weights)
            if release_graphs:
                model._warm_up()
        return model

    def _warm_up(self) -> None:
        """Run the text encoder and the UNet once, so that OpenVINO repacks their weights now, while
        the weight files' pages are being dropped (see :mod:`riffstream.model.residency`). The
        first inference is the slow one anyway: this moves it, it does not add one."""
        embeds = self.encode_prompt("")
        sample = torch.zeros(self.latents_shape)
        timestep = torch.tensor(self._scheduler().config.num_train_timesteps - 1)
        with torch.no_grad():
            self._pipe.unet(sample, timestep, encoder_hidden_states=torch.tensor(embeds))

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

        cls = getattr(diffusers, SCHEDULERS[self.options.scheduler])
        return cls.from_config(self._pipe.scheduler.config)

    @torch.no_grad()
    def encode_image(self, image: PIL.Image.Image) -> np.ndarray:
        """The VAE latents of ``image`` (scaled as the UNet sees them), for img2img: (1, 4, H/8, W/8)."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        pixels = self._pipe.image_processor.preprocess(
            image.convert("RGB"), height=self.options.height, width=self.options.width
        )
        if self._pipe.vae_encoder.request is None:  # its first use: compile it, one process at a time
            with compiling(self.options.cache):
                self._pipe.vae_encoder.compile()
        latents = retrieve_latents(self._pipe.vae.encode(pixels.float()), sample_mode="argmax")
        _release_working_memory(self._pipe.vae_encoder.request)
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
        steps = check_number(steps, "steps", checks.STEPS)
        guidance = check_number(guidance, "guidance", checks.GUIDANCE)
        do_cfg = guidance > 1.0

        # 1. Prompt embeddings
        embeds = torch.tensor(np.asarray(prompt_embeds, dtype=np.float32))
        if do_cfg:
            if negative_prompt_embeds is None:
                negative_prompt_embeds = self.encode_prompt("")
            negative = torch.tensor(np.asarray(negative_prompt_embeds, dtype=np.float32))
            embeds = torch.cat([negative, embeds])

        # 2. Timesteps (LCM picks img2img's timesteps itself, from the strength)
        scheduler = self._scheduler()
        takes_strength = "strength" in inspect.signature(scheduler.set_timesteps).parameters
        if init_latents is not None:
            strength = check_number(strength, "strength", checks.STRENGTH)
        img2img_by_scheduler = init_latents is not None and takes_strength
        scheduler.set_timesteps(steps, **({"strength": strength} if img2img_by_scheduler else {}))
        timesteps = scheduler.timesteps
        if init_latents is not None and not takes_strength:
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

        # 4. Denoising loop. A scheduler that adds fresh noise between steps (LCM) draws it from a
        # generator seeded by the starting noise, so the same seed gives the same clip.
        step_kwargs = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = torch.Generator("cpu").manual_seed(noise_seed(noise.numpy()))
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            model_input = torch.cat([x] * 2) if do_cfg else x
            model_input = scheduler.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=embeds)[0]
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond - uncond)
            x = scheduler.step(noise_pred, t, x, **step_kwargs).prev_sample
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
            # On a CPU the full VAE's decode is a clip's memory peak: 0.75 GB of working memory at
            # 512x512. Make room before it (the UNet's working memory, which a UNet busy in another
            # thread keeps, and the C heap's free memory), and hand it back after.
            in_turn = self.decoder_takes_turns
            if in_turn:
                _release_working_memory(pipe.unet.request)
                trim_heap()
            decoded = pipe.vae.decode(torch.from_numpy(x) / pipe.vae.config.scaling_factor)[0]
            if in_turn:
                _release_working_memory(pipe.vae_decoder.request)
                trim_heap()
        if not self._decoded:  # the decoder's weights are repacked now: its file's pages are not read again
            self._decoded = True
            drop_weight_pages(self._weights)
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


def calibrate_unet(f32_ir: Path, options: ModelOptions) -> tuple[object, list]:
    """Run the f32 model a few denoising steps per built-in prompt, recording every UNet input (optimum's own
    collection would run its default 50 steps per prompt, far too slow on a small CPU): its pipeline, requests
    cleared, and the samples, for hybrid quantisation."""
    from optimum.intel.openvino.quantization import InferRequestWrapper

    model = RiffusionModel.from_ir(f32_ir, options, reshape=False, release_graphs=False)
    samples: list = []
    unet = model._pipe.unet
    unet.request = InferRequestWrapper(unet.request, samples)
    for seed, prompt in enumerate(store.CALIBRATION_PROMPTS):
        model.generate(model.encode_prompt(prompt), latents=noise_for_seed(seed, model.latents_shape),
                       steps=store.CALIBRATION_STEPS)
    unet.request = unet.request.request
    model._pipe.clear_requests()
    return model._pipe, samples


def resolve_ir(options: ModelOptions, progress: bool = True, refresh: bool = False) -> Path:
    """The store's OpenVINO IR folder for ``options`` (fetched, exported, quantised once and cached), with hybrid
    quantisation calibrated on this runtime."""
    return store.resolve_ir(options, progress, refresh, calibrate=calibrate_unet)
