"""The stream layer: the only part of riffstream with threads. Data flows one way through it:

* :mod:`~riffstream.stream.sources`: clip sources make spectrogram images from planned
  clip jobs: :class:`LocalSource` (this process's model: the UNet denoises a clip while
  TAESD decodes the one before; the full VAE takes turns with the UNet) or
  :class:`~riffstream.stream.raypool.RayPool` (workers on a Ray cluster, imported only
  when asked for).
* :mod:`~riffstream.stream.pipeline`: the :class:`Stream` plans clips, keeps a window of
  them in flight on its source, joins them into audio in order, and hands the audio to
  its sinks and ring buffer; it decides when live play may start.
* :mod:`~riffstream.stream.ring`: the :class:`RingBuffer` the audio waits in, the
  :class:`RealTimeClock` that empties it at the pace it is heard when there is no sound
  card, and :class:`StreamEnds`, which gives the stream its exact length.
* :mod:`~riffstream.stream.prompts`: lines typed while it plays, queued as transitions.
"""

from riffstream.stream.pipeline import (
    DEFAULT_STRENGTH,
    EDGE_FADE,
    LOW_WATER,
    ClipEvent,
    Stream,
    StreamOptions,
    StreamStats,
    crossfade_seconds,
    refuse_remote_continuation,
    tempi,
    validate,
)
from riffstream.stream.prompts import read_prompts, typed_text
from riffstream.stream.ring import RealTimeClock, RingBuffer, StreamEnds
from riffstream.stream.sources import (
    ClipJob,
    ClipSource,
    LocalSource,
    MadeClip,
    continuation_seed,
    denoise_job,
    keep_overlap,
    negative_embedding,
)

__all__ = [
    "DEFAULT_STRENGTH", "EDGE_FADE", "LOW_WATER", "ClipEvent", "ClipJob", "ClipSource", "LocalSource", "MadeClip",
    "RealTimeClock", "RingBuffer", "Stream", "StreamEnds", "StreamOptions", "StreamStats", "continuation_seed",
    "crossfade_seconds", "denoise_job", "keep_overlap", "negative_embedding", "read_prompts",
    "refuse_remote_continuation", "tempi", "typed_text", "validate",
]
