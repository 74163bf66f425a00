"""The model store: find a checkpoint, fetch it, export it to OpenVINO once, quantise it, cache it.

``ModelOptions.model`` names a Hub id, a local diffusers folder, a folder already exported
to OpenVINO, or ``tiny``. Every diffusers checkpoint, the tiny one included, takes one
path: checked to be an SD 1.x pipeline, staged so that only the parts the pipeline runs
are seen (:mod:`riffstream.model.checkpoint`), exported by optimum-intel into
``CACHE/models/<name>-<hash>/f32`` and quantised beside it. Every cache entry is built in
a temporary folder and renamed into place, so a crash or a full disk leaves none half-made.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock

from riffstream.errors import RiffstreamError
from riffstream.model.checkpoint import check_folder, stage
from riffstream.model.options import QUANTIZATIONS, TAESD, TAESD_HUB_ID, TINY_MODEL, ModelOptions

log = logging.getLogger(__name__)

EXPORT_VERSION = 2
"""Part of every cache key: bump it when the export recipe changes."""
EXPORT_SECONDS_SD15_2_CORES = 360
"""Measured: optimum-intel exports the full-size SD 1.5 architecture in about 6 minutes on 2 AVX2 cores
(Zen 3) and in 2.4 minutes on 2 AVX-512 cores (Zen 4, ``benchmarks/first_start.py``)."""
EXPORT_FASTEST_SHARE = 0.4
LOW_DISK_BYTES = 16 << 20
"""Free space below which a failed cache write is taken for a full disk."""
SD15_UNET_BYTES = 3.44e9
"""The size of SD 1.5's full-precision UNet weights, to scale that estimate to other checkpoints."""

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


def is_ov_folder(path: Path) -> bool:
    """Whether ``path`` is a pipeline already exported to OpenVINO IR."""
    return (path / "model_index.json").is_file() and (path / "unet" / "openvino_model.xml").is_file()


def cache_entry(cache: Path, name: str, identity: str, variant: str | None, kind: str = "models") -> Path:
    """The cache folder for one model identity and variant (``kind``: models, decoders or sources)."""
    key = json.dumps({"model": identity, "export": EXPORT_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[-60:]
    return cache / kind / f"{slug}-{digest}" / (variant or "f32")


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished cache entry."""
    return (folder / "riffstream.json").is_file()


def build_atomically(target: Path, build: Callable[[Path], object], rebuild: bool = False) -> Path:
    """Run ``build(tmp)`` and rename the result to ``target``; a crash or a full disk leaves no half-made entry.

    A complete ``target`` is kept as it is, unless ``rebuild``: then it is replaced only once the new one is built.
    One process builds an entry at a time (a file lock beside it, let go if its holder dies): a second process
    that wanted it waits, then takes the finished entry instead of building it again and replacing it.
    """
    if is_complete(target) and not rebuild:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}.lock")):
        if is_complete(target) and not rebuild:
            return target
        return _build(target, build)


def _build(target: Path, build: Callable[[Path], object]) -> Path:
    for stale in target.parent.glob(f"{target.name}.partial-*"):  # left by a holder of the lock that died
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / "riffstream.json").write_text(json.dumps({"export": EXPORT_VERSION}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except Exception as error:
        # OpenVINO's own writers report a full disk as a C++ stream error, not ENOSPC.
        if getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(tmp.parent).free < LOW_DISK_BYTES:
            raise RiffstreamError(
                f"the disk is full while writing {target.parent}: free some space (or use --cache-dir on a bigger "
                "disk) and run again.") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _export_estimate(source: Path) -> str:
    """How long the export will take here, scaled from the measured SD 1.5 figure on 2 cores."""
    weights = [p for p in (source / "unet").glob("diffusion_pytorch_model*") if p.suffix in (".bin", ".safetensors")]
    size = sum(p.stat().st_size for p in weights)
    seconds = EXPORT_SECONDS_SD15_2_CORES * size / SD15_UNET_BYTES * 2 / (os.cpu_count() or 2)
    if seconds < 30:
        return "seconds"
    fastest, slowest = (max(1, round(s / 60)) for s in (seconds * EXPORT_FASTEST_SHARE, seconds))
    return f"about {fastest} to {slowest} minutes" if fastest < slowest else f"about {slowest} minutes"


@contextlib.contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Silence diffusers' and transformers' loading bars and their complaints about formats the
    staged checkpoint deliberately lacks (a ``.bin``-only part has no ``.safetensors``)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity(logging.CRITICAL)
    transformers_logging.set_verbosity(logging.CRITICAL)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        for module, enabled in zip((diffusers_logging, transformers_logging), bars):
            if enabled:
                module.enable_progress_bar()


def _export(source: Path, target: Path, cache: Path, adapters: list | None = None) -> None:
    """Export the diffusers checkpoint ``source`` to OpenVINO IR (f32) in ``target``, with ``adapters``
    (:class:`riffstream.model.adapters.Adapter`) fused into its weights first."""
    from optimum.intel import OVStableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="staged-", dir=cache) as staged, _quiet_loaders():
        pipeline = stage(source, Path(staged) / "pipeline")
        if adapters:
            from riffstream.model.adapters import fuse

            log.info("fusing %s into the model", " and ".join(f"LoRA {a.spec}" for a in adapters))
            fused = fuse(pipeline, adapters, Path(staged) / "fused")
            pipeline = stage(fused, Path(staged) / "fused-pipeline")
        log.info("exporting to OpenVINO: once, %s on %d CPU cores", _export_estimate(source), os.cpu_count() or 1)
        pipe = OVStableDiffusionPipeline.from_pretrained(pipeline, export=True, compile=False)
        pipe.save_pretrained(target)
    # Keep the checkpoint's own scheduler config: re-saved, it would spell out defaults it never
    # set (an old config has no timestep_spacing), and a scheduler made from it would differ
    # from the one diffusers makes from the published checkpoint.
    shutil.copyfile(source / "scheduler" / "scheduler_config.json", target / "scheduler" / "scheduler_config.json")


def _quantize(f32_ir: Path, target: Path, quantization: str, options: ModelOptions) -> None:
    """Write the int8 (weight compression) or hybrid-quantised variant of ``f32_ir`` to ``target``."""
    from optimum.intel import OVConfig, OVQuantizer, OVStableDiffusionPipeline, OVWeightQuantizationConfig

    log.info("quantising (%s): once, cached beside the export", quantization)
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

    from riffstream.model.runtime import RiffusionModel, noise_for_seed

    # Collect UNet inputs by running a few denoising steps per built-in prompt (optimum's own
    # collection would run its default 50 steps per prompt, far too slow on a small CPU).
    model = RiffusionModel.from_ir(f32_ir, options, reshape=False, release_graphs=False)
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


def _source(options: ModelOptions, progress: bool, refresh: bool) -> tuple[str, str, Callable[[], Path]]:
    """(name, identity, fetch) for ``options.model``: ``fetch()`` returns its local diffusers folder."""
    from riffstream.model import hub

    model, cache = options.model, options.cache
    path = Path(model).expanduser()
    if model == TINY_MODEL:
        from riffstream.model.tiny import TINY_VERSION, build_tiny_pipeline

        folder = cache_entry(cache, "tiny", f"tiny:v{TINY_VERSION}", "diffusers", kind="sources")
        return "tiny", f"tiny:v{TINY_VERSION}", lambda: build_atomically(folder, build_tiny_pipeline)
    if path.is_dir():
        path = path.resolve()
        return path.name, f"dir:{path}", lambda: path
    if path.exists():
        raise RiffstreamError(f"{path} is a file, not a model folder: check --model.")
    if hub.is_hub_id(model):
        return model, f"hub:{model}@{options.revision or 'main'}", lambda: hub.fetch(
            model, options.revision, progress=progress, refresh=refresh)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise RiffstreamError(f"{model} does not exist: check --model.")
    raise RiffstreamError(f"Model {model!r} is not a folder, a Hugging Face Hub id (owner/name) or 'tiny': check --model.")


def resolve_ir(options: ModelOptions, progress: bool = True, refresh: bool = False) -> Path:
    """An OpenVINO IR folder for ``options``: fetched, exported and quantised into the cache once.

    ``refresh`` asks the Hub for the model's latest files even when a cached snapshot is
    complete (``riffstream download``); an export is rebuilt only if its source changed.
    With LoRA adapters, the export is of the fused model, keyed by each adapter's content and scale.
    """
    options.check()
    cache = options.cache
    path = Path(options.model).expanduser()
    if path.is_dir() and is_ov_folder(path):
        if options.loras:
            raise RiffstreamError(f"{path} is already exported to OpenVINO, so no LoRA can be fused into it: "
                                  "give --model the diffusers checkpoint it was exported from.")
        f32 = path.resolve()
        name, identity = f32.name, f"ov:{f32}"
    else:
        name, identity, fetch = _source(options, progress, refresh)
        adapters = None
        if options.loras:
            from riffstream.model.adapters import resolve_adapters

            adapters = resolve_adapters(options.loras, options.model, cache, progress)
            name = "+".join([name] + [a.name for a in adapters])
            identity = json.dumps([identity] + [[a.identity, a.spec.scale] for a in adapters])
        f32 = cache_entry(cache, name, identity, None)
        if refresh or not is_complete(f32):
            source = fetch()
            check_folder(source, options.model)
            stale = is_complete(f32) and _recorded_source(f32) != source.resolve().name
            if stale or not is_complete(f32):
                build_atomically(f32, lambda tmp: _export_from(source, tmp, cache, adapters), rebuild=stale)
                for variant in QUANTIZATIONS[1:]:  # made from the export this one replaces
                    shutil.rmtree(cache_entry(cache, name, identity, variant), ignore_errors=True)
                log.info("cached the OpenVINO export in %s: later starts skip the download and the export", f32)
    if options.quantization is None:
        return f32
    target = cache_entry(cache, name, identity, options.quantization)
    return build_atomically(target, lambda tmp: _quantize(f32, tmp, options.quantization, options))


def _export_from(source: Path, target: Path, cache: Path, adapters: list | None = None) -> None:
    _export(source, target, cache, adapters)
    (target / "source.json").write_text(json.dumps({"source": source.resolve().name}))


def _recorded_source(entry: Path) -> str | None:
    """The name of the folder an export was made from (a Hub snapshot's is its commit), if recorded."""
    try:
        return json.loads((entry / "source.json").read_text())["source"]
    except (OSError, ValueError, KeyError):
        return None


def _export_decoder(source: Path, target: Path) -> None:
    """Convert the decoder of a diffusers ``AutoencoderTiny`` folder to OpenVINO IR in ``target``.

    optimum-intel cannot export a pipeline whose VAE is an AutoencoderTiny, so the decoder
    alone is converted with OpenVINO's own ``convert_model`` (dynamic spatial shape).
    """
    import openvino as ov
    import torch
    from diffusers import AutoencoderTiny

    log.info("converting the tiny decoder to OpenVINO: once, seconds")
    try:
        vae = AutoencoderTiny.from_pretrained(source).eval()
    except (OSError, ValueError, TypeError) as e:
        raise RiffstreamError(f"{source} is not a diffusers AutoencoderTiny (TAESD) decoder: {e}") from None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ir = ov.convert_model(vae.decoder, example_input=torch.zeros(1, vae.config.latent_channels, 8, 8))
    ir.reshape({0: [1, vae.config.latent_channels, -1, -1]})
    ov.save_model(ir, target / "openvino_model.xml")


def _decoder_files(repo_id: str, progress: bool) -> Path:
    """The config and safetensors weights of an AutoencoderTiny on the Hub (errors name --decoder)."""
    from huggingface_hub import snapshot_download

    from riffstream.model.hub import _explain

    kwargs = dict(allow_patterns=["config.json", "*.safetensors"])
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as error:
        raise _explain(error, repo_id, None, "--decoder", "downloading") from None


def resolve_decoder(options: ModelOptions, progress: bool = True) -> Path | None:
    """The OpenVINO IR (``openvino_model.xml``) of the tiny decoder ``options.decoder`` asks for,
    converting it into the cache once; None for the model's own VAE decoder."""
    from riffstream.model import hub
    from riffstream.model.options import DEFAULT_DECODER

    decoder = options.decoder
    if decoder == DEFAULT_DECODER:
        return None
    cache = options.cache
    path = Path(decoder).expanduser()
    if decoder == TAESD and options.model == TINY_MODEL:
        from riffstream.model.tiny import TINY_VERSION, build_tiny_decoder

        name, identity = "taesd-tiny", f"taesd-tiny:v{TINY_VERSION}"
        folder = cache_entry(cache, name, identity, "diffusers", kind="sources")

        def source() -> Path:
            return build_atomically(folder, build_tiny_decoder)

    elif path.is_dir():
        path = path.resolve()
        name, identity = path.name, f"dir:{path}"

        def source() -> Path:
            return path

    else:
        hub_id = TAESD_HUB_ID if decoder == TAESD else decoder
        if not hub.is_hub_id(hub_id):
            raise RiffstreamError(
                f"Decoder {decoder!r} is not 'vae', 'taesd', a folder or a Hugging Face Hub id (owner/name): check --decoder."
            )
        name, identity = hub_id, f"hub:{hub_id}"

        def source() -> Path:
            return _decoder_files(hub_id, progress)

    target = cache_entry(cache, name, identity, None, kind="decoders")
    if not is_complete(target):
        src = source()
        build_atomically(target, lambda tmp: _export_decoder(src, tmp))
    return target / "openvino_model.xml"
