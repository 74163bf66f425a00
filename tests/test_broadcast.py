"""The broadcast's parts on their own: encoders cut where a decoder can start, the chunk log, the clock."""

import io
import threading
import time

import numpy as np
import pytest
import soundfile

from riffstream.server.app import is_loopback, needs_token
from riffstream.sinks.broadcast import Broadcast, EncodedStream, FellBehind, Chunk, split_mp3_frames, split_ogg_pages
from riffstream.stream import RealTimeClock, RingBuffer

RATE = 44100


def tone(seconds: float, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.tile(0.3 * np.sin(2 * np.pi * frequency * t), (channels, 1))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * rate / len(mono))


def encode(channels: int, seconds: float = 3.0) -> Broadcast:
    broadcast = Broadcast(RATE, channels)
    audio = tone(seconds, channels=channels)
    for start in range(0, audio.shape[1], 2205):
        broadcast.write(audio[:, start : start + 2205])
    broadcast.close()
    return broadcast


@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_decodes_to_the_tone_it_was_given(channels):
    broadcast = encode(channels)
    for name, expected_rate in (("mp3", RATE), ("ogg", 48000)):
        stream = broadcast.streams[name]
        data = stream.header + b"".join(chunk.data for chunk in stream.read(0, 10_000))
        samples, rate = soundfile.read(io.BytesIO(data))
        assert rate == expected_rate
        assert abs(len(samples) / rate - 3.0) < 0.15, name
        assert abs(dominant_frequency(samples, rate) - 440) < 2, name


def test_a_listener_joining_at_any_chunk_gets_decodable_audio():
    broadcast = encode(2, seconds=4.0)
    for name in ("mp3", "ogg"):
        stream = broadcast.streams[name]
        for cursor in (1, 7, stream.join_point(2.0)):
            data = stream.header + b"".join(chunk.data for chunk in stream.read(cursor, 10_000))
            samples, rate = soundfile.read(io.BytesIO(data))
            assert len(samples) > 0.5 * rate, (name, cursor)
            assert abs(dominant_frequency(samples, rate) - 440) < 3, (name, cursor)


def test_mp3_chunks_are_whole_frames_and_ogg_chunks_whole_pages():
    broadcast = encode(1)
    for chunk in broadcast.streams["mp3"].read(0, 10_000):
        frames, rest = split_mp3_frames(chunk.data)
        assert frames and rest == b""
    ogg = broadcast.streams["ogg"]
    header_pages, rest = split_ogg_pages(ogg.header)
    assert rest == b"" and [page[28:36] for page in header_pages] == [b"OpusHead", b"OpusTags"]
    for chunk in ogg.read(0, 10_000):
        pages, rest = split_ogg_pages(chunk.data)
        assert pages and rest == b""


def test_chunk_times_follow_the_audio():
    broadcast = encode(1, seconds=3.0)
    for name in ("mp3", "ogg"):
        times = [chunk.time for chunk in broadcast.streams[name].read(0, 10_000)]
        assert times[0] == 0.0 and times == sorted(times)
        assert 2.7 < times[-1] < 3.1, name


def test_the_log_keeps_a_bounded_window_and_says_when_a_cursor_fell_out_of_it():
    log = EncodedStream("mp3", "audio/mpeg", keep_seconds=2.0)
    for i in range(100):
        log.append(Chunk(bytes([i]), i * 0.1))
    kept = log.read(log.next_sequence - 21, 100)
    assert len(kept) == 21 and kept[-1].data == bytes([99])
    with pytest.raises(FellBehind):
        log.read(0)
    assert log.read(log.join_point(1.0), 100)[0].time == pytest.approx(8.9)


def test_the_clock_hands_out_the_ring_at_real_time_pace_then_closes_its_sinks():
    audio = tone(1.0)
    ring = RingBuffer(2 * RATE, 1)
    ring.write(np.ascontiguousarray(audio.T.astype(np.float32)), threading.Event())
    ring.closed = True

    class Capture:
        def __init__(self):
            self.blocks, self.closed = [], False

        def write(self, samples):
            self.blocks.append(samples.copy())

        def close(self):
            self.closed = True

    capture = Capture()
    clock = RealTimeClock(ring, RATE, [capture])
    began = time.monotonic()
    clock.start()
    clock.drain(5)
    elapsed = time.monotonic() - began
    assert 0.85 < elapsed < 1.3
    assert capture.closed and clock.underruns == 0
    np.testing.assert_array_equal(np.concatenate(capture.blocks, axis=1), audio.astype(np.float32))


def test_the_clock_fills_an_underrun_with_silence_and_keeps_its_pace():
    ring = RingBuffer(RATE, 1)

    class Count:
        frames = 0

        def write(self, samples):
            Count.frames += samples.shape[1]

        def close(self):
            pass

    clock = RealTimeClock(ring, RATE, [Count()])
    clock.start()
    time.sleep(0.5)
    clock.close()
    assert clock.underruns > 0 and clock.silence_frames == clock.frames_out
    assert 0.35 * RATE < Count.frames < 0.7 * RATE


def test_a_token_is_needed_beyond_loopback_only():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    assert needs_token("127.0.0.1", None) is None
    generated = needs_token("0.0.0.0", None)
    assert generated and len(generated) >= 16 and generated != needs_token("0.0.0.0", None)
    assert needs_token("127.0.0.1", "my-own-token") == "my-own-token"
