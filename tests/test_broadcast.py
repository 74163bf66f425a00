"""The broadcast's parts on their own: encoders cut where a decoder can start, the chunk log, the clock."""

import io
import threading
import time

import av
import numpy as np
import pytest
import soundfile

from riffstream.server.serve import is_loopback, needs_token
from riffstream.sinks.broadcast import Broadcast, EncodedStream, FellBehind, Chunk, split_ogg_pages
from riffstream.stream import RealTimeClock, RingBuffer

RATE = 44100


def tone(seconds: float, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.tile(0.3 * np.sin(2 * np.pi * frequency * t), (channels, 1))


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    mono = samples if samples.ndim == 1 else samples.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * rate / len(mono))


def mp3_frames(data: bytes) -> list[bytes]:
    """The whole MP3 frames in ``data``, as FFmpeg's MPEG audio parser cuts them (a partial frame is left out)."""
    return [bytes(packet) for packet in av.CodecContext.create("mp3", "r").parse(data)]


def decode_mp3_alone(data: bytes) -> int:
    """Samples (per channel) a fresh MP3 decoder makes of ``data`` and nothing before it."""
    decoder = av.CodecContext.create("mp3", "r")
    frames = [frame for packet in decoder.parse(data) for frame in decoder.decode(packet)] + decoder.decode(None)
    return sum(frame.samples for frame in frames)


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
        frames = mp3_frames(chunk.data)
        assert frames and b"".join(frames) == chunk.data
    ogg = broadcast.streams["ogg"]
    header_pages, rest = split_ogg_pages(ogg.header)
    assert rest == b"" and [page[28:36] for page in header_pages] == [b"OpusHead", b"OpusTags"]
    for chunk in ogg.read(0, 10_000):
        pages, rest = split_ogg_pages(chunk.data)
        assert pages and rest == b""


@pytest.mark.parametrize("channels", [1, 2])
def test_each_mp3_chunk_is_whole_frames_that_decode_on_their_own_and_its_time_counts_them(channels):
    """A listener can start at any chunk: each is whole frames a fresh decoder takes, stamped
    with the stream time of its first frame (1152 samples a frame)."""
    broadcast = encode(channels, seconds=2.0)
    chunks = broadcast.streams["mp3"].read(0, 10_000)
    frames_before = 0
    for chunk in chunks:
        frames = mp3_frames(chunk.data)
        assert frames and b"".join(frames) == chunk.data, "a chunk is not a run of whole MP3 frames"
        assert all(frame[:2] == b"\xff\xfb" and len(frame) in (417, 418) for frame in frames)
        assert decode_mp3_alone(chunk.data) == 1152 * len(frames)
        assert chunk.time == pytest.approx(frames_before * 1152 / RATE)
        frames_before += len(frames)
    assert frames_before * 1152 >= 2.0 * RATE, "the encoder dropped audio at the end"


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


class Capture:
    """A live sink that keeps what it is handed and when (time.monotonic)."""

    def __init__(self):
        self.blocks, self.times, self.closed = [], [], False

    def write(self, samples):
        self.times.append(time.monotonic())
        self.blocks.append(samples.copy())

    def close(self):
        self.closed = True

    def never_ahead_of(self, began: float) -> None:
        """Each block was handed out no sooner than its place in the stream says: real-time pace or
        slower (a loaded machine can only be later), never faster."""
        frames_before = np.cumsum([0] + [block.shape[1] for block in self.blocks[:-1]])
        early = [began + frames / RATE - at for at, frames in zip(self.times, frames_before)]
        assert max(early) <= 1e-3, f"a block went out {max(early):.3f} s before its time"


def test_the_clock_hands_out_the_ring_at_real_time_pace_then_closes_its_sinks():
    audio = tone(1.0)
    ring = RingBuffer(2 * RATE, 1)
    ring.write(np.ascontiguousarray(audio.T.astype(np.float32)), threading.Event())
    ring.closed = True
    capture = Capture()
    clock = RealTimeClock(ring, RATE, [capture])
    began = time.monotonic()
    clock.start()
    clock.drain(30)
    assert capture.closed and clock.underruns == 0
    capture.never_ahead_of(began)
    np.testing.assert_array_equal(np.concatenate(capture.blocks, axis=1), audio.astype(np.float32))


def test_the_clock_fills_an_underrun_with_silence_and_keeps_its_pace():
    ring = RingBuffer(RATE, 1)
    capture = Capture()
    clock = RealTimeClock(ring, RATE, [capture])
    began = time.monotonic()
    clock.start()
    deadline = began + 30
    while clock.frames_out < 0.3 * RATE:  # an empty ring: the clock goes on, with silence
        assert time.monotonic() < deadline, "the clock stopped when the ring ran dry"
        time.sleep(0.01)
    clock.close()
    assert clock.underruns > 0 and clock.silence_frames == clock.frames_out
    assert sum(block.shape[1] for block in capture.blocks) == clock.frames_out
    assert not np.concatenate(capture.blocks, axis=1).any()
    capture.never_ahead_of(began)


def test_a_token_is_needed_beyond_loopback_only():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.7")
    assert needs_token("127.0.0.1", None) is None
    generated = needs_token("0.0.0.0", None)
    assert generated and len(generated) >= 16 and generated != needs_token("0.0.0.0", None)
    assert needs_token("127.0.0.1", "my-own-token") == "my-own-token"


def test_a_broadcast_closed_before_any_audio_ends_its_streams_empty():
    """A station stopped while its first clip is still being made: no encoder has seen audio."""
    broadcast = Broadcast(RATE, 2)
    broadcast.close()
    for stream in broadcast.streams.values():
        assert stream.ended and stream.read(0) == []
