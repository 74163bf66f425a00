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
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import riffstream.model.hub as hub
from riffstream.errors import RiffstreamError
from riffstream.model.adapters import Adapter, fuse, resolve_adapters
from riffstream.model.cache import build_atomically, cache_entry, is_complete
from riffstream.model.checkpoint import check_folder, stage
from riffstream.model.options import DEFAULT_DECODER, QUANTIZATIONS, TAESD, TAESD_HUB_ID, TINY_MODEL, ModelOptions

log = logging.getLogger(__name__)

EXPORT_SECONDS_SD15_2_CORES = 360
"""Measured: optimum-intel exports the full-size SD 1.5 architecture in about 6 minutes on 2 AVX2 cores
(Zen 3) and in 2.4 minutes on 2 AVX-512 cores (Zen 4, ``benchmarks/first_start.py``)."""
EXPORT_FASTEST_SHARE = 0.4
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


def _export(source: Path, target: Path, cache: Path, adapters: list[Adapter] | None = None) -> None:
    """Export the diffusers checkpoint ``source`` to OpenVINO IR (f32) in ``target``, with ``adapters``
    fused into its weights first."""
    from optimum.intel import OVStableDiffusionPipeline

    with tempfile.TemporaryDirectory(prefix="staged-", dir=cache) as staged, _quiet_loaders():
        pipeline = stage(source, Path(staged) / "pipeline")
        if adapters:
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


class Calibrate(Protocol):
    """Runs the f32 model on the built-in prompts, recording the UNet's inputs: its pipeline (requests cleared)
    and the samples, for hybrid quantisation. The runtime provides it; the store never runs a model."""

    def __call__(self, f32_ir: Path, options: ModelOptions) -> tuple[object, list]: ...


def _quantize(f32_ir: Path, target: Path, quantization: str, options: ModelOptions,
              calibrate: Calibrate | None) -> None:
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

    if calibrate is None:
        raise RiffstreamError("hybrid quantisation calibrates on the running model: resolve it with "
                              "riffstream.model.resolve_ir")
    pipe, samples = calibrate(f32_ir, options)
    config = OVWeightQuantizationConfig(
        bits=8,
        dataset=list(CALIBRATION_PROMPTS),
        num_samples=len(samples),
        quant_method=OVQuantizationMethod.HYBRID,
    )
    OVQuantizer(pipe).quantize(
        ov_config=OVConfig(quantization_config=config),
        calibration_dataset=OVCalibrationDataset({"unet": nncf.Dataset(samples)}),
    )
    pipe.save_pretrained(target)


def _source(options: ModelOptions, progress: bool, refresh: bool) -> tuple[str, str, Callable[[], Path]]:
    """(name, identity, fetch) for ``options.model``: ``fetch()`` returns its local diffusers folder."""
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


def resolve_ir(options: ModelOptions, progress: bool = True, refresh: bool = False,
               calibrate: Calibrate | None = None) -> Path:
    """An OpenVINO IR folder for ``options``: fetched, exported and quantised into the cache once.

    ``refresh`` asks the Hub for the model's latest files even when a cached snapshot is
    complete (``riffstream download``); an export is rebuilt only if its source changed.
    With LoRA adapters, the export is of the fused model, keyed by each adapter's content and scale.
    Hybrid quantisation needs ``calibrate`` (:func:`riffstream.model.runtime.resolve_ir` passes it).
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
    return build_atomically(target, lambda tmp: _quantize(f32, tmp, options.quantization, options, calibrate))


def _export_from(source: Path, target: Path, cache: Path, adapters: list[Adapter] | None = None) -> None:
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

    patterns = ["config.json", "*.safetensors"]
    cached = hub.in_local_cache(lambda: Path(snapshot_download(repo_id, allow_patterns=patterns,
                                                               local_files_only=True)))
    if cached is not None:
        return cached
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:
        raise hub.explain_hub_error(error, repo_id, None, "--decoder", "downloading") from None


def resolve_decoder(options: ModelOptions, progress: bool = True) -> Path | None:
    """The OpenVINO IR (``openvino_model.xml``) of the tiny decoder ``options.decoder`` asks for,
    converting it into the cache once; None for the model's own VAE decoder."""
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
