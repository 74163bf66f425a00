"""Audio to Riffusion spectrogram images and back, with riffstream's Python API.

Usage: python examples/round_trip.py IN_AUDIO OUT_AUDIO

The input is cut into 5.12-s windows that overlap by riffstream's crossfade, as the
stream's clips do; each becomes a 512-column image, and the images are stitched back
into one file exactly as the live stream stitches generated clips.
"""

import sys

from riffstream import SpectrogramParams, audio_to_image
from riffstream.sinks import read_audio, write_audio
from riffstream.stitch import DEFAULT_CROSSFADE, overlap_frames, stitch_images


def main(source: str, target: str) -> None:
    params = SpectrogramParams()
    samples, rate = read_audio(source)
    image = audio_to_image(samples, rate, params)  # one wide image of the whole input
    width, overlap = 512, overlap_frames(params, DEFAULT_CROSSFADE)
    clips = []
    for start in range(0, image.width - width + 1, width - overlap):
        clip = image.crop((start, 0, start + width, image.height))
        clip.getexif().update(image.getexif())  # keep the parameters and loudness scale
        clips.append(clip)
    audio = stitch_images(clips, params)
    write_audio(target, audio, params.sample_rate)
    print(f"{len(clips)} clips, {audio.shape[-1] / params.sample_rate:.2f} s written to {target}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
