"""The server's API in this process: FastAPI's TestClient against the app, on a stream of the tiny model.

Every request runs through the real app (middleware, validation, token, rate limit) and the real
Station and Stream; only the HTTP server and the socket are left out. ``tests/test_serve.py``
keeps the end-to-end cases that need them: listeners on real sockets, signals, the printed address.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from riffstream.model import ModelOptions, RiffusionModel
from riffstream.server.routes import create_app
from riffstream.server.serve import ServeOptions
from riffstream.server.station import Station
from riffstream.sinks.broadcast import Broadcast
from riffstream.stream import RealTimeClock, Stream, StreamOptions

TOKEN = "test-token-0123456789"
WIDTH = 64


@pytest.fixture(scope="module")
def model(tiny_exported):
    return RiffusionModel.load(ModelOptions(model="tiny", width=WIDTH, cache_dir=tiny_exported, precision="f32"),
                               progress=False)


def _client(model, **options) -> TestClient:
    stream_options = StreamOptions(prompts=("lofi",), seed=3, steps=1, clips_per_transition=1, max_ahead=2.0)
    broadcast = Broadcast(stream_options.params.sample_rate, stream_options.params.channels)
    stream = Stream(model, stream_options, [],
                    lambda ring: RealTimeClock(ring, stream_options.params.sample_rate, [broadcast]))
    station = Station(stream, stream.clock, broadcast, ServeOptions(**options), log=lambda *args: None)
    return TestClient(create_app(station))


@pytest.fixture(scope="module")
def station(model):
    """An open station: loopback, no token, a rate limit no test reaches."""
    with _client(model, control_calls=100_000) as client:
        yield client


@pytest.fixture(scope="module")
def guarded(model):
    """A station that needs a token for control calls and takes 5 of them per client per window."""
    with _client(model, token=TOKEN, control_calls=5) as client:
        yield client


@pytest.mark.parametrize("method, path, body, headers, code", [
    ("POST", "/api/prompt", {"prompt": "x" * 301}, None, 422),
    ("POST", "/api/prompt", {"prompt": "   "}, None, 422),
    ("POST", "/api/prompt", {"prompt": "a\x00b"}, None, 422),
    ("POST", "/api/prompt", {"prompt": "jazz", "extra": 1}, None, 422),
    ("POST", "/api/prompt", {"prompt": "jazz:0 + lofi"}, None, 422),
    ("POST", "/api/prompt", {"prompt": "jazz + "}, None, 422),
    ("POST", "/api/prompt", b"{not json", {"Content-Type": "application/json"}, 422),
    ("POST", "/api/prompt", b"x" * 20_000, {"Content-Type": "application/json"}, 413),
    ("POST", "/api/settings", {"steps": 0}, None, 422),
    ("POST", "/api/settings", {"seed": -1}, None, 422),
    ("POST", "/api/settings", {"clips_per_transition": 10**12}, None, 422),
    ("GET", "/stream.mp3?listener=../../etc", None, None, 422),
    ("GET", "/api/clips/-1.png", None, None, 422),
    ("GET", "/nothing-here", None, None, 404),
    ("DELETE", "/api/prompt", None, None, 405),
])
def test_bad_requests_get_a_4xx_with_one_line(station, method, path, body, headers, code):
    if isinstance(body, dict):
        response = station.request(method, path, json=body, headers=headers)
    else:
        response = station.request(method, path, content=body, headers=headers)
    assert response.status_code == code
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail


def test_a_body_without_a_length_is_refused(station):
    response = station.post("/api/prompt", content=iter([b'{"prompt": "jazz"}']),
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_a_posted_prompt_is_queued_and_listed_in_the_status(station):
    """(That it is then heard, and leaves the queue, is test_serve's: it takes the clock's real time.)"""
    response = station.post("/api/prompt", json={"prompt": "smooth jazz"})
    assert response.status_code == 202 and response.json() == {"queued": "smooth jazz"}
    status = station.get("/api/status").json()
    assert "smooth jazz" in status["queued"] and status["token_required"] is False
    assert status["settings"]["clips_per_transition"] == 1 and status["listeners"] == {"mp3": 0, "ogg": 0}


def test_settings_answer_with_what_now_applies(station):
    response = station.post("/api/settings", json={"seed": 77, "steps": 2, "negative_prompt": "noise"})
    assert response.status_code == 200
    settings = response.json()["settings"]
    assert settings["seed"] == 77 and settings["steps"] == 2 and settings["negative_prompt"] == "noise"
    assert station.get("/api/status").json()["settings"] == settings


def test_control_calls_need_the_token_and_status_does_not(guarded):
    prompt = {"prompt": "ambient"}
    missing = guarded.post("/api/prompt", json=prompt)
    assert missing.status_code == 401 and "token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert guarded.post("/api/prompt", json=prompt, headers={"Authorization": "Bearer wrong-token"}).status_code == 403
    assert guarded.post("/api/prompt", json=prompt, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202
    status = guarded.get("/api/status")
    assert status.status_code == 200 and status.json()["token_required"] is True


def test_control_calls_are_rate_limited_per_client(guarded):
    codes = [guarded.post("/api/settings", json={"steps": 2}, headers={"Authorization": f"Bearer {TOKEN}"})
             for _ in range(8)]
    assert [response.status_code for response in codes].count(429) >= 3
    limited = next(response for response in codes if response.status_code == 429)
    assert "too many control calls: at most 5 every" in limited.json()["detail"]


def test_the_schema_lists_every_route(station):
    paths = set(station.get("/openapi.json").json()["paths"])
    assert {"/stream.mp3", "/stream.ogg", "/api/status", "/api/events", "/api/clips/{index}.png", "/api/prompt",
            "/api/settings"} <= paths
