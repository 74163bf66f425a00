"""Real recorded music for fidelity tests and benchmarks, fetched at run time.

No audio is committed. The corpus is music shipped in Debian packages of several kinds
(orchestral, electronic, ambient, acoustic and band music), downloaded with apt and
cached on disk. Each track names its package, its path inside the package and its kind.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile

CACHE = Path(os.environ.get("RIFFSTREAM_TEST_MUSIC", Path.home() / ".cache" / "riffstream-test-music"))


@dataclass(frozen=True)
class Track:
    """One recording inside a Debian package."""

    package: str
    path: str  # inside the package's data
    kind: str

    @property
    def name(self) -> str:
        return Path(self.path).stem.replace(" ", "_")

    @property
    def cached(self) -> Path:
        return CACHE / self.package / Path(self.path).name


_ASC = "usr/share/games/asc/music"
_LINCITY = "usr/share/games/lincity-ng/music/default"
_HEX = "usr/share/games/hex-a-hop/hex-a-hop"
_TORUS = "usr/share/games/torus-trooper/sounds/musics"
_XMOTO = "usr/share/games/xmoto/Textures/Musics"

#: The benchmark corpus: 18 recordings from 6 packages.
CORPUS = (
    # Advanced Strategic Command's soundtrack (GPL): orchestral.
    *(Track("asc-music", f"{_ASC}/{name}.mp3", "orchestral") for name in ("time_to_strike", "frontiers", "machine_wars")),
    # LinCity-NG (GPL): a slow blues, a calm piece and an electronic one.
    Track("lincity-ng-data", f"{_LINCITY}/02 - Robert van Herk - City Blues.ogg", "acoustic"),
    Track("lincity-ng-data", f"{_LINCITY}/03 - Robert van Herk - Architectural Contemplations.ogg", "ambient"),
    Track("lincity-ng-data", f"{_LINCITY}/01 - pronobozo - lincity.ogg", "electronic"),
    # Hex-a-hop (CC-BY-SA): gentle puzzle-game music.
    *(Track("hex-a-hop-data", f"{_HEX}/{name}.ogg", "ambient") for name in ("music-game", "music-game-1", "music-ending")),
    # Torus Trooper: fast electronic.
    *(Track("torus-trooper-data", f"{_TORUS}/tt{n}.ogg", "electronic") for n in (1, 2, 3, 4)),
    # X-Moto: band and electronic tracks.
    *(Track("xmoto-data", f"{_XMOTO}/{name}.ogg", "band")
      for name in ("batcave", "MadeiraStew", "foxrun", "ridealong")),
    # Funny Boat: one long track.
    Track("funnyboat", "usr/share/games/funnyboat/data/JDruid-Trip_on_the_Funny_Boat.ogg", "band"),
)
#: The three orchestral tracks the older tests use, by name.
TRACKS = tuple(track.name for track in CORPUS[:3])


class MusicUnavailable(RuntimeError):
    """The music package could not be fetched (no apt, no registry)."""


def find_track(track: str | Track) -> Track:
    """A corpus track by name (or the track itself)."""
    if isinstance(track, Track):
        return track
    for candidate in CORPUS:
        if candidate.name == track:
            return candidate
    raise KeyError(f"no track named {track!r} in the corpus")


def track_path(track: str | Track = TRACKS[0]) -> Path:
    """Path of a cached real-music track, downloading its package on first use."""
    track = find_track(track)
    if track.cached.exists():
        return track.cached
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise MusicUnavailable("apt-get and dpkg-deb are needed to fetch the test music")
    track.cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        download = ["apt-get", "download", "-q", track.package]
        if subprocess.run(download, cwd=work, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            result = subprocess.run(download, cwd=work, capture_output=True, text=True)
            if result.returncode != 0:
                raise MusicUnavailable(f"apt-get download {track.package} failed: {result.stderr.strip()}")
        deb = next(Path(work).glob("*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), work], check=True)
        for sibling in CORPUS:
            if sibling.package == track.package:
                partial = sibling.cached.with_suffix(".part")
                shutil.copyfile(Path(work) / sibling.path, partial)
                partial.replace(sibling.cached)
    return track.cached


def track_seconds(track: str | Track) -> float:
    """Length of a corpus track in seconds."""
    return soundfile.info(str(track_path(track))).duration


def real_music(seconds: float, offset: float = 30.0, sample_rate: int = 44100,
               track: str | Track = TRACKS[0]) -> np.ndarray:
    """Mono float64 excerpt of a real track at ``sample_rate``, ``seconds`` long from ``offset``."""
    with soundfile.SoundFile(track_path(track)) as source:
        rate = source.samplerate
        source.seek(int(offset * rate))
        samples = source.read(int(seconds * rate) + 64, dtype="float64", always_2d=True).mean(axis=1)
    if rate != sample_rate:
        # asc-music is 22.05 kHz: it holds everything below 11 kHz, above the spectrogram's 10 kHz.
        divisor = math.gcd(rate, sample_rate)
        samples = scipy.signal.resample_poly(samples, sample_rate // divisor, rate // divisor)
    return samples[: int(round(seconds * sample_rate))]


def corpus_excerpts(seconds: float, per_track: int, sample_rate: int = 44100):
    """``per_track`` excerpts of every corpus track, spread evenly over its middle.

    Yields (label, track, excerpt); the label names the package, the track and the offset.
    """
    for track in CORPUS:
        length = track_seconds(track)
        usable = max(length - 20.0 - seconds, 0.0)
        for index in range(per_track):
            offset = 10.0 + usable * (index + 0.5) / per_track
            label = f"{track.package}:{track.name}@{offset:.0f}s"
            yield label, track, real_music(seconds, offset, sample_rate, track)


def music_or_skip(seconds: float, offset: float, track: str | Track = TRACKS[0]) -> np.ndarray:
    """``real_music`` for tests: skipped where the music cannot be fetched, but never in CI."""
    import pytest

    try:
        return real_music(seconds, offset, track=track)
    except MusicUnavailable as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))


def windows_as_images(music: np.ndarray, params, clips: int, overlap: int, width: int = 512,
                      level: bool = True) -> list:
    """``width``-column images of overlapping windows of ``music``, as the stream cuts its
    clips: consecutive windows share ``overlap`` columns. Each image keeps its own EXIF
    (its max value sets its loudness), or with ``level=False`` carries none, as a
    generated clip has no true level either."""
    from riffstream.spectrogram import audio_to_image

    step = (width - overlap) * params.hop_length
    images = []
    for index in range(clips):
        window = music[index * step : index * step + width * params.hop_length]
        full = audio_to_image(window, params.sample_rate, params)
        image = full.crop((0, 0, width, full.height))
        if level:
            image.getexif().update(full.getexif())
        images.append(image)
    return images
