"""`riffstream image-to-audio` and `audio-to-image`, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from riffstream.spectrogram import ExifTag
from tests.fidelity import spectral_convergence_db
from tests.running import assert_one_line_error, run_cli


def riffstream(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "riffstream", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture
def refused(capsys):
    """``refused(fragment, *args)``: ``riffstream ARGS``, run in this process, fails in one line holding ``fragment``."""
    def check(fragment: str, *args: str | Path) -> None:
        assert_one_line_error(*run_cli(capsys, *args), fragment)

    return check


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def block_levels_db(audio: np.ndarray, block: int) -> np.ndarray:
    blocks = audio[: audio.size // block * block].reshape(-1, block)
    return 10 * np.log10(np.mean(np.square(blocks, dtype=np.float64), axis=1) + 1e-12)



@pytest.fixture()
def song(tmp_path: Path) -> Path:
    rate = 22050
    t = np.arange(int(2.5 * rate)) / rate
    chord = sum(np.sin(2 * np.pi * f * t) * np.exp(-((t % 0.5) * 6)) for f in (220.0, 277.2, 329.6)) / 4
    path = tmp_path / "song.wav"
    soundfile.write(path, chord, rate)
    return path


@pytest.mark.slow
def test_audio_to_image_and_back_round_trips_through_files(tmp_path: Path, song: Path) -> None:
    image_path, audio_path = tmp_path / "song.png", tmp_path / "back.flac"
    made = riffstream("audio-to-image", song, image_path)
    assert made.returncode == 0, made.stderr
    image = Image.open(image_path)
    assert image.size == (251, 512) and image.getexif()[ExifTag.SAMPLE_RATE] == 44100
    back = riffstream("image-to-audio", image_path, audio_path)
    assert back.returncode == 0, back.stderr
    audio, rate = soundfile.read(audio_path)
    assert rate == 44100 and audio.shape == (251 * 441,)
    assert 0.05 < np.max(np.abs(audio)) <= 10 ** (-1 / 20) + 1e-4
    assert leftovers(tmp_path) == ["back.flac", "song.png", "song.wav"]


def test_missing_image_is_one_line_error(tmp_path: Path, refused) -> None:
    refused("no such image", "image-to-audio", tmp_path / "nope.png", tmp_path / "out.wav")
    assert leftovers(tmp_path) == []


def test_non_image_file_is_one_line_error(tmp_path: Path, refused) -> None:
    (tmp_path / "notes.png").write_text("these are not pixels")
    refused("not an image", "image-to-audio", tmp_path / "notes.png", tmp_path / "out.wav")
    assert leftovers(tmp_path) == ["notes.png"]


def test_corrupt_image_is_one_line_error(tmp_path: Path, refused) -> None:
    Image.new("RGB", (512, 512), (90, 90, 90)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    refused("corrupt", "image-to-audio", tmp_path / "cut.png", tmp_path / "out.wav")
    assert "out.wav" not in leftovers(tmp_path)


def test_image_of_wrong_height_is_one_line_error(tmp_path: Path, refused) -> None:
    Image.new("RGB", (512, 256), (90, 90, 90)).save(tmp_path / "short.png")
    refused("256 pixels high", "image-to-audio", tmp_path / "short.png", tmp_path / "out.wav")
    assert "out.wav" not in leftovers(tmp_path)


def test_unwritable_output_is_one_line_error(tmp_path: Path, song: Path, refused) -> None:
    Image.new("RGB", (64, 512), (90, 90, 90)).save(tmp_path / "clip.png")
    refused("does not exist", "image-to-audio", tmp_path / "clip.png", tmp_path / "missing" / "out.wav")
    (tmp_path / "folder.wav").mkdir()
    refused("directory", "image-to-audio", tmp_path / "clip.png", tmp_path / "folder.wav")
    refused(".mp4", "image-to-audio", tmp_path / "clip.png", tmp_path / "out.mp4")
    refused("does not exist", "audio-to-image", song, tmp_path / "missing" / "out.png")
    assert leftovers(tmp_path) == ["clip.png", "folder.wav", "song.wav"]


def test_empty_and_silent_audio_are_one_line_errors(tmp_path: Path, refused) -> None:
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 44100)
    soundfile.write(tmp_path / "silent.wav", np.zeros(44100), 44100)
    refused("no audio", "audio-to-image", tmp_path / "empty.wav", tmp_path / "a.png")
    refused("silent", "audio-to-image", tmp_path / "silent.wav", tmp_path / "b.png")
    refused("no such audio", "audio-to-image", tmp_path / "missing.wav", tmp_path / "c.png")
    (tmp_path / "text.wav").write_text("not audio")
    refused("cannot read", "audio-to-image", tmp_path / "text.wav", tmp_path / "d.png")
    assert leftovers(tmp_path) == ["empty.wav", "silent.wav", "text.wav"]


def test_several_images_are_stitched_into_one_file_as_the_stream_stitches(tmp_path: Path, capsys) -> None:
    from riffstream.spectrogram import read_image
    from riffstream.stitch import stitch_images

    rate = 44100
    t = np.arange(int(3.0 * rate)) / rate
    for index, freq in enumerate((220.0, 330.0, 440.0)):
        note = 0.05 * np.exp(-t / 1.5) * (np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t))
        soundfile.write(tmp_path / f"part{index}.wav", note, rate)
        assert run_cli(capsys, "audio-to-image", tmp_path / f"part{index}.wav", tmp_path / f"part{index}.png")[0] == 0
    images = [tmp_path / f"part{index}.png" for index in range(3)]
    code, stderr = run_cli(capsys, "image-to-audio", *images, tmp_path / "joined.wav", "--crossfade", "0.5")
    assert code == 0, stderr
    joined, _ = soundfile.read(tmp_path / "joined.wav", dtype="float32")
    expected = stitch_images([read_image(path) for path in images], crossfade=0.5)[0]
    assert joined.shape == (3 * (301 - 50) * 441 + 50 * 441,) == expected.shape
    # Not sample for sample: PGHI's integration order breaks ties between equal 8-bit pixels
    # by float rounding, which MKL's FFT and matmul need not repeat from one process to the
    # next (a CI machine's file differed by up to 9e-4). The level contour and the magnitude
    # spectrum tell the stitching apart: the loudness follower off moves a block 21 dB, a
    # -16 LUFS target 2 dB, 4 iterations instead of 12 leave the spectra -19 dB apart.
    assert np.abs(block_levels_db(joined, rate // 4) - block_levels_db(expected, rate // 4)).max() < 1.0
    assert spectral_convergence_db(expected, joined) < -22.0
