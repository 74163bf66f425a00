"""The stream's parts: crossfading stitcher, ring buffer, and the threaded stream on the tiny model."""

import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile

from riffstream.errors import RiffstreamError
from riffstream.planner import clips_for_duration
from riffstream.sinks import AudioFileWriter
from riffstream.spectrogram import SpectrogramParams
from riffstream.stream import ClipJob, LocalSource, RingBuffer, Stream, StreamEnds, StreamOptions, StreamStats

WIDTH = 64  # 0.64-s clips: the tiny model paints one in a fraction of a second
RATE = 44100


def _clips(n, length=1000, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, (channels, length)).astype(np.float32) for _ in range(n)]


def _stitch(stitcher, clips):
    parts = [stitcher.push(c) for c in clips] + [stitcher.finish()]
    return np.concatenate(parts, axis=1)


def _ramp(n):
    return np.arange(1, n + 1, dtype=np.float32) / n


def _reference(clips, edge, total=None):
    """The whole stream built in one go (independent of StreamEnds' blocks): edges faded, cut to total."""
    out = np.concatenate(clips, axis=1)
    out[:, :edge] *= _ramp(edge)
    out = out[:, :total].copy()
    end = min(edge, out.shape[1])
    out[:, out.shape[1] - end:] *= _ramp(end)[::-1]
    return out


@pytest.mark.parametrize("edge", [10, 50, 500])
def test_blocks_pass_through_with_only_the_stream_edges_faded(edge):
    clips = _clips(6, channels=2)
    out = _stitch(StreamEnds(2, edge), clips)
    assert out.shape == (2, 6 * 1000)
    np.testing.assert_allclose(out, _reference(clips, edge), atol=1e-6)


@pytest.mark.parametrize("total", [1, 999, 1000, 1901, 2500, 4601])
def test_a_total_gives_exactly_that_many_samples_with_a_fade_out(total):
    clips = _clips(clips_for_duration(total, 1000, 0))
    ends = StreamEnds(1, 10, total=total)
    out = _stitch(ends, clips)
    assert out.shape == (1, total) and ends.done
    np.testing.assert_allclose(out, _reference(clips, 10, total), atol=1e-6)
    assert abs(out[0, -1]) <= 0.5 / min(10, total) + 1e-6


def test_stream_edges_fade_so_they_do_not_click():
    out = _stitch(StreamEnds(1, 441), [np.ones((1, 5000), np.float32)] * 3)
    assert 0 < out[0, 0] < 0.01 and 0 < out[0, -1] < 0.01
    assert np.max(np.abs(np.diff(out[0, :442]))) < 0.01 and np.max(np.abs(np.diff(out[0, -442:]))) < 0.01


def test_ring_buffer_keeps_order_across_wrap_around():
    ring, stop = RingBuffer(7, 2), threading.Event()
    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    out = np.full((3, 2), -1, np.float32)
    got = []
    for start in range(0, 20, 5):
        assert ring.write(data[start:start + 5], stop)
        while ring.available:
            n = ring.read_into(out)
            got.append(out[:n].copy())
    np.testing.assert_array_equal(np.concatenate(got), data)


def test_ring_buffer_reader_takes_what_there_is_and_never_waits():
    ring = RingBuffer(8, 1)
    ring.write(np.ones((3, 1), np.float32), threading.Event())
    out = np.zeros((5, 1), np.float32)
    # Nothing will ever write again: a reader that waited for the rest would never return.
    reads: list[int] = []
    reader = threading.Thread(target=lambda: reads.extend([ring.read_into(out), ring.read_into(out)]), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_into waited for audio that never came"
    assert reads == [3, 0] and out[:3, 0].tolist() == [1.0, 1.0, 1.0]


def test_a_full_ring_buffer_holds_the_writer_until_stopped():
    ring, stop = RingBuffer(4, 1), threading.Event()
    result = []
    writer = threading.Thread(target=lambda: result.append(ring.write(np.ones((6, 1), np.float32), stop)))
    writer.start()
    time.sleep(0.1)
    assert writer.is_alive() and ring.available == 4
    stop.set()
    writer.join(1)
    assert result == [False]


# ---------------------------------------------------------------- the threaded stream, tiny model


@pytest.fixture(scope="module")
def model(tiny_exported):
    from riffstream.model import ModelOptions, RiffusionModel

    return RiffusionModel.load(ModelOptions(model="tiny", width=WIDTH, cache_dir=tiny_exported, precision="f32"),
                               progress=False)


def _render(model, path, duration, seed=3, **options):
    opts = StreamOptions(prompts=("lofi", "jazz"), seed=seed, steps=options.pop("steps", 2), duration=duration, **options)
    with AudioFileWriter(path, RATE, 1) as writer:
        stream = Stream(model, opts, [writer])
        stream.run()
    return stream


def test_a_render_lasts_exactly_its_duration(model, tmp_path):
    stream = _render(model, tmp_path / "a.wav", 1.7)
    info = soundfile.info(tmp_path / "a.wav")
    assert info.frames == round(1.7 * RATE) and info.samplerate == RATE
    assert stream.stats.clips == stream.total_clips == clips_for_duration(round(1.7 * RATE), WIDTH * 441, round(0.25 * RATE))


def test_the_same_seed_and_options_give_the_same_audio(model, tmp_path):
    _render(model, tmp_path / "a.wav", 1.5, seed=7)
    _render(model, tmp_path / "b.wav", 1.5, seed=7)
    _render(model, tmp_path / "c.wav", 1.5, seed=8)
    a, b, c = (soundfile.read(tmp_path / f"{n}.wav")[0] for n in "abc")
    np.testing.assert_array_equal(a, b)
    assert a.shape == c.shape and not np.array_equal(a, c)


@pytest.mark.slow
def test_memory_stays_flat_however_long_the_render(model, tmp_path):
    def peak(duration):
        tracemalloc.start()
        _render(model, tmp_path / "m.wav", duration, steps=1, crossfade=0.05)
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return high

    # Warm every cache (FFT plans, embeddings, scheduler configs) with a long render first,
    # so that the peaks compare steady states: memory must not grow with the duration. Both
    # renders outlast the loudness follower's 20-s window, which it holds by design.
    peak(36.0)
    short, long = peak(24.0), peak(36.0)
    # A clip's transient arrays vary with its content by up to about 0.5 MB; keeping the
    # audio of the extra 12 s alone would add over 2 MB.
    assert long <= short * 1.05 + 1_000_000, (short, long)


def test_unrelated_clips_of_a_long_render_come_out_at_the_target_under_the_ceiling(model, tmp_path):
    from riffstream.loudness import measure
    from riffstream.stitch import DEFAULT_LOUDNESS

    # The tiny model's clips share no sound, so each takes the level of the one before.
    stream = _render(model, tmp_path / "loud.wav", 15.0, steps=1, crossfade=0.1)
    audio, rate = soundfile.read(tmp_path / "loud.wav", dtype="float64")
    clip = WIDTH * 441
    step = clip - stream.crossfade_frames
    levels = [measure(audio[k * step : k * step + clip], rate).integrated for k in range(len(audio) // step - 1)]
    assert len(levels) >= 20
    assert max(abs(level - DEFAULT_LOUDNESS) for level in levels) <= 1.0
    assert measure(audio, rate).true_peak <= -1.0


def test_spectrograms_and_their_path_are_saved(model, tmp_path):
    import json

    from riffstream.spectrogram import read_image

    _render(model, tmp_path / "a.wav", 1.0, save_spectrograms=tmp_path / "spec")
    records = [json.loads(line) for line in (tmp_path / "spec" / "clips.jsonl").read_text().splitlines()]
    assert [r["file"] for r in records] == ["clip-00000.png", "clip-00001.png"]
    assert records[-1]["prompt_b"] == "jazz" and records[-1]["alpha"] == 1.0
    assert read_image(tmp_path / "spec" / "clip-00000.png").size == (WIDTH, 512)


def test_stop_ends_every_thread_within_a_second(model, tmp_path):
    opts = StreamOptions(prompts=("lofi",), seed=1, steps=50)
    with AudioFileWriter(tmp_path / "s.wav", RATE, 1) as writer:
        stream = Stream(model, opts, [writer])
        stream.start()
        # Stop mid-work: once a clip is out and the next ones are being denoised (50 steps each).
        deadline = time.monotonic() + 120
        while stream.stats.clips < 1:
            assert time.monotonic() < deadline and stream.poll(), "no clip was made"
            time.sleep(0.01)
        began = time.monotonic()
        assert stream.stop(timeout=1.0)
        assert time.monotonic() - began < 1.0
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("riffstream-")]


def _job(index, steps=2):
    from riffstream.planner import Clip
    from riffstream.tempo import Slot

    return ClipJob(Clip(index, "lofi", "jazz", index / 4, 1, 2), Slot(index, index * 48, 48), steps, 7.0, 0.75, None)


def test_a_local_source_makes_its_jobs_in_order_and_drops_one_not_started(model):
    source = LocalSource(model)
    try:
        slow, queued, dropped = source.submit(_job(0, steps=40)), source.submit(_job(1)), source.submit(_job(2))
        deadline = time.monotonic() + 10
        while not source.started(slow):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert not source.started(queued) and not source.started(dropped)
        source.cancel(dropped)
        first, second = source.collect(slow, 60), source.collect(queued, 60)
        assert first is not None and second is not None and first.image.size == (WIDTH, 512)
        assert first.denoise_seconds > second.denoise_seconds > 0 and first.decode_seconds > 0
        assert source.collect(dropped, 0.5) is None and not source.started(dropped)
        again = source.collect(source.submit(_job(0, steps=40)), 60)
        assert np.array_equal(np.asarray(again.image), np.asarray(first.image))  # the same job, the same clip
    finally:
        source.close()
    assert not [thread.name for thread in threading.enumerate() if thread.name.startswith("riffstream-d")]


def test_with_the_full_vae_a_local_source_decodes_each_clip_before_denoising_the_next(model):
    assert model.decoder_takes_turns  # the tiny model's own VAE, on the CPU
    source = LocalSource(model)
    try:
        made = [source.collect(ticket, 60) for ticket in [source.submit(_job(i)) for i in range(3)]]
    finally:
        source.close()
    # The VAE's working memory is never held beside the UNet's: each denoise starts after the
    # previous clip's decode has ended (with TAESD the next denoise starts as the decode does).
    for before, after in zip(made, made[1:]):
        assert after.denoise_span[0] >= before.denoise_span[1] + before.decode_seconds


def test_a_stream_on_a_given_local_source_renders_what_it_renders_from_the_model(model, tmp_path):
    _render(model, tmp_path / "model.wav", 2.0)
    source = LocalSource(model)
    try:
        _render(source, tmp_path / "source.wav", 2.0)
    finally:
        source.close()
    assert (tmp_path / "model.wav").read_bytes() == (tmp_path / "source.wav").read_bytes()


def test_the_production_rate_falls_at_once_when_clips_stop_coming():
    stats = StreamStats(started=100.0)
    for n in range(1, 11):  # a clip of 0.5 s of audio every 0.25 s: twice real time
        stats.arrived(0.5 * n, now=100.0 + 0.25 * n)
    assert stats.production_rate(now=102.5) == pytest.approx(2.0)
    # Then nothing for 6 s (a worker lost): the whole run's average still says 0.59x real time,
    # the recent rate (the last 8 clips and the wait since) says 0.5, and the lower one is used.
    assert stats.real_time_factor(now=108.5) == pytest.approx(5.0 / 8.5)
    assert stats.production_rate(now=108.5) == pytest.approx(4.0 / 8.0)
    # A burst after a slow start does not make it look faster than the whole run has been.
    slow_start = StreamStats(started=0.0)
    for n in range(1, 10):
        slow_start.arrived(0.5 * n, now=30.0 + 0.01 * n)
    assert slow_start.production_rate(now=30.1) == pytest.approx(slow_start.real_time_factor(now=30.1))


def _play_live(model, seconds: float, journal=None) -> tuple[Stream, float, float]:
    """Endless live play at a real clock's pace until ``seconds`` of audio have been heard (a
    slow machine takes longer to get there, not less far): the stream, audio made and heard."""
    from riffstream.stream import RealTimeClock

    stream = Stream(model, StreamOptions(prompts=("lofi",), seed=1, steps=1),
                    clock_factory=lambda ring: RealTimeClock(ring, RATE, []), journal=journal)
    stream.start()
    try:
        deadline = time.monotonic() + seconds + 120
        while stream.clock is None or stream.clock.stream_seconds < seconds:
            assert stream.poll() and time.monotonic() < deadline, "live play never got that far"
            time.sleep(0.02)
        made, heard = stream.stats.audio_seconds, stream.clock.stream_seconds
    finally:
        stream.stop()
    return stream, made, heard


@pytest.mark.slow
def test_endless_live_play_stays_a_few_clips_ahead_of_the_listener(model):
    """A model faster than real time does not run a minute ahead: a typed prompt is heard within
    three clips (0.64 s each here; at least the 2.64 s that looping the last clip needs)."""
    stream, made, heard = _play_live(model, 6.0)
    limit = stream.ring.ahead / RATE
    assert limit == pytest.approx(2.64, abs=0.01)
    # However fast the model, what was made but not yet heard is at most the ring, the clip
    # waiting to enter it and the clips in the making (a slower model is only nearer the listener).
    assert made - heard <= limit + 3 * 0.48 + 0.5, (made, heard)


@pytest.mark.slow
def test_live_play_short_of_audio_does_not_wait_for_griffin_lim_s_extra_iterations(model, tmp_path):
    from riffstream.journal import Journal

    # The first clip meets an empty ring; once a clip is buffered the rest are polished.
    live = _play_live(model, 2.5)[0]
    assert 1 <= live.stats.unpolished < live.stats.clips, (live.stats.unpolished, live.stats.clips)
    assert _render(model, tmp_path / "r.wav", 1.5).stats.unpolished == 0  # a render always waits
    # A recording that can be resumed must replay to the same bytes: it always waits too.
    recorded = _play_live(model, 2.5, Journal.start(tmp_path / "live.wav", {"seed": 1}))[0]
    assert recorded.stats.clips > 1 and recorded.stats.unpolished == 0


def test_a_model_of_the_wrong_height_is_refused(tiny_model):
    with pytest.raises(RiffstreamError, match="pixel-high"):
        Stream(tiny_model, StreamOptions(prompts=("a",)))


def test_a_crossfade_longer_than_half_a_clip_is_refused(model):
    with pytest.raises(RiffstreamError, match="crossfade"):
        Stream(model, StreamOptions(prompts=("a",), crossfade=0.4, params=SpectrogramParams()))


def _clip_images(model, tmp_path, name, duration=2.0, **options):
    from riffstream.spectrogram import read_image

    folder = tmp_path / name
    _render(model, tmp_path / f"{name}.wav", duration, save_spectrograms=folder, crossfade=0.1, **options)
    return [np.asarray(read_image(path)) for path in sorted(folder.glob("clip-*.png"))]


def test_an_init_image_seeds_every_clip_reproducibly(model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    seed_image = Image.fromarray(rng.integers(0, 255, (512, WIDTH, 3), dtype=np.uint8))
    plain = _clip_images(model, tmp_path, "plain")
    seeded = _clip_images(model, tmp_path, "seeded", init_image=seed_image, strength=0.5)
    again = _clip_images(model, tmp_path, "again", init_image=seed_image, strength=0.5)
    assert len(plain) == len(seeded) >= 3
    assert all(not np.array_equal(a, b) for a, b in zip(plain, seeded))
    assert all(np.array_equal(a, b) for a, b in zip(seeded, again))


def test_continuation_keeps_each_clip_s_start_equal_to_the_previous_clip_s_end(model, tmp_path):
    clips = _clip_images(model, tmp_path, "continued", continuation=True, strength=0.6)
    overlap = 10  # 0.1 s crossfade = 10 columns
    assert len(clips) >= 3
    for before, after in zip(clips, clips[1:]):
        np.testing.assert_array_equal(after[:, :overlap], before[:, -overlap:])
        assert not np.array_equal(after[:, overlap:], before[:, overlap:])


def test_a_strength_outside_0_to_1_is_refused(model):
    with pytest.raises(RiffstreamError, match="strength"):
        Stream(model, StreamOptions(prompts=("a",), strength=0.0, params=SpectrogramParams()))


def test_nothing_is_written_after_stop_returns_so_the_file_can_be_closed(model, tmp_path):
    opts = StreamOptions(prompts=("lofi",), seed=2, steps=1, crossfade=0.1)
    writer = AudioFileWriter(tmp_path / "race.wav", RATE, 1)
    stream = Stream(model, opts, [writer])
    stream.start()
    deadline = time.monotonic() + 60
    while stream.stats.clips < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.stop(timeout=0.0)  # the consumer may still be running: it must not write any more
    writer.close()
    for thread in stream._threads:
        thread.join(30)
    assert stream._error is None, repr(stream._error)
    audio, _ = soundfile.read(tmp_path / "race.wav")
    assert len(audio) >= WIDTH * 441


def test_a_continued_clip_starts_from_the_previous_latents_tail_mirrored():
    from riffstream.stream import continuation_seed

    previous = np.random.default_rng(0).standard_normal((1, 4, 64, 16)).astype(np.float32)
    seed = continuation_seed(previous, overlap=20, scale=8)  # 20 columns: the last 3 latent columns
    assert seed.shape == previous.shape
    np.testing.assert_array_equal(seed[..., :3], previous[..., -3:])
    np.testing.assert_array_equal(seed[..., 3:6], previous[..., -3:][..., ::-1])
    np.testing.assert_array_equal(seed[..., 6:9], previous[..., -3:])


def test_a_queued_prompt_is_reported_until_the_clock_reaches_a_clip_carrying_it(model):
    from riffstream.stream import RealTimeClock

    stream = Stream(model, StreamOptions(prompts=("lofi",), seed=1, steps=1, clips_per_transition=1),
                    clock_factory=lambda ring: RealTimeClock(ring, RATE, []))
    stream.start()
    seen: list = []
    try:
        deadline = time.monotonic() + 120
        while stream.status().heard is None:
            assert stream.poll() and time.monotonic() < deadline, "nothing was heard"
            time.sleep(0.02)
        stream.queue_prompt("smooth jazz")
        assert stream.queued() == ["smooth jazz"]
        while True:
            assert stream.poll() and time.monotonic() < deadline, "the prompt was never heard"
            status = stream.status()
            seen.append((status.heard.prompt_b, status.queued))
            if status.heard.prompt_b == "smooth jazz":
                break
            time.sleep(0.02)
    finally:
        stream.stop()
    assert seen[-1][1] == () and all(queued == ("smooth jazz",) for _, queued in seen[:-1]), seen
    assert any(line.startswith("turning to 'smooth jazz' now") for line in stream.take_messages())
    assert stream.take_messages() == []
