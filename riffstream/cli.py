"""The ``riffstream`` command line.

``riffstream image-to-audio`` and ``riffstream audio-to-image`` convert between audio and
Riffusion spectrogram images, as Riffusion's own CLI names them. Every user-fixable
problem ends as one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from riffstream.errors import RiffstreamError
from riffstream.phase import DEFAULT_ITERATIONS

#: Exit status for user-fixable errors (argparse uses 2 for usage errors too).
EXIT_ERROR = 2
#: Exit status after Ctrl-C, as shells report SIGINT.
EXIT_INTERRUPTED = 130
#: Peak level conversions never exceed, about -1 dBFS, so PCM files do not clip.
PEAK_CEILING = 10 ** (-1 / 20)


def _image_to_audio(args: argparse.Namespace) -> None:
    from riffstream.phase import image_to_audio
    from riffstream.sinks import check_writable, file_format, write_audio
    from riffstream.spectrogram import params_for_image, read_image

    file_format(args.output)
    check_writable(args.output)
    image = read_image(args.image)
    params = params_for_image(image)
    audio = image_to_audio(image, params, iterations=args.iterations)
    peak = float(np.max(np.abs(audio)))
    if peak == 0:
        raise RiffstreamError(f"{args.image} is blank: it holds no sound")
    if peak > PEAK_CEILING:
        audio = audio * (PEAK_CEILING / peak)
    write_audio(args.output, audio, params.sample_rate)
    print(f"wrote {args.output}: {audio.shape[-1] / params.sample_rate:.2f} s at {params.sample_rate} Hz")


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


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _conversion_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riffstream", description="Convert between audio and spectrogram images.")
    commands = parser.add_subparsers(dest="command", required=True)
    to_audio = commands.add_parser("image-to-audio", help="turn a Riffusion spectrogram image into audio")
    to_audio.add_argument("image", help="spectrogram image (PNG made by Riffusion or riffstream)")
    to_audio.add_argument("output", help="audio file to write: .wav, .flac or .ogg")
    to_audio.add_argument("--iterations", type=_non_negative_int, default=DEFAULT_ITERATIONS, metavar="N",
                          help="fast Griffin-Lim iterations after PGHI (default: %(default)s)")
    to_audio.set_defaults(run=_image_to_audio)
    to_image = commands.add_parser("audio-to-image", help="turn audio into a Riffusion spectrogram image")
    to_image.add_argument("audio", help="audio file (WAV, FLAC, OGG, MP3, ...)")
    to_image.add_argument("output", help="image to write (.png); a longer clip makes a wider image")
    to_image.add_argument("--stereo", action="store_true", help="keep two channels (G and B)")
    to_image.set_defaults(run=_audio_to_image)
    return parser


CONVERSIONS = ("image-to-audio", "audio-to-image")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _conversion_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except RiffstreamError as error:
        print(f"riffstream: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("riffstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
