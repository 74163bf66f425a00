"""Steering: prompts and settings asked for while a stream runs, kept in one place until heard."""

from __future__ import annotations

import pytest

from riffstream.errors import RiffstreamError
from riffstream.planner import Clip, PromptJourney
from riffstream.stream.steering import Steering
from riffstream.timeline import TimelineJourney, parse_timeline


def _steering(journey=None, total_clips=None):
    said: list[str] = []
    steering = Steering(journey or PromptJourney(["lofi"], seed=3, clips_per_transition=2, total_clips=total_clips),
                        steps=4, negative_prompt=None, total_clips=total_clips, say=said.append)
    return steering, said


def _plan(steering: Steering, index: int) -> Clip:
    steering.apply(index)
    clip = steering.journey.clip(index)
    steering.next_clip = index + 1
    return clip


def test_a_prompt_stays_queued_from_asked_until_its_first_clip_is_heard():
    steering, said = _steering()
    _plan(steering, 0)
    steering.queue_prompt("  smooth jazz  ")
    assert steering.queued(heard=0) == ["smooth jazz"]
    clips = [_plan(steering, index) for index in range(1, 5)]
    assert said == ["queued a transition to 'smooth jazz'"]
    turning = next(clip for clip in clips if clip.prompt_b == "smooth jazz")
    steering.entered(turning)
    assert steering.queued(heard=turning.index - 1) == ["smooth jazz"]  # made, not heard yet
    assert steering.queued(heard=turning.index) == []


def test_a_prompt_passed_over_by_a_later_one_leaves_the_queue_with_it():
    steering, _ = _steering()
    _plan(steering, 0)
    steering.queue_prompt("jazz")
    steering.queue_prompt("techno")
    clips = [_plan(steering, index) for index in range(1, 9)]
    for clip in clips:
        steering.entered(clip)
    last = next(clip for clip in clips if clip.prompt_b == "techno")
    assert steering.queued(heard=last.index) == []


def test_an_unreadable_blend_is_refused_in_the_caller_s_thread_and_nothing_is_queued():
    steering, _ = _steering()
    with pytest.raises(RiffstreamError):
        steering.queue_prompt("lofi:2 + ")
    assert steering.queued(heard=None) == [] and not steering.waiting()


def test_settings_asked_for_are_reported_at_once_and_applied_before_the_next_clip():
    steering, _ = _steering()
    _plan(steering, 0)
    settings = steering.change_settings(seed=42, steps=7, negative_prompt="  ")
    assert settings == {"seed": 42, "clips_per_transition": 2, "negative_prompt": None, "steps": 7}
    assert steering.waiting() and steering.steps == 4
    _plan(steering, 1)
    assert steering.steps == 7 and steering.journey.seed == 42 and not steering.waiting()


def test_a_finite_render_refuses_a_new_pace_and_a_bad_value_changes_nothing():
    steering, _ = _steering(total_clips=6)
    with pytest.raises(RiffstreamError, match="pace"):
        steering.change_settings(clips_per_transition=3)
    with pytest.raises(RiffstreamError, match="steps"):
        steering.change_settings(seed=1, steps=0)
    assert not steering.waiting() and steering.settings()["seed"] == 3


def test_a_prompt_queued_into_a_timeline_says_the_rest_of_it_is_dropped():
    timeline = parse_timeline('[[entry]]\ntime = "0:00"\nprompt = "lofi"\n[[entry]]\ntime = "1:00"\nprompt = "jazz"\n')
    steering, said = _steering(TimelineJourney(timeline, clip_advance=5.0, seed=0, clips_per_transition=2))
    steering.apply(0)
    steering.journey.clip(0, 2.5)
    steering.next_clip = 1
    assert steering.queued(heard=None) == ["jazz"]
    steering.queue_prompt("techno")
    steering.apply(1)
    assert said == ["queued a transition to 'techno'; the rest of the timeline is dropped"]
    assert steering.queued(heard=None) == ["techno"]
