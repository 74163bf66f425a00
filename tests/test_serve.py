"""`riffstream serve` end to end over loopback: listeners on real sockets, events, limits, tokens and signals
(real server, tiny model). The API's validation, token and rate limit are checked in process in test_api.py."""

import concurrent.futures
import http.client
import io
import json
import signal
import socket
import time

import av
import pytest
import soundfile

from riffstream.sinks.broadcast import split_ogg_pages
from tests.running import assert_one_line_error, run_cli
from tests.serving import FAST_SERVE, read_stream, serving

pytestmark = pytest.mark.slow

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def station(tiny_exported, tmp_path_factory):
    """An open station (loopback, no token), one clip per transition so prompts arrive fast."""
    with serving(tiny_exported, tmp_path_factory.mktemp("serve"), "--clips-per-transition", "1",
                 "--seed", "3") as server:
        yield server


@pytest.fixture(scope="module")
def guarded(tiny_exported, tmp_path_factory):
    """A station that needs a token for control calls, and takes at most three listeners."""
    with serving(tiny_exported, tmp_path_factory.mktemp("guarded"), "--token", TOKEN, "--max-listeners", "3") as server:
        yield server


def events(port: int, until, seconds: float, query: str = "") -> list[tuple[str, dict]]:
    """Server-sent events read until ``until(events)`` holds or ``seconds`` pass."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 5)
    connection.request("GET", f"/api/events{query}")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    got: list[tuple[str, dict]] = []
    name = None
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not until(got):
            line = response.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                got.append((name, json.loads(line[6:])))
    finally:
        connection.close()
    return got


def mp3_frames(data: bytes) -> list[bytes]:
    """The whole MP3 frames of ``data``, as FFmpeg's MPEG audio parser cuts them (a cut-off last one left out)."""
    return [bytes(packet) for packet in av.CodecContext.create("mp3", "r").parse(data)]


def mp3_seconds(data: bytes) -> float:
    """Audio in the whole MP3 frames of ``data``."""
    return len(mp3_frames(data)) * 1152 / 44100


def starts_on_a_frame(data: bytes) -> bool:
    """Whether ``data`` is whole MP3 frames from its first byte on. FFmpeg's parser hands bytes before the
    first frame header over as part of the first packet, so each packet must be exactly one 128-kbit/s frame."""
    frames = mp3_frames(data)
    return bool(frames) and all(frame[:2] == b"\xff\xfb" and len(frame) in (417, 418) for frame in frames)


def test_listeners_get_the_same_bytes_from_their_join_points(station):
    def listen(delay: float) -> bytes:
        time.sleep(delay)
        return read_stream(station.port, "/stream.mp3", 3.0)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(listen, [0.0, 0.0, 0.4, 0.8, 1.2, 1.6]))
    first = streams[0]
    for other in streams[1:]:
        assert starts_on_a_frame(other), "a listener's stream does not start on a whole MP3 frame"
        offset = first.find(other[:2048])
        assert offset >= 0, "a later listener's stream is not part of the first one's"
        overlap = min(len(first) - offset, len(other))
        assert overlap > 16_000 and first[offset : offset + overlap] == other[:overlap]
    for data in streams:
        samples, rate = soundfile.read(io.BytesIO(data))
        assert rate == 44100 and len(samples) > 2 * rate


def test_a_late_listener_gets_a_burst_of_whole_frames_at_once(station):
    while station.status()["stream_time"] < 3.0:  # a burst needs that much played
        time.sleep(0.2)
    connection = http.client.HTTPConnection("127.0.0.1", station.port, timeout=10)
    began = time.monotonic()
    connection.request("GET", "/stream.mp3")
    response = connection.getresponse()
    assert response.getheader("content-type") == "audio/mpeg"
    data = b""
    while mp3_seconds(data) < 1.0:
        data += response.read1(65536)
    waited = time.monotonic() - began
    connection.close()
    assert waited < 1.0, f"a second of audio took {waited:.2f} s to arrive"
    assert starts_on_a_frame(data), "the stream does not start on a whole MP3 frame"


def test_an_ogg_listener_gets_the_opus_headers_then_whole_pages(station):
    data = read_stream(station.port, "/stream.ogg", 2.5)
    pages, _ = split_ogg_pages(data)
    assert [page[28:36] for page in pages[:2]] == [b"OpusHead", b"OpusTags"]
    assert len(pages) > 10
    samples, rate = soundfile.read(io.BytesIO(b"".join(pages)))
    assert rate == 48000 and len(samples) > 1.5 * rate


def test_a_posted_prompt_reaches_the_clips_planned_after_it(station):
    code, body = station.request("POST", "/api/prompt", {"prompt": "smooth jazz"})
    assert (code, body) == (202, {"queued": "smooth jazz"})
    got = events(station.port, lambda got: any(n == "clip" and d["prompt_b"] == "smooth jazz" for n, d in got), 60)
    carrying = [d for n, d in got if n == "clip" and d["prompt_b"] == "smooth jazz"]
    assert carrying, f"no clip moved to the posted prompt: {got[-3:]}"
    assert carrying[0]["png"] == f"/api/clips/{carrying[0]['index']}.png"


def test_a_posted_prompt_is_heard_within_seconds_and_stays_in_the_status_until_then(station):
    """From the post until a clip carrying it plays, the status always shows the prompt: queued (with
    the seconds until it is heard, once its first clip is made), then playing. The stream turns at once
    and takes back what the ring held, so on the tiny model that is seconds, not the ring's look-ahead."""
    prompt = "slow dub"
    sent = time.monotonic()
    assert station.request("POST", "/api/prompt", {"prompt": prompt})[0] == 202
    countdown = []
    while (status := station.status())["prompt_b"] != prompt:
        assert prompt in status["queued"], status
        assert time.monotonic() - sent < 90, "the prompt was never heard"
        if status["heard_in_s"] is not None:
            countdown.append(status["heard_in_s"])
        time.sleep(0.05)
    heard_after = time.monotonic() - sent
    assert prompt not in station.status()["queued"]
    assert heard_after <= 6.0, f"heard {heard_after:.1f} s after the post"
    assert countdown and countdown[-1] <= countdown[0], countdown


def test_a_posted_blend_reaches_the_clips_as_one_waypoint(station):
    code, body = station.request("POST", "/api/prompt", {"prompt": "smooth jazz:2 + techno:1"})
    assert (code, body) == (202, {"queued": "smooth jazz:2 + techno:1"})
    got = events(station.port, lambda got: any(n == "clip" and d["prompt_b"] == "smooth jazz:2 + techno:1"
                                                for n, d in got), 60)
    assert any(n == "clip" and d["prompt_b"] == "smooth jazz:2 + techno:1" for n, d in got)


def test_settings_apply_to_the_clips_planned_after_them(station):
    code, body = station.request("POST", "/api/settings", {"seed": 5000, "steps": 1})
    assert code == 200 and body["settings"]["seed"] == 5000 and body["settings"]["steps"] == 1
    got = events(station.port, lambda got: any(n == "clip" and d["seed_b"] >= 5000 for n, d in got), 60)
    assert any(n == "clip" and d["seed_b"] >= 5000 for n, d in got)
    assert station.status()["settings"]["steps"] == 1


def test_events_tell_a_listener_where_its_audio_starts(station):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        listening = pool.submit(read_stream, station.port, "/stream.mp3?listener=page-1", 3.0)
        got = events(station.port, lambda got: any(n == "listener" for n, _ in got), 10, "?listener=page-1")
        listening.result()
    names = [name for name, _ in got]
    assert names[0] == "status" and "clip" in names
    listener = next(data for name, data in got if name == "listener")
    assert listener["id"] == "page-1" and listener["format"] == "mp3"
    assert 0 <= listener["start"] <= got[0][1]["stream_time"] + 3


def test_clip_spectrograms_are_served_while_kept(station):
    clip = station.status()["clip"]
    code, png = station.request("GET", f"/api/clips/{clip}.png")
    assert code == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(io.BytesIO(png)).height == 512
    code, body = station.request("GET", "/api/clips/999999.png")
    assert code == 404 and "not kept" in body["detail"]


def test_a_stalled_listener_is_dropped_and_never_slows_the_others(station):
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", station.port))
    stalled.sendall(b"GET /stream.mp3 HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        began = time.monotonic()
        data = read_stream(station.port, "/stream.mp3", 14.0)
        elapsed = time.monotonic() - began
        # The burst, then real time: the stalled listener held nobody back.
        assert mp3_seconds(data) > elapsed + 1.0
        deadline = time.monotonic() + 15
        while station.status()["listeners"]["mp3"] > 0:
            assert time.monotonic() < deadline, "the stalled listener was never dropped"
            time.sleep(0.5)
    finally:
        stalled.close()


def test_a_port_in_use_ends_in_one_line_before_any_model_loads(station, tiny_exported, capsys, no_model_load):
    code, stderr = run_cli(capsys, "serve", "lofi", "--port", station.port, *FAST_SERVE, "--cache-dir", tiny_exported)
    assert_one_line_error(code, stderr, f"cannot serve on 127.0.0.1:{station.port}: the port is in use (is another "
                                        "riffstream serving?)")


def test_control_calls_need_the_token_and_listening_does_not(guarded):
    prompt = {"prompt": "ambient"}
    code, body = guarded.request("POST", "/api/prompt", prompt)
    assert code == 401 and "token" in body["detail"]
    code, body = guarded.request("POST", "/api/prompt", prompt, {"Authorization": "Bearer wrong-token"})
    assert code == 403
    code, body = guarded.request("POST", "/api/prompt", prompt, {"Authorization": f"Bearer {TOKEN}"})
    assert code == 202
    assert guarded.status()["token_required"] is True
    assert len(read_stream(guarded.port, "/stream.mp3", 1.0)) > 1000
    # The printed page address carries the token, so the page can make control calls.
    assert f"serving on http://127.0.0.1:{guarded.port}/?token={TOKEN}  (control calls need this token" in guarded.stderr()


def wait_for_no_listeners(server) -> None:
    deadline = time.monotonic() + 10
    while sum(server.status()["listeners"].values()):
        assert time.monotonic() < deadline, "listeners who left are still counted"
        time.sleep(0.1)


def test_listeners_over_the_maximum_get_429(guarded):
    wait_for_no_listeners(guarded)
    connections = []
    try:
        for _ in range(3):
            connection = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=10)
            connection.request("GET", "/stream.mp3")
            assert connection.getresponse().status == 200
            connections.append(connection)
        code, body = guarded.request("GET", "/stream.ogg")
        assert code == 429 and "maximum of 3 listeners" in body["detail"]
    finally:
        for connection in connections:
            connection.close()
    wait_for_no_listeners(guarded)


def test_sigterm_stops_serving_and_keeps_the_recording_of_what_was_played(tiny_exported, tmp_path):
    out = tmp_path / "recorded.wav"
    with serving(tiny_exported, tmp_path, "--out", str(out)) as server:
        assert len(read_stream(server.port, "/stream.mp3", 1.0)) > 1000
        status = server.status()
        played, silence = status["stream_time"], status["silence_s"]
        assert 0 <= silence <= played, status
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(20) == 143
        assert "kept" in server.stderr() and "Traceback" not in server.stderr()
    samples, rate = soundfile.read(out)
    # What the station played until it stopped: not the seconds joined ahead of its clock, nor the
    # silence a slow start of play filled in.
    seconds = len(samples) / rate
    assert rate == 44100 and played - silence - 0.2 <= seconds <= played + 1.5, (played, silence, seconds)
    assert not list(tmp_path.glob(".*.partial"))
