"""The page in a real browser: Debian's Chromium, headless, driven by Playwright, against `riffstream serve`.

One station (tiny model, one clip per transition so a prompt arrives fast) and one page that a
person would use: it plays the stream, scrolls the spectrogram with what is heard, and takes a
prompt from the keyboard. Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.serving import serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PROMPT = "smooth jazz"

# Connects a Web Audio analyser to the page's <audio> (same origin, so it reads the real samples).
ANALYSER = """async () => {
  const audio = document.getElementById("audio");
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaElementSource(audio).connect(analyser);
  analyser.connect(context.destination);
  window.testAnalyser = analyser;
}"""
RMS = """() => {
  const samples = new Float32Array(window.testAnalyser.fftSize);
  window.testAnalyser.getFloatTimeDomainData(samples);
  return Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
}"""
CANVAS = "() => document.getElementById('spectrogram').toDataURL('image/png')"
# Brightness spread along the row at mid-height: a drawn spectrogram varies, an empty canvas does not.
CANVAS_SPREAD = """() => {
  const canvas = document.getElementById("spectrogram");
  const row = canvas.getContext("2d").getImageData(0, canvas.height >> 1, canvas.width, 1).data;
  let low = 255, high = 0;
  for (let i = 0; i < row.length; i += 4) {
    const v = row[i] + row[i + 1] + row[i + 2];
    low = Math.min(low, v); high = Math.max(high, v);
  }
  return high - low;
}"""


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    """Poll ``check()`` until it returns something truthy (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def station(tiny_exported, tmp_path_factory):
    """`riffstream serve "lofi hip hop" --seed 1 --clips-per-transition 1` on a free loopback port."""
    folder = tmp_path_factory.mktemp("browser")
    with serving(tiny_exported, folder, "--seed", "1", "--clips-per-transition", "1") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium (no browser download)."""
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install chromium; `make test` installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def problems() -> list[str]:
    """Page errors and console errors from every page the tests open."""
    return []


def open_page(browser, station, problems: list[str], width: int, height: int):
    """The station's page in a new tab of ``width`` x ``height``, its errors collected in ``problems``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.goto(f"{station.url}/")
    return page


@pytest.fixture(scope="module")
def page(browser, station, problems):
    """The page at desktop size, playing: Play pressed from the keyboard, an analyser on its audio."""
    page = open_page(browser, station, problems, 1280, 900)
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "play"
    page.keyboard.press("Enter")
    wait_until(lambda: page.evaluate("document.getElementById('audio').currentTime") > 0.3, 20, "the audio to start")
    page.evaluate(ANALYSER)
    yield page
    page.close()


def test_the_page_plays_the_stream_out_loud_and_its_clock_advances(page):
    audio_time = "document.getElementById('audio').currentTime"
    before, began = page.evaluate(audio_time), time.monotonic()
    readings = []
    for _ in range(15):
        readings.append(page.evaluate(RMS))
        time.sleep(0.1)
    after, elapsed = page.evaluate(audio_time), time.monotonic() - began
    assert max(readings) > 0.01, f"the analyser heard silence (RMS {max(readings):.5f})"
    assert after - before > 0.7 * elapsed, f"currentTime went from {before:.2f} to {after:.2f} in {elapsed:.1f} s"
    assert page.evaluate("document.getElementById('audio').paused") is False
    assert page.text_content("#play").strip() == "Pause"


def test_the_spectrogram_lines_up_with_what_is_heard_and_scrolls(page, station):
    wait_until(lambda: page.evaluate("window.riffstream.listenerStart !== null"), 10, "the listener event")
    listener_start = page.evaluate("window.riffstream.listenerStart")
    heard = page.evaluate("window.riffstream.playhead() - document.getElementById('audio').currentTime")
    assert heard == pytest.approx(listener_start, abs=1e-6)
    # What this page hears lies a little behind what the station has sent out.
    playhead, sent = page.evaluate("window.riffstream.playhead()"), station.status()["stream_time"]
    assert sent - 10 < playhead <= sent + 0.5, f"playhead {playhead:.2f} s, station clock {sent:.2f} s"
    wait_until(lambda: page.evaluate("window.riffstream.clipsDrawn") >= 2, 10, "clips drawn on the canvas")
    assert page.evaluate(CANVAS_SPREAD) > 30, "the spectrogram canvas looks empty"
    before_image = page.evaluate(CANVAS)
    clips = "window.riffstream.clips().map((clip) => clip.index)"
    before_clips = set(page.evaluate(clips))
    wait_until(lambda: set(page.evaluate(clips)) - before_clips, 15, "a new clip")
    assert page.evaluate(CANVAS) != before_image, "the spectrogram did not change as clips arrived"


def test_a_prompt_typed_in_the_page_reaches_the_generator_and_is_heard(page, station):
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type(PROMPT)
    page.keyboard.press("Enter")
    wait_until(lambda: "Queued" in page.text_content("#message"), 5, "the page to say it queued the prompt")

    def in_status() -> bool:
        status = station.status()
        return PROMPT in status["queued"] or PROMPT in (status["prompt_a"], status["prompt_b"])

    def carried() -> list[dict]:
        return [clip for clip in page.evaluate("window.riffstream.clips()") if clip["prompt_b"] == PROMPT]

    wait_until(lambda: in_status() or carried(), 15, "the station to list the prompt")
    clip = wait_until(carried, 20, "a clip event carrying the prompt")[0]
    assert clip["prompt_a"] == "lofi hip hop" and not clip["loop"]
    # The page says it is playing once this listener's clock reaches that clip.
    wait_until(lambda: page.text_content("#prompt-b") == PROMPT, 25, "the page to play the prompt")
    assert page.evaluate("window.riffstream.playhead()") >= clip["start"]
    wait_until(lambda: station.status()["prompt_b"] == PROMPT, 15, "the station's status to carry the prompt")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)


def test_pause_then_play_rejoins_the_stream_at_the_live_point(page):
    heard = page.evaluate("window.riffstream.playhead()")
    page.click("#play")
    assert page.evaluate("document.getElementById('audio').paused") is True
    assert page.evaluate("window.riffstream.listenerStart") is None
    time.sleep(3)
    page.click("#play")
    wait_until(lambda: page.evaluate("window.riffstream.listenerStart !== null"), 10, "the new listener event")
    start = page.evaluate("window.riffstream.listenerStart")
    wait_until(lambda: page.evaluate("document.getElementById('audio').currentTime") > 0.3, 10, "the audio to restart")
    # Three seconds went by unheard: a page replaying its buffer would pick up where it paused.
    assert start > heard + 2, f"rejoined at {start:.2f} s, paused at {heard:.2f} s: stale audio played"
    assert page.evaluate("document.getElementById('audio').currentTime") < 5


def test_the_page_fits_a_phone_screen(browser, station, problems):
    phone = open_page(browser, station, problems, 375, 812)
    try:
        wait_until(lambda: phone.evaluate("window.riffstream.clipsDrawn") >= 1, 15, "clips drawn on the phone page")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
        box = phone.locator("#spectrogram").bounding_box()
        assert box is not None and box["width"] > 300
        ARTIFACTS.mkdir(exist_ok=True)
        phone.screenshot(path=str(ARTIFACTS / "serve-page-375.png"), full_page=True)
    finally:
        phone.close()


def test_no_page_error_or_console_error_fires(page, problems):
    page.wait_for_timeout(500)
    assert problems == []
