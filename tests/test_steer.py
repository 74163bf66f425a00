"""Steering heard within seconds: a turn from where the stream is, audio not yet heard taken back,
the seam into the new path, and what a file of a steered live session holds."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import soundfile

from riffstream.planner import MAX_TURN_DEPTH, Clip, PromptJourney, blend_embedding, clip_noise, lerp, point_of
from riffstream.sinks import AudioFileWriter
from riffstream.stream import RealTimeClock, RingBuffer, Stream, StreamOptions
from riffstream.stream.dispatcher import FIRST_STEER_SCALE, STEER_MARGIN
from riffstream.stream.steering import Steering
from riffstream.timeline import TimelineJourney, parse_timeline

RATE = 44100
WIDTH = 256  # 2.56-s clips: long enough that waiting for a transition and a full ring is seconds more


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(4096).astype(np.float32)


def _encode(text: str) -> np.ndarray:
    return np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(16).astype(np.float32)


# ---------------------------------------------------------------------- the path turns


def test_a_turn_starts_from_the_point_of_the_clip_before_it_not_from_a_waypoint():
    journey = PromptJourney(["lofi"], seed=5, clips_per_transition=4)
    journey.queue("jazz", 0)
    origin = [journey.clip(i) for i in range(3)][-1]  # lofi -> jazz at 0.5
    journey.turn(3, origin, "techno")
    turned = [journey.clip(i) for i in range(3, 8)]

    assert [round(c.alpha, 2) for c in turned[:4]] == [0.25, 0.5, 0.75, 1.0]
    assert all(c.prompt_b == "techno" and c.origin == origin for c in turned[:4])
    assert turned[4].origin is None and turned[4].prompt_a == "techno"
    # The new path starts exactly where the origin was: its prompts' blend, and its noise.
    start = dataclasses.replace(turned[0], alpha=0.0)
    embed = lerp(_encode("lofi"), _encode("jazz"), origin.alpha)
    np.testing.assert_allclose(blend_embedding(_encode, start.prompt_a), embed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clip_noise(start, _noise), clip_noise(origin, _noise), rtol=1e-5, atol=1e-6)
    # ...and moves from it by the usual step, not by a jump to another seed's noise.
    step = np.linalg.norm(clip_noise(turned[0], _noise) - clip_noise(origin, _noise))
    usual = np.linalg.norm(clip_noise(origin, _noise) - clip_noise(journey_clip(1), _noise))
    assert step < 1.5 * usual


def journey_clip(index: int) -> Clip:
    journey = PromptJourney(["lofi"], seed=5, clips_per_transition=4)
    journey.queue("jazz", 0)
    return [journey.clip(i) for i in range(index + 1)][-1]


def test_a_rewind_past_a_turn_undoes_it():
    journey = PromptJourney(["lofi", "jazz"], seed=1, clips_per_transition=2)
    before = [journey.clip(i) for i in range(5)]
    journey.turn(3, before[2], "techno")
    assert journey.clip(3).prompt_b == "techno"
    journey.rewind(3)
    assert [journey.clip(i) for i in range(3, 5)] == before[3:]


def test_turns_on_turns_keep_a_bounded_chain_of_starting_points():
    journey = PromptJourney(["lofi"], seed=1, clips_per_transition=4)
    clip = journey.clip(0)
    clip = journey.clip(1)
    for n in range(3 * MAX_TURN_DEPTH):
        journey.turn(clip.index + 1, clip, f"prompt {n}")
        clip = journey.clip(clip.index + 1)
    depth, origin = 0, clip.origin
    while origin is not None:
        depth, origin = depth + 1, origin.origin
    assert 1 <= depth <= MAX_TURN_DEPTH
    assert np.isfinite(clip_noise(clip, _noise)).all()


def test_the_point_of_a_clip_is_a_flat_blend_of_the_prompts_under_it():
    clip = Clip(3, "lofi:0.5 + jazz:0.5", "techno", 0.5, 1, 2)
    label, _ = point_of(clip)
    np.testing.assert_allclose(blend_embedding(_encode, label),
                               lerp(blend_embedding(_encode, clip.prompt_a), _encode("techno"), 0.5), rtol=1e-5, atol=1e-6)
    assert point_of(Clip(4, "lofi", "jazz", 1.0, 1, 2)) == ("jazz", None)


def test_a_timeline_turned_by_a_prompt_leaves_the_timeline_and_a_new_seed_keeps_it():
    text = '[[entry]]\ntime = 0\nprompt = "lofi"\n[[entry]]\ntime = 60\nprompt = "jazz"\n'
    journey = TimelineJourney(parse_timeline(text), clip_advance=5.0, seed=0, clips_per_transition=2)
    clips = [journey.clip(i, 2.5 + 5 * i) for i in range(3)]
    journey.turn(3, clips[-1], seed=40)
    assert not journey.left_timeline and "jazz" in journey.upcoming(3)
    assert journey.clip(3, 17.5).seed_b == 40
    journey.turn(4, journey.clip(3, 17.5), "techno")
    turned = journey.clip(4, 22.5)
    assert journey.left_timeline and "jazz" not in journey.upcoming(5)
    assert turned.prompt_b == "techno" and turned.alpha == pytest.approx(0.5) and turned.origin is not None


def test_steering_now_turns_and_steering_smooth_queues_for_the_next_waypoint():
    for mode, said_first in (("now", "turning to 'jazz' now"), ("smooth", "queued a transition to 'jazz'")):
        said: list[str] = []
        steering = Steering(PromptJourney(["lofi"], seed=3, clips_per_transition=4), 4, None, None, said.append, mode)
        clips = []
        for index in range(2):
            steering.apply(index, clips[-1] if clips else None)
            clips.append(steering.journey.clip(index))
        steering.queue_prompt("jazz")
        assert steering.turns_now() == (mode == "now")
        steering.apply(2, clips[-1])
        first = steering.journey.clip(2)
        assert said == [said_first]
        if mode == "now":
            assert first.prompt_b == "jazz" and first.alpha == 0.25
        else:
            assert first.prompt_b == "lofi"  # the transition in progress (a seed walk) ends first


# ---------------------------------------------------------------------- the ring


def test_the_ring_takes_back_only_what_is_not_heard_and_records_what_is():
    ring, stop = RingBuffer(16, 1, ahead=8, records=True), threading.Event()
    assert ring.write(np.arange(8, dtype=np.float32)[:, None], stop)
    out = np.zeros((3, 1), np.float32)
    ring.read_into(out)
    with pytest.raises(ValueError):
        ring.truncate(2)  # already heard
    ring.truncate(5)
    assert ring.write(np.full((2, 1), 50, np.float32), stop)
    heard = np.zeros((4, 1), np.float32)
    ring.read_into(heard)
    assert heard[:, 0].tolist() == [3, 4, 50, 50]
    assert ring.take_played()[:, 0].tolist() == [0, 1, 2, 3, 4, 50, 50]


# ---------------------------------------------------------------------- live, at a real clock's pace


@pytest.fixture(scope="module")
def model(tiny_exported):
    from riffstream.model import ModelOptions, RiffusionModel

    return RiffusionModel.load(ModelOptions(model="tiny", width=WIDTH, cache_dir=tiny_exported, precision="f32"),
                               progress=False)


class _Heard:
    """A live sink that keeps what the clock played, and apart from it what the clock took from the ring.

    An underrun fills the end of a block with silence (a slow machine's start of play has them); the
    listener hears it, the recording does not. The clock counts it before it hands the block out, so the
    growth of its count since the last block is how much of this block's end is silence.
    """

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.took: list[np.ndarray] = []
        self.clock: RealTimeClock | None = None
        self._silence_frames = 0

    def write(self, samples: np.ndarray) -> None:
        block = samples.copy()
        filled = self.clock.silence_frames - self._silence_frames
        self._silence_frames += filled
        self.blocks.append(block)
        self.took.append(block[:, : block.shape[1] - filled])

    def close(self) -> None:
        pass

    def audio(self) -> np.ndarray:
        return np.concatenate(self.blocks, axis=1)

    def audio_taken(self) -> np.ndarray:
        return np.concatenate(self.took, axis=1)


def _clock_for(heard: _Heard):
    """A clock factory that plays into ``heard`` and lets it see the clock's count of silence."""
    def factory(ring) -> RealTimeClock:
        heard.clock = RealTimeClock(ring, RATE, [heard])
        return heard.clock
    return factory


def _steer_live(model, mode: str, out=None, clips_before: int = 4) -> dict:
    """Play endlessly at real-time pace, steer once after ``clips_before`` clips, wait until it is heard."""
    heard_sink, events = _Heard(), []
    options = StreamOptions(prompts=("lofi",), seed=1, steps=1, steer=mode)
    writer = AudioFileWriter(out, RATE, 1) if out is not None else None
    stream = Stream(model, options, [writer] if writer else [],
                    clock_factory=_clock_for(heard_sink))
    stream.subscribe(events.append)
    stream.start()
    try:
        deadline = time.monotonic() + 180
        # Steer once the clock has played 4 s with no underrun (a slow machine's start of play has some),
        # so the seam has 3 s of heard music before it (a fast machine makes the first clips long before).
        underruns, played_since = 0, 0
        while (stream.stats.clips < clips_before or not stream.clock_started or stream.ahead_seconds() < 3
               or stream.clock.frames_out - played_since < 4 * RATE):
            assert stream.poll() and time.monotonic() < deadline, "live play never got going"
            if stream.clock.underruns != underruns:
                underruns, played_since = stream.clock.underruns, stream.clock.frames_out
            time.sleep(0.01)
        making = stream.stats.last_model_seconds + stream.stats.last_audio_seconds
        underruns = stream.clock.underruns  # (the start of play is not what is tested)
        sent = time.monotonic()
        stream.queue_prompt("smooth jazz")
        while (stream.status().heard is None or stream.status().heard.prompt_b != "smooth jazz"):
            assert stream.poll() and time.monotonic() < deadline, "the steer was never heard"
            time.sleep(0.005)
        after = time.monotonic() - sent
        # Play on until the clock has played 3 s past the seam (its first clip's start on the clock).
        first = None
        while first is None or stream.clock.frames_out < stream.clock.stream_frame(first.live_frame) + 3.2 * RATE:
            assert stream.poll() and time.monotonic() < deadline + 30, "play stopped before the seam was past"
            first = next((e for e in events if e.clip.prompt_b == "smooth jazz" and not e.loop), None)
            time.sleep(0.02)
    finally:
        stream.stop()
        if writer is not None:
            writer.close()
    first = next(e for e in events if e.clip.prompt_b == "smooth jazz" and not e.loop)
    return {"after": after, "making": making, "stream": stream,
            "heard": heard_sink.audio()[0], "taken": heard_sink.audio_taken()[0],
            "underruns": stream.clock.underruns - underruns,
            "seam": stream.clock.stream_frame(first.live_frame), "messages": stream.take_messages(), "first": first.clip}


@pytest.mark.slow
def test_a_steer_is_heard_within_a_clip_s_making_and_joins_on_with_no_gap_or_level_jump(model, tmp_path):
    run = _steer_live(model, "now", out=tmp_path / "live.wav")
    stream, heard, seam = run["stream"], run["heard"], run["seam"]
    # Heard once the new clip could be made (the policy's cover; at worst the next clip boundary after it,
    # where the clip it falls in cannot be joined again in time; and a little of the machine's noise), with
    # no underrun, and sooner than the audio the ring held (a full look-ahead would have made it wait).
    advance = (WIDTH - stream.overlap_columns) / 100
    assert stream.stats.cuts >= 1 and run["underruns"] == 0
    assert run["after"] <= run["making"] * FIRST_STEER_SCALE + STEER_MARGIN + advance + 0.5, run
    assert run["after"] < stream.ring.ahead / RATE
    assert any(line.startswith("turning to 'smooth jazz' now") for line in run["messages"])

    # The seam: no gap (no 20 ms of silence) and the level within 1 dB of the interior around it.
    around = heard[seam - 3 * RATE : seam + 3 * RATE]
    assert around.size == 6 * RATE
    window = RATE // 50
    quiet = np.abs(around[: around.size // window * window]).reshape(-1, window).max(axis=1) < 1e-4
    assert not quiet.any()
    # Half-second levels: the tiny model's noise alone moves 250-ms levels by 2 dB inside a clip.
    half = RATE // 2

    def level(part: np.ndarray) -> float:
        return float(20 * np.log10(np.sqrt(np.mean(part**2))))

    seam_level = level(around[3 * RATE - half // 2 : 3 * RATE + half // 2])  # centred on the seam
    interior = [level(around[k * half : (k + 1) * half]) for k in (*range(4), *range(8, 12))]
    assert abs(seam_level - np.median(interior)) <= 1.0, (seam_level, interior)

    # The file holds what the clock took from the ring (its very end faded out), not what was joined
    # ahead, and not the silence an underrun at the start of play filled in.
    written, rate = soundfile.read(tmp_path / "live.wav", dtype="float32")
    taken = run["taken"]
    played = taken[: written.size]
    assert rate == RATE and abs(written.size - taken.size) <= RATE // 10
    edge = round(0.01 * RATE)
    np.testing.assert_allclose(written[:-edge], played[:-edge], atol=1e-4)


@pytest.mark.slow
def test_smooth_steering_keeps_riffusion_s_way_waiting_for_the_transition_and_the_ring(model):
    run = _steer_live(model, "smooth")
    stream = run["stream"]
    assert stream.stats.cuts == 0 and run["underruns"] == 0
    assert any(line.startswith("queued a transition to 'smooth jazz'") for line in run["messages"])
    first = run["first"]
    assert first.prompt_b == "smooth jazz" and first.origin is None and first.prompt_a == "lofi"
    # It waited for what was made: at least most of the ring's look-ahead.
    assert run["after"] > 0.6 * stream.ring.ahead / RATE
