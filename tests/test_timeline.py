"""--timeline: reading TOML plans (every bad file gets one line with its line number) and planning clips from them."""

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from riffstream.errors import RiffstreamError
from riffstream.timeline import TimelineJourney, parse_timeline, read_timeline
from tests.running import assert_one_line_error, run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "timeline.toml"
ADVANCE = 4.12  # seconds from one clip's start to the next (512 columns, 1-s crossfade)


def _timeline(text: str):
    return parse_timeline(textwrap.dedent(text), "plan.toml")


PLAN = """
    [[entry]]
    time = "0:00"
    prompt = "lofi hip hop"
    seed = 5

    [[entry]]
    time = "1:00"
    prompt = "smooth jazz"
    transition = "20s"
    strength = 0.5

    [[entry]]
    time = "2:00"
    prompt = "techno:3 + ambient:1"
    transition = 0
    negative_prompt = "vocals"
    """


def test_the_example_timeline_reads():
    timeline = read_timeline(EXAMPLE)
    assert timeline.end == 360 and timeline.bpm == 90
    assert [entry.time for entry in timeline.entries] == [0, 90, 180, 270]
    assert timeline.bpm_at(300) == 70 and timeline.bpm_at(100) == 90


@pytest.mark.parametrize("text, line, message", [
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\ntempo = 90\n', 4, "unknown key 'tempo' in entry 1"),
    ('tempo = 90\n[[entry]]\ntime = "0:00"\nprompt = "a"\n', 1, "unknown key 'tempo'"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\n\n[[entry]]\ntime = "2:00"\nprompt = "b"\n\n'
     '[[entry]]\ntime = "1:00"\nprompt = "c"\n', 10, "times out of order"),
    ('[[entry]]\ntime = "0:00"\nprompt = "   "\n', 3, "prompt is empty"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\nbpm = 900\n', 4, "bpm must be"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\nbpm = "fast"\n', 4, "bpm must be a number"),
    ('bpm = 0\n[[entry]]\ntime = "0:00"\nprompt = "a"\n', 1, "bpm must be"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a:0 + b"\n', 3, "weight of 'a'"),
    ('[[entry]]\ntime = "soon"\nprompt = "a"\n', 2, "cannot read time 'soon'"),
    ('[[entry]]\ntime = "0:30"\nprompt = "a"\n', 2, "the first entry starts the music"),
    ('[[entry]]\nprompt = "a"\n', 1, "entry 1 has no time"),
    ('[[entry]]\ntime = "0:00"\n', 1, "entry 1 has no prompt"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\n\n[[entry]]\ntime = "1:00"\nprompt = "b"\ntransition = "90s"\n\n'
     '[[entry]]\ntime = "2:00"\nprompt = "c"\n', 8, "past the next entry"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\nseed = 1.5\n', 4, "seed must be a whole number"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\nstrength = 2\n', 4, "strength must be"),
    ('[[entry]]\ntime = "0:00"\nprompt = "a"\nprompt = "b"\n', 4, "not valid TOML"),
    ('[[entry]\ntime = "0:00"\n', 1, "not valid TOML"),
    ('end = "1:00"\n[[entry]]\ntime = "0:00"\nprompt = "a"\n[[entry]]\ntime = "2:00"\nprompt = "b"\n', 1,
     "is not after the last entry"),
    ('[entry]\ntime = "0:00"\nprompt = "a"\n', 1, "entries are written as [[entry]] tables"),
])
def test_a_bad_timeline_gets_one_line_naming_the_file_and_line(text, line, message):
    with pytest.raises(RiffstreamError) as caught:
        parse_timeline(text, "plan.toml")
    text = str(caught.value)
    assert text.startswith(f"plan.toml:{line}: "), text
    assert message in text and "\n" not in text


def test_a_timeline_with_no_entries_is_refused():
    with pytest.raises(RiffstreamError, match="plan.toml: no entries"):
        parse_timeline('bpm = 90\n', "plan.toml")


def _centre(n: int) -> float:
    return n * ADVANCE + 2.56


def test_clips_follow_the_timeline_at_the_right_clips():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4)
    clips = [journey.clip(n, _centre(n)) for n in range(60)]
    for clip in clips:
        time = _centre(clip.index)
        if time < 60:
            assert clip.prompt_a == clip.prompt_b == "lofi hip hop"
        elif time < 80:  # the 20-s transition from 1:00
            assert (clip.prompt_a, clip.prompt_b) == ("lofi hip hop", "smooth jazz")
            assert clip.alpha == pytest.approx((time - 60) / 20)
        elif time < 120:
            assert clip.prompt_a == clip.prompt_b == "smooth jazz"
        else:  # a cut at 2:00, then the blend holds and walks on
            assert clip.prompt_b == "techno:3 + ambient:1"
            assert clip.prompt_a == clip.prompt_b or clip.alpha == 1.0
    assert clips[0].seed_a == 5  # the first entry's seed
    assert any(clip.seed_a != clip.seed_b for clip in clips if _centre(clip.index) > 150)  # it keeps walking


def test_a_transition_lasts_its_given_length():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4)
    moving = [n for n in range(60) if 0 < journey.clip(n, _centre(n)).alpha < 1
              and journey.clip(n, _centre(n)).prompt_a != journey.clip(n, _centre(n)).prompt_b]
    span = _centre(moving[-1]) - _centre(moving[0])
    assert 20 - ADVANCE <= span <= 20  # the clips inside a 20-s turn span it to within a clip


def test_the_seed_walk_lands_on_a_step_where_the_next_transition_starts():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4)
    before = journey.clip(0, 59.999)
    at = journey.clip(1, 60.0)
    assert before.alpha == pytest.approx(1.0, abs=1e-3)  # the hold ends on a waypoint ...
    assert (at.prompt_a, at.alpha) == ("lofi hip hop", 0.0)  # ... the transition starts from it
    assert at.seed_a == before.seed_b


def test_strength_and_negative_prompt_turn_with_the_transition():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4, strength=0.75)
    halfway = journey.clip(0, 70.0)
    assert halfway.strength == pytest.approx(0.625)
    after = journey.clip(1, 130.0)
    assert after.negative_b == "vocals" and after.strength == 0.5


def test_after_the_last_entry_it_riffs_on_for_ever():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4)
    far = [journey.clip(n, 3600.0 + n * ADVANCE) for n in range(8)]
    assert all(clip.prompt_a == clip.prompt_b == "techno:3 + ambient:1" for clip in far)
    assert len({clip.seed_a for clip in far}) >= 2


def test_a_typed_prompt_leaves_the_timeline_at_the_next_waypoint():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, seed=0, clips_per_transition=4)
    for n in range(4):
        journey.clip(n, _centre(n))
    assert journey.upcoming(4) == ["smooth jazz", "techno:3 + ambient:1"]
    journey.queue("drum and bass", 4)
    assert journey.left_timeline and journey.upcoming(4) == ["drum and bass"]
    later = [journey.clip(n, _centre(n)) for n in range(4, 20)]
    assert any(clip.prompt_b == "drum and bass" for clip in later)
    assert all("jazz" not in clip.prompt_b for clip in later)


def test_a_finite_timeline_render_takes_no_typed_prompts():
    journey = TimelineJourney(_timeline(PLAN), ADVANCE, total_clips=10)
    with pytest.raises(RiffstreamError, match="fixed"):
        journey.queue("jazz", 0)


# ---------------------------------------------------------------- from the command line


FAST = ["--model", "tiny", "--width", "64", "--steps", "2", "--no-progress"]


def _render(cache, folder, *args):
    command = [sys.executable, "-m", "riffstream", *FAST, "--cache-dir", str(cache), "--no-play", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)


SHORT = """
    end = "12"
    seed = 3

    [[entry]]
    time = "0:00"
    prompt = "lofi"

    [[entry]]
    time = "4"
    prompt = "jazz:2 + lofi:1"
    transition = "3s"
    negative_prompt = "noise"
    """


@pytest.mark.slow
def test_a_timeline_render_is_planned_from_it_and_repeats_exactly(tiny_exported, tmp_path):
    (tmp_path / "plan.toml").write_text(textwrap.dedent(SHORT))
    digests = []
    for run in ("a", "b"):
        result = _render(tiny_exported, tmp_path, "--timeline", "plan.toml", "--out", f"{run}.wav",
                         "--save-spectrograms", f"clips-{run}")
        assert result.returncode == 0, result.stderr
        digests.append(hashlib.sha256((tmp_path / f"{run}.wav").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    records = [json.loads(line) for line in (tmp_path / "clips-a" / "clips.jsonl").read_text().splitlines()]
    import soundfile

    assert soundfile.info(tmp_path / "a.wav").duration == pytest.approx(12, abs=1e-3)  # end = "12"
    centre = [record["start"] + 0.32 for record in records]
    for record, time in zip(records, centre):
        if time < 4:
            assert record["prompt_b"] == "lofi"
        elif time < 7:
            assert record["prompt_b"] == "jazz:2 + lofi:1" and 0 < record["alpha"] < 1
        else:
            assert record["prompt_a"] == record["prompt_b"] == "jazz:2 + lofi:1"
    assert records[0]["seed_a"] == 3


@pytest.mark.parametrize("args, message", [
    (["--timeline", "missing.toml"], "missing.toml"),
    (["--timeline", "bad.toml"], "bad.toml:4: unknown key 'tempo' in entry 1"),
    (["lofi", "--timeline", "good.toml"], "not both"),
])
def test_timeline_mistakes_on_the_command_line_get_one_line(tiny_exported, tmp_path, args, message, capsys,
                                                          monkeypatch, no_model_load):
    (tmp_path / "bad.toml").write_text('[[entry]]\ntime = "0:00"\nprompt = "a"\ntempo = 90\n')
    (tmp_path / "good.toml").write_text('[[entry]]\ntime = "0:00"\nprompt = "a"\n')
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run_cli(capsys, *args, *FAST, "--cache-dir", tiny_exported, "--no-play", "--out", "x.wav",
                                   "--duration", "5"), message)
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_live_play_runs_through_the_timeline_riffs_on_and_takes_typed_prompts(tiny_exported, tmp_path):
    import signal

    from tests.running import clip_records, wait_for

    (tmp_path / "live.toml").write_text('[[entry]]\ntime = 0\nprompt = "lofi"\n\n'
                                        '[[entry]]\ntime = 2\nprompt = "jazz"\ntransition = 0\n')
    command = [sys.executable, "-m", "riffstream", "--timeline", "live.toml", "--model", "tiny", "--width", "64",
               "--steps", "1", "--no-progress", "--cache-dir", str(tiny_exported), "--no-play", "--out", "live.wav",
               "--save-spectrograms", "clips", "--clips-per-transition", "2"]
    process = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    spec = tmp_path / "clips"
    try:
        wait_for(lambda: sum(r["prompt_a"] == "jazz" for r in clip_records(spec)) >= 4, 180, process)
        process.stdin.write(b"techno\n")
        process.stdin.flush()
        wait_for(lambda: any(r["prompt_a"] == "techno" for r in clip_records(spec)), 60, process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    records = clip_records(spec)
    centres = [r["start"] + 0.32 for r in records]
    assert all(r["prompt_b"] == "lofi" for r, t in zip(records, centres) if t < 2)
    assert all(r["prompt_b"] in ("jazz", "techno") for r, t in zip(records, centres) if t >= 2)
    walking = [r for r in records if r["prompt_a"] == r["prompt_b"] == "jazz"]
    assert len({r["seed_a"] for r in walking}) >= 2  # after the last entry it riffs on, the seed walking
    assert "turning to 'techno' now" in stderr


def test_a_timeline_end_ends_a_render_but_not_a_served_stream(tmp_path):
    from riffstream.cli import parse, plan_generation

    (tmp_path / "plan.toml").write_text('end = "1:00"\n[[entry]]\ntime = 0\nprompt = "lofi"\n')
    plan = str(tmp_path / "plan.toml")
    render = plan_generation(parse(["--timeline", plan, "--model", "tiny", "--no-play", "--out",
                                    str(tmp_path / "x.wav")]))
    assert render.stream.duration == 60 and render.stream.timeline.end == 60
    served = plan_generation(parse(["serve", "--timeline", plan, "--model", "tiny"]))
    assert served.stream.duration is None and served.stream.prompts == ("lofi",)
