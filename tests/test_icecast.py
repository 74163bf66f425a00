"""Pushing to a real Icecast 2 (Debian's icecast2 on loopback) as a source."""

import asyncio
import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile

from riffstream.errors import RiffstreamError
from riffstream.server.icecast import IcecastRejected, check_source, parse_icecast_url, push, run_source
from riffstream.sinks.broadcast import Mp3Encoder
from tests.icecast_server import SOURCE_PASSWORD, icecast
from tests.running import assert_one_line_error, run_cli
from tests.serving import FAST_SERVE, serving


@pytest.fixture(scope="module")
def server():
    with icecast() as running:
        yield running


def tone_mp3(seconds: float) -> list[bytes]:
    """A 440 Hz tone as MP3, in 0.1-s chunks of whole frames."""
    encoder = Mp3Encoder(44100, 1)
    t = np.arange(round(seconds * 44100)) / 44100
    audio = 0.3 * np.sin(2 * np.pi * 440 * t)[None, :]
    chunks = [c.data for start in range(0, audio.shape[1], 4410) for c in encoder.encode(audio[:, start:start + 4410])]
    return chunks + [c.data for c in encoder.flush()]


async def paced(chunks: list[bytes], stop: threading.Event | None = None):
    for chunk in chunks:
        if stop is not None and stop.is_set():
            return
        yield chunk
        await asyncio.sleep(0.1)  # about real time


def dominant_frequency(data: bytes) -> float:
    samples, rate = soundfile.read(io.BytesIO(data))
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * rate / len(mono)), len(mono) / rate


@pytest.mark.slow
def test_a_pushed_stream_reaches_icecast_listeners_as_valid_audio(server):
    target = parse_icecast_url(server.url("/tone.mp3"))
    pushing = threading.Thread(target=asyncio.run, args=(push(target, paced(tone_mp3(6.0)), "audio/mpeg"),))
    pushing.start()
    deadline = time.monotonic() + 5
    while not server.mounted("/tone.mp3"):
        assert time.monotonic() < deadline, "the source never appeared on icecast"
        time.sleep(0.05)
    heard = server.listen("/tone.mp3", 3.0)
    pushing.join(15)
    frequency, seconds = dominant_frequency(heard)
    assert seconds > 1.0 and abs(frequency - 440) < 3


@pytest.mark.slow
def test_a_wrong_password_is_refused_in_one_line_without_the_password(server):
    target = parse_icecast_url(server.url("/x.mp3", password="not-the-password"))
    with pytest.raises(IcecastRejected) as refused:
        asyncio.run(check_source(target, "audio/mpeg"))
    message = str(refused.value)
    assert "401" in message and "not-the-password" not in message and "\n" not in message
    asyncio.run(check_source(parse_icecast_url(server.url("/x.mp3")), "audio/mpeg"))


@pytest.mark.slow
def test_the_source_reconnects_after_icecast_drops_it(server):
    target = parse_icecast_url(server.url("/again.mp3"))
    chunks = tone_mp3(30.0)
    lines: list[str] = []

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(run_source(target, lambda: paced(chunks), "audio/mpeg", lines.append, stop))
        await asyncio.sleep(1.5)
        await asyncio.to_thread(server.kill_source, "/again.mp3")
        deadline = time.monotonic() + 10
        while sum("streaming to" in line for line in lines) < 2:
            assert time.monotonic() < deadline, lines
            await asyncio.sleep(0.1)
        stop.set()
        task.cancel()

    asyncio.run(main())
    assert any("lost 127.0.0.1" in line and "retrying in 1 s" in line for line in lines), lines
    assert not any(SOURCE_PASSWORD in line for line in lines)


@pytest.mark.parametrize("url, target", [
    ("icecast://source:pw@radio.example:8001/riff.mp3", ("radio.example", 8001, "/riff.mp3", "source", "pw")),
    ("icecast://pw@127.0.0.1/live.ogg", ("127.0.0.1", 8000, "/live.ogg", "source", "pw")),
    ("http://dj:p%40ss@[::1]:9000/a/b.mp3", ("::1", 9000, "/a/b.mp3", "dj", "p@ss")),
])
def test_icecast_addresses_parse(url, target):
    parsed = parse_icecast_url(url)
    assert (parsed.host, parsed.port, parsed.mount, parsed.user, parsed.password) == target
    assert parsed.password not in parsed.redacted()


@pytest.mark.parametrize("url", [
    "", "radio.example:8000/riff.mp3", "ftp://source:pw@host/m", "icecast://host:8000/riff.mp3",
    "icecast://source:pw@host:99999/riff.mp3", "icecast://source:pw@host:8000/", "icecast://source:pw@host:8000",
    "icecast://source:pw@host/ bad", "icecast://source:@host/riff.mp3", "icecast://source:pw@/riff.mp3",
])
def test_unusable_icecast_addresses_get_one_line_without_the_password(url):
    with pytest.raises(RiffstreamError) as error:
        parse_icecast_url(url)
    assert "\n" not in str(error.value) and ":pw@" not in str(error.value)


@pytest.mark.slow
def test_serve_pushes_its_stream_to_icecast(server, tiny_exported, tmp_path):
    with serving(tiny_exported, tmp_path, "--icecast", server.url("/riffstream.mp3")) as station:
        deadline = time.monotonic() + 20
        while not server.mounted("/riffstream.mp3"):
            assert time.monotonic() < deadline, station.stderr()
            time.sleep(0.1)
        heard = server.listen("/riffstream.mp3", 3.0)
        samples, rate = soundfile.read(io.BytesIO(heard))
        assert rate == 44100 and len(samples) > rate and np.abs(samples).max() > 0.01
        assert "icecast: streaming to http://127.0.0.1" in station.stderr()


@pytest.mark.slow
def test_serve_with_a_refused_icecast_password_ends_in_one_line(server, tiny_exported):
    result = subprocess.run([sys.executable, "-m", "riffstream", "serve", "lofi", *FAST_SERVE, "--cache-dir",
                             str(tiny_exported), "--icecast", server.url("/m.mp3", password="wrong-one")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"riffstream: error: icecast at 127.0.0.1:{server.port} refused the source password for /m.mp3 (401)"]


def test_serve_with_a_bad_icecast_address_ends_in_one_line(capsys, no_model_load):
    assert_one_line_error(*run_cli(capsys, "serve", "--icecast", "ftp://x"), "not an Icecast address")
