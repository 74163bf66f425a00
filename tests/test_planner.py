"""Clip planning: prompt parsing, the path of clips, interpolation."""

import numpy as np
import pytest

from riffstream.errors import RiffstreamError
from riffstream.planner import (PromptJourney, blend_embedding, clips_for_duration, lerp, parse_blend, parse_duration,
                                parse_prompts, slerp)


def _path(journey: PromptJourney, n: int):
    return [journey.clip(i) for i in range(n)]


def test_prompts_are_split_on_the_word_to():
    assert parse_prompts("lofi hip hop to smooth jazz To techno") == ["lofi hip hop", "smooth jazz", "techno"]
    assert parse_prompts("  tokyo toast  ") == ["tokyo toast"]


@pytest.mark.parametrize("text", ["", "   ", "lofi to", "to jazz", "lofi to  to jazz"])
def test_empty_prompts_are_rejected(text):
    with pytest.raises(RiffstreamError, match="empty prompt"):
        parse_prompts(text)


def test_a_transition_takes_four_clips_like_riffusions_web_app():
    clips = _path(PromptJourney(["a", "b"], seed=10), 6)
    assert [(c.prompt_a, c.prompt_b, c.alpha) for c in clips[:5]] == [
        ("a", "a", 0.0), ("a", "b", 0.25), ("a", "b", 0.5), ("a", "b", 0.75), ("a", "b", 1.0)]
    assert [(c.seed_a, c.seed_b) for c in clips[1:5]] == [(10, 11)] * 4
    assert (clips[5].prompt_a, clips[5].prompt_b, clips[5].alpha, clips[5].seed_a, clips[5].seed_b) == ("b", "b", 0.25, 11, 12)


def test_on_a_single_prompt_the_seed_keeps_walking():
    clips = _path(PromptJourney(["a"], seed=0, clips_per_transition=2), 7)
    assert {c.prompt_a for c in clips} == {"a"} and {c.prompt_b for c in clips} == {"a"}
    assert [(c.seed_a, c.seed_b, c.alpha) for c in clips[1:]] == [
        (0, 1, 0.5), (0, 1, 1.0), (1, 2, 0.5), (1, 2, 1.0), (2, 3, 0.5), (2, 3, 1.0)]


def test_a_duration_spreads_the_whole_journey_over_its_clips():
    journey = PromptJourney(["a", "b", "c"], seed=0, total_clips=9)
    clips = _path(journey, 9)
    assert (clips[0].prompt_a, clips[0].alpha) == ("a", 0.0)
    assert (clips[4].prompt_a, clips[4].prompt_b, clips[4].alpha) == ("a", "b", 1.0)
    assert (clips[8].prompt_a, clips[8].prompt_b, clips[8].alpha) == ("b", "c", 1.0)
    assert all(0 < b.alpha - a.alpha <= 0.25 + 1e-9 or b.prompt_a != a.prompt_a for a, b in zip(clips[1:], clips[2:]))


def test_a_single_prompt_with_a_duration_still_walks_the_seed():
    clips = _path(PromptJourney(["a"], seed=5, total_clips=6), 6)
    assert len({(c.seed_a, c.seed_b, c.alpha) for c in clips}) == 6


def test_a_queued_prompt_starts_its_transition_at_the_next_waypoint():
    journey = PromptJourney(["a"], seed=0, clips_per_transition=4)
    _path(journey, 3)  # clips 0..2: position 0.5, midway a(seed 0) -> a(seed 1)
    journey.queue("b", next_index=3)
    clips = [journey.clip(i) for i in range(3, 9)]
    assert [(c.prompt_a, c.prompt_b, c.alpha) for c in clips] == [
        ("a", "a", 0.75), ("a", "a", 1.0), ("a", "b", 0.25), ("a", "b", 0.5), ("a", "b", 0.75), ("a", "b", 1.0)]
    assert journey.clip(9).prompt_a == "b"


def test_a_prompt_queued_at_a_waypoint_starts_at_once():
    journey = PromptJourney(["a"], seed=0, clips_per_transition=4)
    _path(journey, 5)  # clip 4 ends a transition
    journey.queue("b", next_index=5)
    assert (journey.clip(5).prompt_b, journey.clip(5).alpha) == ("b", 0.25)


def test_prompts_queued_in_a_row_are_visited_in_order():
    journey = PromptJourney(["a", "b"], seed=0, clips_per_transition=1)
    journey.clip(0)
    journey.queue("c", 1)
    journey.queue("d", 1)
    assert [journey.clip(i).prompt_b for i in range(1, 5)] == ["b", "c", "d", "d"]


def test_a_finite_journey_rejects_new_prompts():
    with pytest.raises(RiffstreamError, match="fixed"):
        PromptJourney(["a"], total_clips=3).queue("b", 1)


def test_lerp_and_slerp_hit_their_endpoints():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 1, 4, 8, 8)).astype(np.float32)
    for mix in (lerp, slerp):
        np.testing.assert_allclose(mix(a, b, 0.0), a, atol=1e-6)
        np.testing.assert_allclose(mix(a, b, 1.0), b, atol=1e-6)
        assert mix(a, b, 0.3).dtype == np.float32


def test_slerp_keeps_noise_at_unit_variance_where_lerp_does_not():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 4 * 64 * 64)).astype(np.float32)
    assert abs(np.std(slerp(a, b, 0.5)) - 1.0) < 0.02
    assert np.std(lerp(a, b, 0.5)) < 0.75


def test_slerp_falls_back_to_lerp_for_nearly_parallel_noise():
    a = np.ones(16, np.float32)
    b = a * 1.0001
    np.testing.assert_array_equal(slerp(a, b, 0.5), lerp(a, b, 0.5))


def test_clips_for_duration_is_the_fewest_crossfaded_clips_that_cover_it():
    clip, fade = 1000, 100
    for total in (1, 999, 1000, 1001, 1900, 1901, 50_000):
        n = clips_for_duration(total, clip, fade)
        assert n * clip - (n - 1) * fade >= total
        assert n == 1 or (n - 1) * clip - (n - 2) * fade < total


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("2.5m", 150), ("1h", 3600), ("1:30", 90), ("0.5", 0.5)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "0s", "abc", "nan", ""])
def test_bad_durations_are_rejected(text):
    with pytest.raises(RiffstreamError):
        parse_duration(text)


def test_a_blend_is_split_into_parts_with_normalised_weights():
    assert parse_blend("lofi hip hop:2 + smooth jazz:1") == (("lofi hip hop", 2 / 3), ("smooth jazz", 1 / 3))
    assert parse_blend("lofi + jazz") == (("lofi", 0.5), ("jazz", 0.5))
    assert parse_blend("jazz 3:4 time") == (("jazz 3:4 time", 1.0),)  # only a trailing :NUMBER is a weight
    assert parse_blend("lofi:0.5") == (("lofi", 1.0),)
    assert parse_blend("a:1 + b:1 + a:2") == (("a", 0.75), ("b", 0.25))


@pytest.mark.parametrize("text, message", [
    ("lofi:0 + jazz", "more than 0"), ("lofi:-1 + jazz", "more than 0"), ("lofi + ", "empty part"),
    (":2", "empty part"), ("lofi:5000 + jazz", "at most 1000"),
])
def test_unusable_blends_are_refused_in_one_line(text, message):
    with pytest.raises(RiffstreamError, match=message):
        parse_blend(text)
    with pytest.raises(RiffstreamError):
        parse_prompts(f"techno to {text}")


def test_a_blend_is_one_waypoint_of_a_journey():
    assert parse_prompts("lofi:2 + jazz:1 to techno") == ["lofi:2 + jazz:1", "techno"]
    journey = PromptJourney(["lofi:2 + jazz:1", "techno"], seed=0, clips_per_transition=2)
    assert [(c.prompt_a, c.prompt_b, c.alpha) for c in _path(journey, 3)] == [
        ("lofi:2 + jazz:1", "lofi:2 + jazz:1", 0.0), ("lofi:2 + jazz:1", "techno", 0.5),
        ("lofi:2 + jazz:1", "techno", 1.0)]


def test_a_blend_embedding_is_the_weighted_mean_of_its_parts(tiny_model):
    encode = tiny_model.encode_prompt
    blended = blend_embedding(encode, "lofi hip hop:3 + smooth jazz:1")
    expected = 0.75 * encode("lofi hip hop").astype(np.float64) + 0.25 * encode("smooth jazz")
    assert blended.dtype == np.float32
    assert np.allclose(blended, expected, atol=1e-6)
    assert not np.allclose(blended, encode("lofi hip hop"), atol=1e-3)
    assert np.array_equal(blend_embedding(encode, "lofi hip hop"), encode("lofi hip hop"))  # plain prompts as before
