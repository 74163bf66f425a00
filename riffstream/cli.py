"""The ``riffstream`` command line.

``riffstream "lofi to jazz"`` generates music and plays it live (and/or renders it to a
file); ``riffstream image-to-audio`` and ``riffstream audio-to-image`` convert between
audio and Riffusion spectrogram images, as Riffusion's own CLI names them. Every
user-fixable problem ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence

from riffstream import checks
from riffstream.checks import Limits, option_type
from riffstream.errors import RiffstreamError, SourceLost, Terminated
from riffstream.model.options import (
    DEFAULT_GUIDANCE,
    DEFAULT_MODEL,
    DEFAULT_STEPS,
    PRECISIONS,
    PRESET_NAMES,
    PRESETS,
    SCHEDULERS,
    LoraSpec,
    parse_lora,
)
from riffstream.phase import DEFAULT_ITERATIONS
from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION
from riffstream.server import CONTROL_CALLS, CONTROL_WINDOW, DEFAULT_MAX_LISTENERS
from riffstream.stitch import DEFAULT_CROSSFADE, DEFAULT_LOUDNESS
from riffstream.tempo import BPM
from riffstream.server.icecast import IcecastTarget, parse_icecast_url
from riffstream.session import GenerationPlan, GenerationRequest, ServeRequest, generate, serve
from riffstream.session import plan_generation as plan_request
from riffstream.session.convert import audio_to_midi, audio_to_png, images_to_audio, prepare_model
from riffstream.sinks import list_devices
from riffstream.stream import DEFAULT_STRENGTH, STEER_MODES
from riffstream.terminal import Terminal, say

#: Exit status for user-fixable errors (argparse uses 2 for usage errors too).
EXIT_ERROR = 2
#: Exit status after Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM, as shells report it.
EXIT_TERMINATED = 143


def _image_to_audio(args: argparse.Namespace) -> None:
    *image_paths, output = args.paths
    print(images_to_audio(image_paths, output, args.crossfade, args.iterations, args.loudness))


def _audio_to_image(args: argparse.Namespace) -> None:
    print(audio_to_png(args.audio, args.output, args.stereo))


def _audio_to_midi(args: argparse.Namespace) -> None:
    print(audio_to_midi(args.audio, args.output))


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


def _lora(text: str) -> LoraSpec:
    """``--lora SOURCE[:SCALE]``."""
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
                          help="long-term target loudness, true peaks under -1 dBTP; 'off' keeps the image's "
                               "level, peak-limited (default: %(default)s)")
    to_audio.add_argument("--iterations", type=option_type(checks.ITERATIONS), default=DEFAULT_ITERATIONS, metavar="N",
                          help="Griffin-Lim iterations after PGHI (default: %(default)s; a clip still far "
                               "from consistent then gets up to 32)")
    to_audio.set_defaults(run=_image_to_audio)
    to_image = commands.add_parser("audio-to-image", help="turn audio into a Riffusion spectrogram image")
    to_image.add_argument("audio", help="audio file (WAV, FLAC, OGG, MP3, ...)")
    to_image.add_argument("output", help="image to write (.png); a longer clip makes a wider image")
    to_image.add_argument("--stereo", action="store_true", help="keep two channels (G and B)")
    to_image.set_defaults(run=_audio_to_image)
    to_midi = commands.add_parser(
        "audio-to-midi", help="take the notes of audio into a MIDI file",
        description="Transcribe the notes of an audio file with Spotify's Basic Pitch model (on OpenVINO) into a "
                    "Standard MIDI File, for a DAW.")
    to_midi.add_argument("audio", help="audio file (WAV, FLAC, OGG, MP3, ...)")
    to_midi.add_argument("output", help="MIDI file to write (.mid)")
    to_midi.set_defaults(run=_audio_to_midi)
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


SUBCOMMANDS = ("image-to-audio", "audio-to-image", "audio-to-midi", "download")


GENERATE_EPILOG = """examples:
  riffstream "lofi hip hop to smooth jazz"                       play live until Ctrl-C
  riffstream "lofi to jazz to techno" --duration 5m --out mix.flac   render and play
  riffstream "ambient drone" --duration 1h --no-play --out long.ogg  render only
  riffstream "lofi hip hop beat" --bpm 90                        tempo lock: on the beat across seams
  riffstream "lofi:2 + smooth jazz:1"                            a weighted blend of two styles
  riffstream "jazz trio" --init-midi sketch.mid --midi-out notes.mid   a MIDI sketch in a style, notes out
  riffstream --timeline examples/timeline.toml --no-play --out set.flac   a planned set
  riffstream "lofi beat" --model tiny --duration 20 --no-play --out test.wav
                                                   offline smoke test (noise, not music)

While an endless stream runs, type a new prompt and press Enter: the stream turns to it at
once (heard within seconds) and moves to it over --clips-per-transition clips. Ctrl-C (or
SIGTERM) stops within a second; a file being written keeps every finished clip (endless live
play: everything that was heard).

Conversions: riffstream image-to-audio SPEC.png OUT.wav, riffstream audio-to-image IN.wav
OUT.png, riffstream audio-to-midi IN.wav OUT.mid (see riffstream image-to-audio --help). Fetch and export a model ahead of time, to
play offline later: riffstream download [MODEL]. Serve the stream to browsers, players and
Icecast: riffstream serve [PROMPT] (see riffstream serve --help).
"""


def _add_model_options(group, with_model: bool = True) -> None:
    """The options that choose and convert the model, shared by generation and ``download`` (which takes
    the model as its argument instead of ``--model``)."""
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
    gen.add_argument("--steer", choices=STEER_MODES, default="now",
                     help="how a prompt typed (or posted) into endless play is taken: 'now' turns from where the "
                          "stream is and drops audio not yet heard, so it is heard within seconds; 'smooth' waits for "
                          "the transition in progress to end and plays out what is made, as Riffusion's app "
                          "(default: %(default)s)")
    gen.add_argument("--crossfade", type=option_type(checks.CROSSFADE), metavar="SECONDS",
                     help=f"overlap between clips, phase-continued and crossfaded (default: {DEFAULT_CROSSFADE:g}, "
                          "or a quarter of a narrower clip)")
    gen.add_argument("--loudness", type=_loudness, default=DEFAULT_LOUDNESS, metavar="LUFS",
                     help="long-term loudness: every five minutes within 1 LU of it, shorter rises and falls "
                          "kept, true peaks under -1 dBTP; 'off' keeps the model's level (default: %(default)s)")
    gen.add_argument("--bpm", type=option_type(BPM), metavar="N",
                     help="tempo lock: clips start on an N-BPM bar grid, each from a synthesised drum loop (or "
                          "--init-audio's loop) cut to where it starts in the bar")
    gen.add_argument("--timeline", metavar="FILE",
                     help="a TOML plan: prompts or blends at times, with transition lengths, seeds, negative prompts, "
                          "strengths and tempi (see examples/timeline.toml); replaces the prompt")
    gen.add_argument("--init-audio", metavar="FILE",
                     help="start every clip from this audio loop's spectrogram (img2img), to keep its sound; with "
                          "--bpm, the loop (whole bars from a downbeat) replaces the drums")
    gen.add_argument("--init-midi", metavar="FILE",
                     help="start each clip from this MIDI file, rendered with FluidSynth, over the stream time the "
                          "clip covers; its tempo map sets the beat grid (no --bpm). A render without --duration "
                          "ends where it does")
    gen.add_argument("--soundfont", metavar="FILE.sf2",
                     help="the SoundFont --init-midi plays with (default: $RIFFSTREAM_SOUNDFONT, else the system's "
                          "General MIDI one)")
    gen.add_argument("--midi-out", metavar="FILE.mid",
                     help="also write the notes of the stream to FILE.mid, transcribed with Basic Pitch, placed at "
                          "stream time with the grid's tempo; written as the audio is")
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


def _icecast(text: str) -> IcecastTarget:
    try:
        return parse_icecast_url(text)
    except RiffstreamError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_serve_options(group) -> None:
    """Where and how ``riffstream serve`` serves."""
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


def request_from(args: argparse.Namespace) -> GenerationRequest:
    """The parsed options as the session's plain values (those the command has; the rest keep their defaults)."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(GenerationRequest)
             if field.name in vars(args)}
    given["prompt"] = tuple(args.prompt) if "prompt" in given else ()
    given["lora"] = tuple(args.lora)
    return GenerationRequest(**given)


def plan_generation(args: argparse.Namespace) -> GenerationPlan:
    """Check every generation option without loading the model; one-line RiffstreamError if any is unusable."""
    return plan_request(request_from(args))


def _generate(args: argparse.Namespace) -> None:
    if args.list_devices:
        print(list_devices())
        return
    closing = generate(request_from(args), Terminal(progress=not args.no_progress))
    if closing is not None:
        print(closing)


def _serve(args: argparse.Namespace) -> None:
    listen = ServeRequest(host=args.host, port=args.port, token=args.token, max_listeners=args.max_listeners,
                                  control_rate=args.control_rate, icecast=args.icecast,
                                  icecast_format=args.icecast_format)
    serve(request_from(args), listen, Terminal(progress=not args.no_progress))


def _download(args: argparse.Namespace) -> None:
    presets = ("quality", "live") if args.preset == "all" else (args.preset,)
    print(prepare_model(request_from(args), presets, say))


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
