"""The ``riffstream`` command line.

``riffstream "lofi to jazz"`` generates music and plays it live (and/or renders it to a
file); ``riffstream image-to-audio`` and ``riffstream audio-to-image`` convert between
audio and Riffusion spectrogram images, as Riffusion's own CLI names them. Every
user-fixable problem ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from riffstream import checks
from riffstream.checks import Limits, option_type
from riffstream.errors import RiffstreamError, SourceLost, WriteFailed
from riffstream.phase import DEFAULT_ITERATIONS
from riffstream.stitch import DEFAULT_CROSSFADE, DEFAULT_LOUDNESS

if TYPE_CHECKING:
    from riffstream.model import ModelOptions
    from riffstream.model.options import Preset
    from riffstream.stream import StreamOptions

#: Exit status for user-fixable errors (argparse uses 2 for usage errors too).
EXIT_ERROR = 2
#: Exit status after Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM, as shells report it.
EXIT_TERMINATED = 143


def _image_to_audio(args: argparse.Namespace) -> None:
    from riffstream.sinks import check_writable, claim_output, file_format, write_audio
    from riffstream.spectrogram import params_for_image, read_image
    from riffstream.stitch import stitch_images

    *image_paths, output = args.paths
    if not image_paths:
        raise RiffstreamError("give one or more spectrogram images, then the audio file to write")
    file_format(output)
    check_writable(output)
    images = [read_image(path) for path in image_paths]
    params = params_for_image(images[0])
    audio = stitch_images(images, params, crossfade=args.crossfade, iterations=args.iterations, loudness=args.loudness)
    if not np.any(audio):
        raise RiffstreamError(f"{' and '.join(image_paths)} hold no sound")
    with claim_output(output, "output file"):
        write_audio(output, audio, params.sample_rate)
    print(f"wrote {output}: {len(images)} clip{'s' * (len(images) > 1)}, "
          f"{audio.shape[-1] / params.sample_rate:.2f} s at {params.sample_rate} Hz")


def _audio_to_image(args: argparse.Namespace) -> None:
    from riffstream.sinks import check_writable, read_audio
    from riffstream.spectrogram import SpectrogramParams, audio_to_image

    if not args.output.lower().endswith(".png"):
        raise RiffstreamError("spectrogram images are written as .png (lossless, with EXIF)")
    check_writable(args.output)
    samples, sample_rate = read_audio(args.audio)
    if not np.any(samples):
        raise RiffstreamError(f"{args.audio} is silent: there is nothing to draw")
    params = SpectrogramParams(stereo=args.stereo)
    image = audio_to_image(samples, sample_rate, params)
    target = Path(args.output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        image.save(partial, format="PNG", exif=image.getexif())
        partial.replace(target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise RiffstreamError(f"cannot write {target}: {error}") from None
    print(f"wrote {args.output}: {image.width} x {image.height} pixels, {params.duration_of(image.width):.2f} s")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose every complaint (unknown options too) is an ArgumentError, for one-line errors."""

    def error(self, message: str):
        raise argparse.ArgumentError(None, message)


def _loudness(text: str) -> float | None:
    """A target loudness in LUFS, or None for 'off'."""
    if text.strip().lower() == "off":
        return None
    try:
        return option_type(checks.LOUDNESS)(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}, or 'off'") from None


def _lora(text: str):
    """``--lora SOURCE[:SCALE]``."""
    from riffstream.model.options import parse_lora

    try:
        return parse_lora(text)
    except RiffstreamError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _subcommand_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="riffstream", exit_on_error=False,
                     description="Convert between audio and spectrogram images, or fetch a model.")
    commands = parser.add_subparsers(dest="command", required=True)
    to_audio = commands.add_parser(
        "image-to-audio", help="turn Riffusion spectrogram images into audio",
        description="Turn one or more Riffusion spectrogram images into one audio file; several images are "
                    "stitched exactly as the live stream stitches its clips.")
    to_audio.add_argument("paths", nargs="+", metavar="IMAGE... OUTPUT",
                          help="spectrogram images (PNG made by Riffusion or riffstream), then the audio file to "
                               "write: .wav, .flac or .ogg")
    to_audio.add_argument("--crossfade", type=option_type(checks.CROSSFADE), default=DEFAULT_CROSSFADE, metavar="SECONDS",
                          help="overlap between consecutive images (default: %(default)s)")
    to_audio.add_argument("--loudness", type=_loudness, default=DEFAULT_LOUDNESS, metavar="LUFS",
                          help="target loudness, true peaks under -1 dBTP; 'off' keeps the image's level, "
                               "peak-limited (default: %(default)s)")
    to_audio.add_argument("--iterations", type=option_type(checks.ITERATIONS), default=DEFAULT_ITERATIONS, metavar="N",
                          help="Griffin-Lim iterations after PGHI (default: %(default)s; a clip still far "
                               "from consistent then gets up to 32)")
    to_audio.set_defaults(run=_image_to_audio)
    to_image = commands.add_parser("audio-to-image", help="turn audio into a Riffusion spectrogram image")
    to_image.add_argument("audio", help="audio file (WAV, FLAC, OGG, MP3, ...)")
    to_image.add_argument("output", help="image to write (.png); a longer clip makes a wider image")
    to_image.add_argument("--stereo", action="store_true", help="keep two channels (G and B)")
    to_image.set_defaults(run=_audio_to_image)
    download = commands.add_parser(
        "download", help="fetch and export a model ahead of time, to play offline later",
        description="Fetch a model from the Hugging Face Hub (only the files the pipeline runs, into the Hugging "
                    "Face cache), check it for updates, and export it to OpenVINO once, so that later starts need "
                    "no network and no export.")
    download.add_argument("model", nargs="?", help="Hugging Face id, local diffusers folder or 'tiny' "
                                                   "(default: the --model default)")
    _add_model_options(download.add_argument_group("model"), with_model=False)
    download.add_argument("--preset", choices=("all", "live", "quality"), default="quality",
                          help="which presets' exports to prepare: quality, live (adds LCM-LoRA, TAESD and a second "
                               "export: what live play on a CPU uses), or all (default: %(default)s)")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(run=_download)
    return parser


SUBCOMMANDS = ("image-to-audio", "audio-to-image", "download")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop cleanly and keep what was rendered."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


GENERATE_EPILOG = """examples:
  riffstream "lofi hip hop to smooth jazz"                       play live until Ctrl-C
  riffstream "lofi to jazz to techno" --duration 5m --out mix.flac   render and play
  riffstream "ambient drone" --duration 1h --no-play --out long.ogg  render only
  riffstream "lofi hip hop beat" --bpm 90                        tempo lock: on the beat across seams
  riffstream "lofi:2 + smooth jazz:1"                            a weighted blend of two styles
  riffstream --timeline examples/timeline.toml --no-play --out set.flac   a planned set
  riffstream "lofi beat" --model tiny --duration 20 --no-play --out test.wav
                                                   offline smoke test (noise, not music)

While an endless stream runs, type a new prompt and press Enter: the stream moves to it
over --clips-per-transition clips. Ctrl-C (or SIGTERM) stops within a second; a file
being written keeps every finished clip.

Conversions: riffstream image-to-audio SPEC.png OUT.wav, riffstream audio-to-image IN.wav
OUT.png (see riffstream image-to-audio --help). Fetch and export a model ahead of time, to
play offline later: riffstream download [MODEL]. Serve the stream to browsers, players and
Icecast: riffstream serve [PROMPT] (see riffstream serve --help).
"""


def _add_model_options(group, with_model: bool = True) -> None:
    """The options that choose and convert the model, shared by generation and ``download`` (which takes
    the model as its argument instead of ``--model``)."""
    from riffstream.model import DEFAULT_MODEL
    from riffstream.model.options import PRECISIONS, SCHEDULERS

    if with_model:
        group.add_argument("--model", default=DEFAULT_MODEL,
                           help="Hugging Face id, local diffusers or OpenVINO folder, or 'tiny' (offline random-weight "
                                "test model: its output is noise) (default: %(default)s)")
    group.add_argument("--revision", help="model revision on the Hub: branch, tag or commit (default: main)")
    group.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU or AUTO (default: %(default)s)")
    group.add_argument("--threads", type=option_type(checks.THREADS), help="inference threads (default: OpenVINO's choice from the CPUs; "
                       "1 per Ray worker); another count gives other audio for the same seed")
    quant = group.add_mutually_exclusive_group()
    quant.add_argument("--int8", action="store_const", const="int8", dest="quantization",
                       help="8-bit weight compression (exported once, cached)")
    quant.add_argument("--hybrid", action="store_const", const="hybrid", dest="quantization",
                       help="hybrid int8 quantisation of the UNet (calibrated once on built-in prompts, cached)")
    group.add_argument("--scheduler", choices=sorted(SCHEDULERS), metavar="NAME",
                       help="dpm++, ddim, pndm, euler, lms or lcm (default: the preset's)")
    group.add_argument("--decoder",
                       help="latents to image: 'vae' (the model's own, most faithful), 'taesd' (madebyollin/taesd: "
                            "about 14x faster, a little softer), or a folder or Hub id of a diffusers "
                            "AutoencoderTiny (default: the preset's)")
    group.add_argument("--lora", action="append", default=[], metavar="SOURCE[:SCALE]", type=_lora,
                       help="fuse a LoRA into the model before export (cached per adapter and scale): a Hub id "
                            "(owner/name[/file.safetensors]), a .safetensors file or its folder, or 'lcm' (LCM-LoRA); "
                            "SCALE defaults to 1; repeatable")
    group.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="CPU inference precision: auto takes bf16 where the CPU has bf16 units (about 1.9x "
                            "faster), else f32; f32 is the exact path (default: %(default)s)")
    group.add_argument("--cache-dir", metavar="DIR", help="where exported models are cached "
                                                          "(default: $RIFFSTREAM_CACHE or the user cache dir)")


#: Clips ``riffstream serve`` buffers ahead of its listeners: few, so that a new prompt is heard soon.
SERVE_AHEAD_CLIPS = 2
#: What ``riffstream serve`` plays when no prompt is given (the page steers it from there).
DEFAULT_SERVE_PROMPT = "lofi hip hop beat"

SERVE_EPILOG = """examples:
  riffstream serve "lofi hip hop to smooth jazz"        open http://127.0.0.1:8000/
  riffstream serve "ambient" --host 0.0.0.0 --port 8080  on the network (prints the control token)
  riffstream serve "lofi" --icecast icecast://source:PASSWORD@radio.example:8000/riff.mp3
  riffstream serve "lofi beat" --model tiny              offline smoke test (noise, not music)

Listen at /stream.mp3 or /stream.ogg (Opus) in any player; every listener hears the same
music. Steer it from the page, or: curl -X POST -H 'Content-Type: application/json'
-d '{"prompt": "smooth jazz"}' http://127.0.0.1:8000/api/prompt. The API's schema is at
/openapi.json. Ctrl-C (or SIGTERM) stops; --out keeps every finished clip in a file.
"""


def _generation_parser(serve: bool = False) -> argparse.ArgumentParser:
    from riffstream.model import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from riffstream.model.options import PRESET_NAMES, PRESETS
    from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION
    from riffstream.stream import DEFAULT_STRENGTH
    from riffstream.tempo import BPM

    if serve:
        parser = _Parser(
            prog="riffstream serve", exit_on_error=False, formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=SERVE_EPILOG,
            description="Serve one endless stream on the network: a page to listen and steer it, MP3 and Ogg Opus "
                        "streams for any player, a JSON API with server-sent events, and an optional Icecast source.")
    else:
        parser = _Parser(
            prog="riffstream", exit_on_error=False, formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=GENERATE_EPILOG,
            description="Endless, evolving AI music from text: Riffusion on OpenVINO, played live or rendered to "
                        "file. Each clip is 5.12 s; 'a to b to c' morphs from prompt to prompt.")
    parser.add_argument("prompt", nargs="*", help='what to play, e.g. "lofi hip hop to smooth jazz" ("to" chains prompts; '
                                                  '"lofi:2 + jazz:1" blends them by weight)')
    if serve:
        _add_serve_options(parser.add_argument_group("serving"))
    else:
        _add_output_options(parser.add_argument_group("output"))
    gen = parser.add_argument_group("generation")
    gen.add_argument("--seed", type=option_type(checks.SEED), help="random seed; the same seed and options (--threads "
                     "included: the model's output depends on its thread count) give the same audio on one "
                     "machine (default: a random one, printed)")
    gen.add_argument("--preset", choices=PRESET_NAMES, default="auto",
                     help="live: LCM-LoRA, 4 steps, no guidance, TAESD, several times faster; quality: the model as "
                          "trained, 20 steps, guidance 7, its own VAE; auto: live for live play on a CPU, quality "
                          "otherwise (default: %(default)s). --steps, --guidance, --scheduler and --decoder override it")
    gen.add_argument("--steps", type=option_type(checks.STEPS),
                     help=f"denoising steps per clip (default: the preset's, {PRESETS['live'].steps} or {DEFAULT_STEPS})")
    gen.add_argument("--guidance", type=option_type(checks.GUIDANCE),
                     help="classifier-free guidance scale; 1 or less runs the UNet once a step, not twice "
                          f"(default: the preset's, {PRESETS['live'].guidance:g} or {DEFAULT_GUIDANCE:g})")
    gen.add_argument("--negative-prompt", metavar="TEXT", help="what to steer away from, e.g. \"vocals, noise\"")
    gen.add_argument("--clips-per-transition", type=option_type(checks.CLIPS_PER_TRANSITION), default=DEFAULT_CLIPS_PER_TRANSITION, metavar="N",
                     help="clips a transition takes in endless play; on one prompt the seed walks on every N clips "
                          "(default: %(default)s, alpha 0.25 ... 1.0 as Riffusion's web app)")
    gen.add_argument("--crossfade", type=option_type(checks.CROSSFADE), metavar="SECONDS",
                     help=f"overlap between clips, phase-continued and crossfaded (default: {DEFAULT_CROSSFADE:g}, "
                          "or a quarter of a narrower clip)")
    gen.add_argument("--loudness", type=_loudness, default=DEFAULT_LOUDNESS, metavar="LUFS",
                     help="loudness every clip is brought to, true peaks under -1 dBTP; 'off' keeps the model's "
                          "level (default: %(default)s)")
    gen.add_argument("--bpm", type=option_type(BPM), metavar="N",
                     help="tempo lock: clips start on an N-BPM bar grid, each from a synthesised drum loop (or "
                          "--init-audio's loop) cut to where it starts in the bar")
    gen.add_argument("--timeline", metavar="FILE",
                     help="a TOML plan: prompts or blends at times, with transition lengths, seeds, negative prompts, "
                          "strengths and tempi (see examples/timeline.toml); replaces the prompt")
    gen.add_argument("--init-audio", metavar="FILE",
                     help="start every clip from this audio loop's spectrogram (img2img), to keep its sound; with "
                          "--bpm, the loop (whole bars from a downbeat) replaces the drums")
    gen.add_argument("--continuation", action="store_true",
                     help="start every clip from the end of the previous one (img2img), for continuity")
    gen.add_argument("--strength", type=option_type(Limits(0, 1)), metavar="S",
                     help="how much of the starting image (--init-audio, --bpm) img2img repaints, 0..1; 0 plays the "
                          f"starting loop as it is, with no model (default: {DEFAULT_STRENGTH})")
    gen.add_argument("--width", type=option_type(checks.WIDTH), default=512, metavar="PIXELS",
                     help="clip width; 100 pixels per second (default: %(default)s = 5.12 s; multiple of 8)")
    _add_model_options(parser.add_argument_group("model"))
    parser.add_argument("--fallback-model", metavar="MODEL",
                        help="if --model is neither cached nor reachable on the Hub (no network), use MODEL instead "
                             "and say so (make run falls back to 'tiny')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_serve if serve else _generate)
    return parser


def _add_output_options(out) -> None:
    """Where the play command's audio goes."""
    out.add_argument("--out", "-o", metavar="FILE", help="also write the audio to FILE (.wav, .flac or .ogg), incrementally")
    out.add_argument("--no-play", action="store_true", help="do not play live (needs --out)")
    out.add_argument("--duration", "-d", metavar="TIME",
                     help="total length (90, 90s, 2.5m, 1h or 1:30); the journey through the prompts spreads over it. "
                          "Default: endless, until Ctrl-C")
    out.add_argument("--output-device", metavar="DEVICE", help="audio device name or number (see --list-devices)")
    out.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    out.add_argument("--prebuffer", type=option_type(checks.PREBUFFER), metavar="SECONDS",
                     help="seconds of audio to buffer before playing (default: after the first clip for endless play; "
                          "for a --duration, enough that the buffer never runs dry, from the measured speed)")
    out.add_argument("--save-spectrograms", metavar="DIR", help="save every clip's spectrogram (PNG) and clips.jsonl in DIR")
    out.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="make clips on a Ray cluster, several at once: with no ADDRESS a local one (or RAY_ADDRESS's); "
                          "needs pip install 'riffstream[ray]'")
    out.add_argument("--ray-workers", type=_count, metavar="N",
                     help="Ray workers, each holding the model (default: the cluster's CPUs / --threads)")
    out.add_argument("--resume", action="store_true",
                     help="continue a render to --out that was stopped or killed, from its journal; the same options "
                          "(the seed may be left out) give exactly the file an uninterrupted render would")


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100000, not {text!r}")
    return int(text)


def _icecast(text: str):
    from riffstream.server.icecast import parse_icecast_url

    try:
        return parse_icecast_url(text)
    except RiffstreamError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_serve_options(group) -> None:
    """Where and how ``riffstream serve`` serves."""
    from riffstream.server import CONTROL_CALLS, CONTROL_WINDOW, DEFAULT_MAX_LISTENERS

    group.add_argument("--host", default="127.0.0.1",
                       help="address to serve on; any address but loopback needs the control token "
                            "(default: %(default)s)")
    group.add_argument("--port", type=_port, default=8000, help="port to serve on (default: %(default)s)")
    group.add_argument("--token", help="the token control calls must send (Authorization: Bearer TOKEN); default: "
                                       "none on loopback, a new one (printed) on any other address")
    group.add_argument("--max-listeners", type=_count, default=DEFAULT_MAX_LISTENERS, metavar="N",
                       help="most simultaneous listeners and event streams (default: %(default)s)")
    group.add_argument("--control-rate", type=_count, default=CONTROL_CALLS, metavar="N",
                       help=f"control calls (prompt, settings) each client may make per {CONTROL_WINDOW:g} s "
                            "(default: %(default)s)")
    group.add_argument("--icecast", type=_icecast, metavar="URL",
                       help="also push the stream to an Icecast 2 server as a source: "
                            "icecast://source:PASSWORD@HOST:PORT/MOUNT; reconnects if it drops")
    group.add_argument("--icecast-format", choices=("mp3", "ogg"), default="mp3",
                       help="what to push to Icecast: mp3 or ogg (Opus) (default: %(default)s)")
    group.add_argument("--out", "-o", metavar="FILE", help="also write the audio to FILE (.wav, .flac or .ogg)")
    group.set_defaults(no_play=True, duration=None, output_device=None, list_devices=False, prebuffer=None,
                       save_spectrograms=None, resume=False, ray=None, ray_workers=None, serve=True)


def _quiet_libraries() -> None:
    """Silence the model stack's warnings and banners: the CLI speaks for itself."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "optimum", "nncf", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


@dataclass(frozen=True)
class GenerationPlan:
    """A generation command, parsed and checked: everything but the model is known to be usable."""

    stream: StreamOptions
    model: ModelOptions
    fallback: ModelOptions | None  # --fallback-model's, used if the Hub is unreachable and --model is not cached
    output_device: str | None  # the sound card's name, or None when not playing
    preset: str  # "live" or "quality": what --preset (auto by default) came to


def plan_generation(args: argparse.Namespace) -> GenerationPlan:
    """Check every generation option without loading the model; one-line RiffstreamError if any is unusable."""
    import random

    from riffstream.planner import parse_duration, parse_prompts
    from riffstream.sinks import check_folder_writable, check_output_device, check_writable, file_format
    from riffstream.spectrogram import SpectrogramParams
    from riffstream.stream import DEFAULT_STRENGTH, StreamOptions, validate

    timeline = _timeline(args)
    prompts = list(timeline.prompts) if timeline is not None else parse_prompts(" ".join(args.prompt))
    duration = parse_duration(args.duration) if args.duration is not None else None
    serving = getattr(args, "serve", False)
    play = not args.no_play
    if duration is None and timeline is not None and not (play or serving):
        duration = timeline.end  # a render ends there; live play runs through the timeline and riffs on
    if not play and not args.out and not serving:
        raise RiffstreamError("--no-play needs --out FILE: otherwise there is nothing to do")
    if args.width % 8:
        raise RiffstreamError(f"--width must be a multiple of 8, not {args.width}")
    preset = _preset(args, play or serving)
    model = _model_options(args, args.model, preset)
    fallback = (_model_options(args, args.fallback_model, preset)
                if args.fallback_model not in (None, args.model) else None)
    for checked in filter(None, (model, fallback)):
        checked.check()
    if args.resume and not (args.out and duration is not None):
        raise RiffstreamError("--resume continues a render: give the --out FILE and --duration it was started with")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if timeline is not None and timeline.seed is not None and args.seed is None:
        seed = timeline.seed
    elif args.resume and args.seed is None:
        from riffstream.journal import Journal

        seed = Journal.read_plan(args.out).get("seed", seed)
    spectrograms = Path(args.save_spectrograms) if args.save_spectrograms is not None else None
    tempo_locked = args.bpm is not None or (timeline is not None and timeline.uses_bpm)
    loop = _loop(args.init_audio, timeline, args.bpm) if tempo_locked and args.init_audio else None
    options = StreamOptions(
        prompts=tuple(prompts), seed=seed, steps=args.steps or preset.steps,
        guidance=preset.guidance if args.guidance is None else args.guidance,
        negative_prompt=args.negative_prompt, clips_per_transition=args.clips_per_transition,
        crossfade=args.crossfade, loudness=args.loudness,
        init_image=None if tempo_locked else _init_image(args.init_audio, args.width),
        strength=DEFAULT_STRENGTH if args.strength is None else args.strength, bpm=args.bpm, loop=loop,
        timeline=timeline, continuation=args.continuation, duration=duration, save_spectrograms=spectrograms,
        prebuffer=args.prebuffer, params=SpectrogramParams())
    if options.strength == 0 and options.init_image is None and not tempo_locked:
        raise RiffstreamError("--strength 0 plays the starting loop as it is: give --bpm or --init-audio")
    validate(options, args.width)
    if args.out is not None:
        file_format(args.out)
        check_writable(args.out)
    if spectrograms is not None:
        check_folder_writable(spectrograms)
    return GenerationPlan(options, model, fallback, check_output_device(args.output_device) if play else None,
                          preset.name)


def journal_plan(plan: GenerationPlan, out: str, on_ray: bool = False) -> dict:
    """What decides a render's audio, as a journal records it: a resume must match it exactly.

    OpenVINO's output depends on its thread count, so the journal records the count the clips are
    made with: ``--threads``, or 1 on Ray workers, or OpenVINO's own choice, which follows the CPUs
    this process may use.
    """
    import hashlib

    options, model = plan.stream, plan.model
    threads = model.threads or (1 if on_ray else f"auto on {len(os.sched_getaffinity(0))} CPUs")

    def digest(data) -> str | None:
        return None if data is None else hashlib.sha256(data).hexdigest()

    return {
        "prompts": list(options.prompts), "seed": options.seed, "steps": options.steps, "guidance": options.guidance,
        "negative_prompt": options.negative_prompt, "clips_per_transition": options.clips_per_transition,
        "crossfade": options.crossfade, "loudness": options.loudness, "strength": options.strength,
        "continuation": options.continuation, "duration": options.duration, "bpm": options.bpm,
        "init_audio": digest(options.init_image.tobytes() if options.init_image is not None else None),
        "loop": digest(options.loop.tobytes() if options.loop is not None else None),
        "timeline": digest(repr(options.timeline).encode() if options.timeline is not None else None),
        "format": Path(out).suffix.lower(), "width": model.width,
        "model": {"model": model.model, "revision": model.revision, "device": model.device, "threads": threads,
                  "quantization": model.quantization, "scheduler": model.scheduler, "decoder": model.decoder,
                  "loras": [[lora.source, lora.scale] for lora in model.loras], "precision": model.precision},
    }


def _generate(args: argparse.Namespace) -> None:
    from riffstream.sinks import claim_output, list_devices

    if args.list_devices:
        print(list_devices())
        return
    plan = plan_generation(args)
    # One writer per file: held from before the journal is read until the file is whole or abandoned.
    with claim_output(args.out) if args.out else contextlib.nullcontext():
        journal = finished = None
        if args.resume:  # checked before the model loads, and nothing is touched if it does not match
            from riffstream.journal import Journal

            journal, finished = Journal.resume(args.out, journal_plan(plan, args.out, args.ray is not None))
        if args.preset == "auto" and plan.preset == "live":
            print("riffstream: live preset for live play on a CPU (LCM-LoRA, 4 steps, TAESD); --preset quality "
                  "plays the model as trained, far slower than real time here", file=sys.stderr)
        if args.ray is not None:
            _stream_on_ray(args, plan, journal, finished)
            return
        model = _load_model(plan, progress=not args.no_progress)
        if model.is_tiny:
            print("riffstream: note: the tiny model has random weights: its output is noise, not music",
                  file=sys.stderr)
        _stream(args, model, plan, journal, finished)


def _stream_on_ray(args: argparse.Namespace, plan: GenerationPlan, journal, finished) -> None:
    """Generate with a pool of Ray workers, each holding the model, instead of a local model."""
    from riffstream.model import TINY_MODEL

    from riffstream.stream import refuse_remote_continuation

    refuse_remote_continuation(plan.stream)  # before the workers start
    with _model_stack("cannot start the Ray workers"):
        from riffstream.stream.raypool import RayPool

        began = time.monotonic()
        print("riffstream: starting Ray workers ...", file=sys.stderr)
        pool = RayPool(plan.model, args.ray or None, args.ray_workers)
    try:
        with _model_stack(f"cannot load model {plan.model.model!r} on the Ray workers"):
            pool.wait_ready()
        print(f"riffstream: {pool.workers} Ray workers ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
        if plan.model.threads is None:
            print("riffstream: note: each Ray worker runs 1 thread: the audio differs from a local render's "
                  "unless both are given the same --threads", file=sys.stderr)
        if plan.model.model == TINY_MODEL:
            print("riffstream: note: the tiny model has random weights: its output is noise, not music",
                  file=sys.stderr)
        _stream(args, pool, plan, journal, finished)
    finally:
        pool.close()


def _timeline(args: argparse.Namespace):
    """``--timeline``'s plan, with the command line's --bpm, --seed, --strength and --negative-prompt as its
    defaults (an entry's own values still win); None without one."""
    if args.timeline is None:
        return None
    from riffstream.timeline import read_timeline

    if args.prompt:
        raise RiffstreamError("give the prompts in the timeline or on the command line, not both")
    timeline = read_timeline(args.timeline)
    overrides = {"bpm": args.bpm, "seed": args.seed, "strength": args.strength, "negative_prompt": args.negative_prompt}
    return dataclasses.replace(timeline, **{key: value for key, value in overrides.items() if value is not None})


def _loop(path: str, timeline, bpm: float | None):
    """The user's loop for a tempo lock: mono at the spectrogram rate, checked to fit whole bars at every tempo."""
    import math

    import scipy.signal

    from riffstream.sinks import read_audio
    from riffstream.spectrogram import SpectrogramParams
    from riffstream.tempo import loop_audio

    samples, sample_rate = read_audio(path)
    if not np.any(samples):
        raise RiffstreamError(f"{path} is silent: it cannot seed the clips")
    mono = np.atleast_2d(samples).astype(np.float64).mean(axis=0)
    rate = SpectrogramParams().sample_rate
    if sample_rate != rate:
        common = math.gcd(int(sample_rate), rate)
        mono = scipy.signal.resample_poly(mono, rate // common, int(sample_rate) // common)
    from riffstream.stream import tempi

    for tempo in tempi(bpm, timeline):
        try:
            loop_audio(tempo, mono, rate)
        except RiffstreamError as error:
            raise RiffstreamError(f"{path}: {error}") from None
    return mono.astype(np.float32)


def _init_image(path: str | None, width: int):
    """The spectrogram of an audio loop, tiled or cut to the clip width, for img2img."""
    if path is None:
        return None
    from PIL import Image

    from riffstream.sinks import read_audio
    from riffstream.spectrogram import audio_to_image

    samples, sample_rate = read_audio(path)
    if not np.any(samples):
        raise RiffstreamError(f"{path} is silent: it cannot seed the clips")
    pixels = np.asarray(audio_to_image(samples, sample_rate))
    repeats = -(-width // pixels.shape[1])
    return Image.fromarray(np.ascontiguousarray(np.tile(pixels, (1, repeats, 1))[:, :width]))


def _preset(args: argparse.Namespace, playing: bool, name: str | None = None) -> Preset:
    """The preset ``--preset`` (or ``name``) comes to, before per-option overrides."""
    from riffstream.model.options import PRESETS, auto_preset

    name = name or getattr(args, "preset", "auto")
    return PRESETS[auto_preset(playing, args.device) if name == "auto" else name]


def _model_options(args: argparse.Namespace, model: str, preset: Preset) -> ModelOptions:
    from riffstream.model import ModelOptions

    loras = preset.loras + tuple(lora for lora in args.lora if lora not in preset.loras)
    return ModelOptions(
        model=model, revision=args.revision, device=args.device, threads=args.threads, height=512,
        width=getattr(args, "width", 512), quantization=args.quantization,
        scheduler=args.scheduler or preset.scheduler, decoder=args.decoder or preset.decoder, loras=loras,
        precision=args.precision, cache_dir=Path(args.cache_dir) if args.cache_dir else None)


def _report_store_progress() -> None:
    """Show the model store's few progress lines (downloading, exporting, cached where) on stderr."""
    import logging

    log = logging.getLogger("riffstream.model")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("riffstream: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@contextlib.contextmanager
def _model_stack(failure: str) -> Iterator[None]:
    """Quiet the model libraries, show the store's progress lines, and turn anything unexpected
    they raise into one line starting with ``failure``."""
    _quiet_libraries()
    _report_store_progress()
    try:
        yield
    except (RiffstreamError, KeyboardInterrupt):
        raise
    except Exception as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise RiffstreamError(f"{failure}: {detail[:300]}") from None


def _load_model(plan: GenerationPlan, progress: bool):
    with _model_stack(f"cannot load model {plan.model.model!r}"):
        from riffstream.model import RiffusionModel
        from riffstream.model.hub import HubUnreachable

        print(f"riffstream: loading {plan.model.model} ...", file=sys.stderr)
        began = time.monotonic()
        try:
            model = RiffusionModel.load(plan.model, progress=progress)
        except HubUnreachable as error:
            if plan.fallback is None:
                raise
            print(f"riffstream: note: {error} Using {plan.fallback.model} instead.", file=sys.stderr)
            model = RiffusionModel.load(plan.fallback, progress=progress)
    print(f"riffstream: model ready in {time.monotonic() - began:.1f} s", file=sys.stderr)
    return model


def _download(args: argparse.Namespace) -> None:
    from riffstream.model import DEFAULT_MODEL, TINY_MODEL

    name = args.model or DEFAULT_MODEL
    presets = ("quality", "live") if args.preset == "all" else (args.preset,)
    began = time.monotonic()
    exported = []
    with _model_stack(f"cannot prepare model {name!r}"):
        from riffstream.model.hub import HubUnreachable
        from riffstream.model.store import resolve_decoder, resolve_ir

        for number, preset in enumerate(presets):
            options = _model_options(args, name, _preset(args, playing=False, name=preset))
            try:
                ir = resolve_ir(options, progress=not args.no_progress, refresh=number == 0)
                resolve_decoder(options, progress=not args.no_progress)
            except HubUnreachable as error:
                if number == 0:
                    raise
                print(f"riffstream: note: the {preset} preset is not prepared: {error}", file=sys.stderr)
                continue
            exported.append(f"{preset} preset in {ir}")
    play = 'riffstream "lofi to jazz"' + ("" if name == DEFAULT_MODEL else f" --model {name}")
    note = " (a random-weight test model: noise, not music)" if name == TINY_MODEL else ""
    print(f"ready in {time.monotonic() - began:.1f} s: {name}{note} is exported ({'; '.join(exported)}); "
          f"it now plays offline: {play}")


def _stream(args: argparse.Namespace, model, plan: GenerationPlan, journal=None, finished=None) -> None:
    from tqdm import tqdm

    from riffstream.journal import Journal
    from riffstream.sinks import AudioFileWriter, Player
    from riffstream.stream import Stream, read_prompts

    options, device_name = plan.stream, plan.output_device
    params = options.params
    if journal is None and args.out and options.duration is not None:
        journal = Journal.start(args.out, journal_plan(plan, args.out, args.ray is not None))
    writer = AudioFileWriter(args.out, params.sample_rate, params.channels) if args.out else None
    factory = None
    if device_name is not None:
        def factory(ring):
            return Player(ring, params.sample_rate, params.channels, args.output_device)
    try:
        stream = Stream(model, options, [writer] if writer else [], factory, journal, finished or ())
        if finished:
            print(f"riffstream: resuming {args.out}: {len(finished)} of {stream.total_clips} clips are done",
                  file=sys.stderr)
        total = stream.total_clips
        what = f"{_format_seconds(options.duration)} in {total} clips" if total else "endless (Ctrl-C stops)"
        where = ", ".join(filter(None, [f"playing on {device_name}" if device_name else None,
                                        f"writing {args.out}" if args.out else None]))
        plan = (f"timeline {args.timeline} ({len(options.timeline.entries)} entries)" if options.timeline
                else " -> ".join(options.prompts))
        tempo = f"; {options.bpm:g} BPM" if options.bpm else ""
        print(f"riffstream: {plan}; seed {options.seed}{tempo}; {what}; {where}", file=sys.stderr)
        typing = [""]
        keys = contextlib.nullcontext(False)
        if total is None:
            print("riffstream: type a prompt and Enter to move the music to it", file=sys.stderr)
            keys = _keys_without_echo(0) if not args.no_progress else keys
            read_prompts(stream, on_typing=lambda text: typing.__setitem__(0, text))
        bar = tqdm(total=total, unit="clip", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} clips [{elapsed}<{remaining}{postfix}]" if total
                   else "{desc}{n_fmt} clips [{elapsed}{postfix}]")

        shown = [0.0, ""]

        def tick(s: Stream) -> None:
            while not s.messages.empty():
                bar.write(f"riffstream: {s.messages.get()}", file=sys.stderr)
            info = [f"{s.stats.audio_seconds:.1f} s audio", f"{s.stats.real_time_factor():.2f}x real time"]
            if s.player is not None:
                info.append(f"{s.ahead_seconds():.1f} s ahead" if s.player_started else "buffering")
                if s.player.underruns:
                    info.append(f"{s.player.underruns} underruns")
            now = time.monotonic()
            if bar.n != s.stats.clips or now - shown[0] >= 1.0 or typing[0] != shown[1]:
                shown[0], shown[1] = now, typing[0]
                bar.n = s.stats.clips
                bar.set_description_str(f"> {typing[0]} | " if typing[0] else "", refresh=False)
                bar.set_postfix_str(", ".join(info), refresh=False)
                bar.refresh()

        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with keys:
                stream.run(tick)
        finally:
            bar.close()
            while not stream.messages.empty():
                print(f"riffstream: {stream.messages.get()}", file=sys.stderr)
            _summary(stream)
    except (KeyboardInterrupt, SourceLost):  # stopped, or where clips are made is gone: keep what is finished
        if writer is not None:
            writer.close()
            more = "; the same command with --resume finishes it" if journal is not None else ""
            if writer.is_on_disk():
                print(f"riffstream: kept {args.out}: {writer.frames_written / params.sample_rate:.2f} s{more}",
                      file=sys.stderr)
        raise
    except WriteFailed as failure:  # a full disk: keep what is finished, and say so in the one line
        kept = ""
        if writer is not None:
            with contextlib.suppress(WriteFailed):
                writer.close()
            if writer.is_on_disk():
                kept = f"; kept {writer.frames_written / params.sample_rate:.2f} s of finished audio in {args.out}"
            else:
                writer.discard()
        more = "; free some space, then the same command with --resume finishes it" if journal is not None else ""
        raise WriteFailed(f"{failure}{kept}{more}") from None
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
        if not writer.is_on_disk():  # never claim what is not there; the journal can write it again
            more = "; the same command with --resume writes it again" if journal is not None else ""
            raise RiffstreamError(f"{args.out} was replaced or removed by another program after it was "
                                  f"written{more}")
    if journal is not None:
        journal.finish()
        print(f"wrote {args.out}: {writer.frames_written / params.sample_rate:.2f} s at {params.sample_rate} Hz")


def _serve(args: argparse.Namespace) -> None:
    """``riffstream serve``: check everything, bind the port, load the model, then serve until stopped."""
    try:
        from riffstream.server import app as server
    except ImportError as error:
        raise RiffstreamError(f"riffstream serve needs the server extra ({error.name} is missing): "
                              "pip install 'riffstream[serve]'") from None
    from riffstream.sinks import claim_output

    if not args.prompt and args.timeline is None:
        args.prompt = [DEFAULT_SERVE_PROMPT]
    plan = plan_generation(args)
    with claim_output(args.out) if args.out else contextlib.nullcontext():
        _serve_planned(args, plan)


def _serve_planned(args: argparse.Namespace, plan: GenerationPlan) -> None:
    """Serve a checked plan (its ``--out`` already claimed)."""
    from riffstream.server import app as server
    from riffstream.sinks import AudioFileWriter
    from riffstream.sinks.broadcast import Broadcast
    from riffstream.stream import RealTimeClock, Stream

    options = server.ServeOptions(host=args.host, port=args.port, token=server.needs_token(args.host, args.token),
                                  max_listeners=args.max_listeners, icecast=args.icecast,
                                  icecast_format=args.icecast_format, control_calls=args.control_rate)
    if options.icecast is not None:
        _check_icecast(options)
    sock = server.bind(args.host, args.port)
    try:
        model = _load_model(plan, progress=not args.no_progress)
        if model.is_tiny:
            print("riffstream: note: the tiny model has random weights: its output is noise, not music",
                  file=sys.stderr)
        params = plan.stream.params
        broadcast = Broadcast(params.sample_rate, params.channels)

        def clock(ring) -> RealTimeClock:
            return RealTimeClock(ring, params.sample_rate, [broadcast])

        def log(line: str) -> None:
            print(f"riffstream: {line}", file=sys.stderr, flush=True)

        def ready() -> None:
            log(f"{' -> '.join(plan.stream.prompts)}; seed {plan.stream.seed}; endless (Ctrl-C stops)")
            log(f"serving on {options.url}" + ("" if options.token is None else
                                               "  (control calls need this token; listening does not)"))

        ahead = SERVE_AHEAD_CLIPS * params.duration_of(args.width)
        recording = AudioFileWriter(args.out, params.sample_rate, params.channels) if args.out else None
        # The file closes with every finished clip in it however serving ends, and is removed on an error.
        with recording or contextlib.nullcontext():
            stream = Stream(model, dataclasses.replace(plan.stream, max_ahead=ahead), [recording] if recording else [],
                            clock)
            stopped_by = server.serve(stream, stream.player, broadcast, options, sock, log=log, on_ready=ready)
        if recording is not None:
            log(f"kept {args.out}: {recording.frames_written / params.sample_rate:.2f} s")
        _summary(stream)
        if stopped_by is not None:
            raise Terminated() if stopped_by == signal.SIGTERM else KeyboardInterrupt()
    finally:
        sock.close()


def _check_icecast(options) -> None:
    """One line and a non-zero exit now if the Icecast server refuses the source's password."""
    import asyncio

    from riffstream.server.icecast import check_source
    from riffstream.sinks.broadcast import ENCODERS

    try:  # a refused password (IcecastRejected) ends serving with its one line
        asyncio.run(check_source(options.icecast, ENCODERS[options.icecast_format].media_type))
    except OSError as error:  # connection refused, unreachable, timed out: the source retries later
        print(f"riffstream: note: icecast {options.icecast.redacted()} is not reachable yet ({error}); "
              "will keep trying", file=sys.stderr)


@contextlib.contextmanager
def _keys_without_echo(fd: int) -> Iterator[bool]:
    """While the stream runs, let the terminal pass keys on as typed, without echoing them, so that
    typing never lands on the progress bar's line: the bar shows the line being typed instead.
    Ctrl-C still interrupts. Yields whether ``fd`` is a terminal; the settings are restored after."""
    try:
        import termios

        saved = termios.tcgetattr(fd) if os.isatty(fd) and sys.stderr.isatty() else None
    except (ImportError, OSError):
        saved = None
    if saved is None:
        yield False
        return
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~(termios.ICANON | termios.ECHO)
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _summary(stream) -> None:
    stats = stream.stats
    elapsed = time.monotonic() - stats.started
    parts = [f"made {stats.audio_seconds:.1f} s of audio in {elapsed:.1f} s",
             f"{stats.real_time_factor():.3f}x real time"]
    if stream.player is not None:
        parts.append(f"{stream.player.underruns} underruns")
        if stats.loops:
            parts.append(f"looped the last clip {stats.loops} times while waiting for the model")
    print(f"riffstream: {'; '.join(parts)}", file=sys.stderr)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a command line (generation or a subcommand); raises ``argparse.ArgumentError`` on bad syntax."""
    argv = list(argv)
    if argv and argv[0] == "serve":
        return _generation_parser(serve=True).parse_args(argv[1:])
    parser = _subcommand_parser() if argv and argv[0] in SUBCOMMANDS else _generation_parser()
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except argparse.ArgumentError as error:
        print(f"riffstream: error: {error} (see riffstream --help)", file=sys.stderr)
        return EXIT_ERROR
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except RiffstreamError as error:
        print(f"riffstream: error: {error}", file=sys.stderr)
        if isinstance(error, SourceLost) and as_program:
            # The file is closed; the lost cluster's client would hold the process for a minute.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_ERROR)
        return EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"riffstream: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        if run in (_generate, _serve) and as_program:
            # Everything is stopped and the file is closed; tearing down the model stack
            # would take seconds more, so leave now (only when run as a program).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    return 0
