"""Real recorded music for fidelity tests and benchmarks, fetched at run time.

No audio is committed: the music comes from Debian's ``asc-music`` package (soundtrack
of Advanced Strategic Command, GPL), downloaded with apt and cached on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import math

import numpy as np
import scipy.signal
import soundfile

PACKAGE = "asc-music"
TRACKS = ("time_to_strike", "frontiers", "machine_wars")
MUSIC_DIR = "usr/share/games/asc/music"
CACHE = Path(os.environ.get("RIFFSTREAM_TEST_MUSIC", Path.home() / ".cache" / "riffstream-test-music"))


class MusicUnavailable(RuntimeError):
    """The music package could not be fetched (no apt, no registry)."""


def track_path(name: str = TRACKS[0]) -> Path:
    """Path of a cached real-music track, downloading the package on first use."""
    target = CACHE / f"{name}.mp3"
    if target.exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise MusicUnavailable("apt-get and dpkg-deb are needed to fetch the test music")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        download = ["apt-get", "download", "-q", PACKAGE]
        if subprocess.run(download, cwd=work, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            result = subprocess.run(download, cwd=work, capture_output=True, text=True)
            if result.returncode != 0:
                raise MusicUnavailable(f"apt-get download {PACKAGE} failed: {result.stderr.strip()}")
        deb = next(Path(work).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), work], check=True)
        for track in TRACKS:
            partial = CACHE / f"{track}.part"
            shutil.copyfile(Path(work) / MUSIC_DIR / f"{track}.mp3", partial)
            partial.replace(CACHE / f"{track}.mp3")
    return target


def real_music(seconds: float, offset: float = 30.0, sample_rate: int = 44100, track: str = TRACKS[0]) -> np.ndarray:
    """Mono float64 excerpt of a real track at ``sample_rate``, ``seconds`` long from ``offset``."""
    with soundfile.SoundFile(track_path(track)) as source:
        rate = source.samplerate
        source.seek(int(offset * rate))
        samples = source.read(int(seconds * rate) + 64, dtype="float64", always_2d=True).mean(axis=1)
    if rate != sample_rate:
        # The track is 22.05 kHz: it holds everything below 11 kHz, above the spectrogram's 10 kHz.
        divisor = math.gcd(rate, sample_rate)
        samples = scipy.signal.resample_poly(samples, sample_rate // divisor, rate // divisor)
    return samples[: int(round(seconds * sample_rate))]


def music_or_skip(seconds: float, offset: float, track: str = TRACKS[0]) -> np.ndarray:
    """``real_music`` for tests: skipped where the music cannot be fetched, but never in CI."""
    import pytest

    try:
        return real_music(seconds, offset, track=track)
    except MusicUnavailable as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))


def windows_as_images(music: np.ndarray, params, clips: int, overlap: int, width: int = 512) -> list:
    """``width``-column images of overlapping windows of ``music``, as the stream cuts its
    clips: consecutive windows share ``overlap`` columns, and each image keeps its own EXIF
    (its max value sets its loudness)."""
    from riffstream.spectrogram import audio_to_image

    step = (width - overlap) * params.hop_length
    images = []
    for index in range(clips):
        window = music[index * step : index * step + width * params.hop_length]
        full = audio_to_image(window, params.sample_rate, params)
        image = full.crop((0, 0, width, full.height))
        image.getexif().update(full.getexif())
        images.append(image)
    return images
