"""Broadcast: the live audio encoded once per format, its bytes fanned out to any number of listeners.

:class:`Broadcast` is a sink. Each ``write`` encodes the block once per format (MP3 with
LAME, Ogg Opus with FFmpeg's libopus through PyAV) and appends the result to that format's
:class:`EncodedStream`: a bounded log of chunks that every listener reads from with a cursor
of its own. Memory is the log's, however many listeners come and go, and a listener that
stops reading only falls off the end of the log: it never slows the encoder or anyone else.

Chunks are cut where a decoder may start: MP3 at whole frames, Ogg at whole pages (after
the two Opus header pages, which every listener gets first). So a listener can join at any
chunk, and one who joins late starts a short burst before the live point, which a player
buffers at once and plays within a second.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: How much encoded audio each format keeps for late joiners and slow readers, seconds.
KEEP_SECONDS = 30.0
#: MP3 bit rate, kbit/s: transparent enough for generated music, 16 kB/s a listener.
MP3_KBPS = 128
#: Opus bit rate, bit/s, and its only sample rate.
OPUS_BPS = 128_000
OPUS_RATE = 48_000
#: Longest Ogg page, microseconds: short pages keep the stream smooth and joins quick.
OGG_PAGE_US = 100_000

#: MPEG-1 Layer III bit rates (kbit/s) by header index, and sample rates by header index.
_MP3_KBPS = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_RATES = (44100, 48000, 32000)
_MP3_FRAME_SAMPLES = 1152


class FellBehind(Exception):
    """A listener's cursor points at chunks the log no longer keeps."""


@dataclass(frozen=True)
class Chunk:
    """Encoded bytes a decoder can start at, and the stream time (seconds) where their audio begins."""

    data: bytes
    time: float


class EncodedStream:
    """One format's encoded bytes: header, then a bounded log of chunks read by cursors.

    The encoder thread appends; any number of readers (threads or an event loop) call
    :meth:`read` with the sequence number of the last chunk they have. ``on_append``
    callbacks run after each append, in the encoder's thread: they must only hand off
    (``loop.call_soon_threadsafe``), never block.
    """

    def __init__(self, name: str, media_type: str, keep_seconds: float = KEEP_SECONDS) -> None:
        self.name, self.media_type, self.keep_seconds = name, media_type, keep_seconds
        self.header = b""
        self.ended = False
        self.on_append: list[Callable[[], None]] = []
        self._chunks: deque[Chunk] = deque()
        self._first = 0  # sequence number of self._chunks[0]
        self._lock = threading.Lock()

    @property
    def latest_time(self) -> float:
        """Stream time of the newest chunk (0 before any)."""
        chunks = self._chunks
        return chunks[-1].time if chunks else 0.0

    @property
    def next_sequence(self) -> int:
        """Sequence number the next appended chunk will have."""
        return self._first + len(self._chunks)

    def append(self, chunk: Chunk) -> None:
        """Add a chunk (the encoder's thread), dropping those older than ``keep_seconds``."""
        with self._lock:
            self._chunks.append(chunk)
            while len(self._chunks) > 1 and chunk.time - self._chunks[0].time > self.keep_seconds:
                self._chunks.popleft()
                self._first += 1
        self._notify()

    def end(self) -> None:
        """No more chunks will come: readers finish once they have read the rest."""
        self.ended = True
        self._notify()

    def _notify(self) -> None:
        for callback in list(self.on_append):
            callback()

    def join_point(self, burst_seconds: float) -> int:
        """Cursor for a new listener: the chunk about ``burst_seconds`` before the newest."""
        with self._lock:
            if not self._chunks:
                return self._first
            newest = self._chunks[-1].time
            for offset, chunk in enumerate(self._chunks):
                if newest - chunk.time <= burst_seconds:
                    return self._first + offset
            return self.next_sequence - 1

    def read(self, cursor: int, limit: int = 64) -> list[Chunk]:
        """Chunks from sequence number ``cursor`` on (at most ``limit``); raises FellBehind if they are gone."""
        with self._lock:
            if cursor < self._first:
                raise FellBehind
            start = cursor - self._first
            return [self._chunks[i] for i in range(start, min(len(self._chunks), start + limit))]


def split_mp3_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole MPEG-1 Layer III frames from the front of ``data``, and the bytes left over."""
    frames, position = [], 0
    while len(data) - position >= 4:
        header = int.from_bytes(data[position : position + 4], "big")
        kbps_index, rate_index = (header >> 12) & 0xF, (header >> 10) & 0x3
        if header >> 21 != 0x7FF or (header >> 17) & 0x3 != 1 or not 0 < kbps_index < 15 or rate_index == 3:
            position = _resync(data, position + 1)
            continue
        length = 144_000 * _MP3_KBPS[kbps_index] // _MP3_RATES[rate_index] + ((header >> 9) & 1)
        if len(data) - position < length:
            break
        frames.append(data[position : position + length])
        position += length
    return frames, data[position:]


def _resync(data: bytes, start: int) -> int:
    found = data.find(b"\xff", start)
    return len(data) if found < 0 else found


def split_ogg_pages(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole Ogg pages from the front of ``data``, and the bytes left over."""
    pages, position = [], 0
    while len(data) - position >= 27:
        if data[position : position + 4] != b"OggS":
            found = data.find(b"OggS", position + 1)
            position = len(data) if found < 0 else found
            continue
        segments = data[position + 26]
        if len(data) - position < 27 + segments:
            break
        length = 27 + segments + sum(data[position + 27 : position + 27 + segments])
        if len(data) - position < length:
            break
        pages.append(data[position : position + length])
        position += length
    return pages, data[position:]


def ogg_granule(page: bytes) -> int:
    """A page's granule position (samples at 48 kHz for Opus; -1 when no packet ends on it)."""
    return int.from_bytes(page[6:14], "little", signed=True)


def _pcm16(samples: np.ndarray) -> np.ndarray:
    """(channels, n) float audio as interleaved 16-bit integers."""
    clipped = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    return np.ascontiguousarray((clipped.T * 32767.0).round().astype(np.int16))


class Mp3Encoder:
    """Float audio to whole MPEG-1 Layer III frames (LAME, constant bit rate)."""

    name, media_type = "mp3", "audio/mpeg"

    def __init__(self, sample_rate: int, channels: int, kbps: int = MP3_KBPS) -> None:
        import lameenc

        self._encoder = lameenc.Encoder()
        self._encoder.set_bit_rate(kbps)
        self._encoder.set_in_sample_rate(sample_rate)
        self._encoder.set_channels(channels)
        self._encoder.set_quality(2)
        self.sample_rate = sample_rate
        self._pending = b""
        self._frames = 0
        self._started = False
        self.header = b""

    def encode(self, samples: np.ndarray) -> list[Chunk]:
        """Encode a block; returns the whole frames it completed, as one chunk."""
        self._started = True
        return self._cut(self._encoder.encode(_pcm16(samples).tobytes()))

    def flush(self) -> list[Chunk]:
        """The last frames, once the stream has ended (none if it ended before any audio: LAME then has nothing
        to flush and raises)."""
        if not self._started:
            return []
        return self._cut(self._encoder.flush())

    def _cut(self, data: bytes) -> list[Chunk]:
        frames, self._pending = split_mp3_frames(self._pending + bytes(data))
        if not frames:
            return []
        chunk = Chunk(b"".join(frames), self._frames * _MP3_FRAME_SAMPLES / self.sample_rate)
        self._frames += len(frames)
        return [chunk]


class _Bytes:
    """The write-only file PyAV's muxer writes the Ogg stream into."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


class OpusEncoder:
    """Float audio to whole Ogg Opus pages at 48 kHz (resampled once, by libswresample)."""

    name, media_type = "ogg", "audio/ogg"

    def __init__(self, sample_rate: int, channels: int, bit_rate: int = OPUS_BPS) -> None:
        import av

        self._layout = "stereo" if channels == 2 else "mono"
        self.sample_rate = sample_rate
        self._out = _Bytes()
        self._container = av.open(self._out, mode="w", format="ogg", options={"page_duration": str(OGG_PAGE_US)})
        self._stream = self._container.add_stream("libopus", rate=OPUS_RATE, layout=self._layout)
        self._stream.bit_rate = bit_rate
        self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=OPUS_RATE, frame_size=960)
        self._frame_class = av.AudioFrame
        self._pending = b""
        self.header = b""
        self._pre_skip = 0
        self._granule = 0  # where the pages emitted so far end, in 48-kHz samples
        # Opening the stream writes the two header pages (OpusHead, OpusTags) at once.
        self._encode(None)

    def encode(self, samples: np.ndarray) -> list[Chunk]:
        """Encode a block; returns the pages it completed, as one chunk."""
        interleaved = np.ascontiguousarray(np.clip(np.asarray(samples, np.float32), -1, 1).T).reshape(1, -1)
        frame = self._frame_class.from_ndarray(interleaved, format="flt", layout=self._layout)
        frame.sample_rate = self.sample_rate
        return self._encode(frame)

    def flush(self) -> list[Chunk]:
        """The last pages, once the stream has ended."""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._pages()

    def _encode(self, frame) -> list[Chunk]:
        if frame is not None:
            for resampled in self._resampler.resample(frame):
                for packet in self._stream.encode(resampled):
                    self._container.mux(packet)
        else:
            self._container.start_encoding()
        return self._pages()

    def _pages(self) -> list[Chunk]:
        pages, self._pending = split_ogg_pages(self._pending + self._out.take())
        audio = []
        for page in pages:
            payload = page[27 + page[26] :]
            if payload.startswith((b"OpusHead", b"OpusTags")):
                if payload.startswith(b"OpusHead"):
                    self._pre_skip = int.from_bytes(payload[10:12], "little")
                self.header += page
            else:
                audio.append(page)
        if not audio:
            return []
        start = max(self._granule - self._pre_skip, 0) / OPUS_RATE
        self._granule = max([self._granule, *map(ogg_granule, audio)])
        return [Chunk(b"".join(audio), start)]


ENCODERS = {"mp3": Mp3Encoder, "ogg": OpusEncoder}


class Broadcast:
    """A live sink: encodes each block once per format and appends it to that format's stream.

    ``streams[name]`` is the :class:`EncodedStream` listeners read (``"mp3"``, ``"ogg"``).
    """

    def __init__(self, sample_rate: int, channels: int, formats: tuple[str, ...] = ("mp3", "ogg")) -> None:
        self._encoders = [ENCODERS[name](sample_rate, channels) for name in formats]
        self.streams = {encoder.name: EncodedStream(encoder.name, encoder.media_type) for encoder in self._encoders}
        for encoder in self._encoders:
            self.streams[encoder.name].header = encoder.header

    def write(self, samples: np.ndarray) -> None:
        """Encode (channels, n) float audio into every format."""
        for encoder in self._encoders:
            for chunk in encoder.encode(samples):
                self.streams[encoder.name].append(chunk)

    def close(self) -> None:
        """Flush every encoder and end the streams (idempotent)."""
        for encoder in self._encoders:
            stream = self.streams[encoder.name]
            if stream.ended:
                continue
            for chunk in encoder.flush():
                stream.append(chunk)
            stream.end()
