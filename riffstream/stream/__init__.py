"""The stream layer: the only part of riffstream with threads. Data flows one way through it:

* :mod:`~riffstream.stream.options`: :class:`StreamOptions`, what a stream plays, and the checks
  that need no model.
* :mod:`~riffstream.stream.sources`: clip sources make spectrogram images from planned
  clip jobs: :class:`LocalSource` (this process's model, a :class:`ClipModel`: the UNet
  denoises a clip while TAESD decodes the one before; the full VAE takes turns with the UNet)
  or :class:`~riffstream.stream.raypool.RayPool` (workers on a Ray cluster, imported only
  when asked for).
* :mod:`~riffstream.stream.steering`: prompts and settings asked for while it runs, in one place.
* :mod:`~riffstream.stream.dispatcher`: plans clips, keeps a window in flight on the source,
  hands them on in order as :class:`ReadyClip` records.
* :mod:`~riffstream.stream.consumer`: joins them into audio for the sinks and the ring
  buffer, announcing each as a :class:`ClipEvent`; loops the last clip when live play runs dry,
  and takes back audio not yet heard when a steer turns at once.
* :mod:`~riffstream.stream.ring`: the :class:`RingBuffer` the audio waits in, the
  :class:`CutPoint` where it can be cut, and :class:`StreamEnds`, which gives the stream its
  exact length.
* :mod:`~riffstream.stream.clocks`: what empties the ring at the pace it is heard, a
  :class:`Clock`: the sound card's :class:`Player` or a :class:`RealTimeClock`.
* :mod:`~riffstream.stream.pipeline`: the :class:`Stream`, which wires them together, holds the
  play policy and is the one API to steer and read: ``queue_prompt``, ``change_settings``,
  ``queued``, ``status`` (a :class:`StreamStatus`).
"""

from riffstream.stream.clocks import Clock, Player, RealTimeClock
from riffstream.stream.consumer import LOW_WATER, ClipEvent
from riffstream.stream.dispatcher import ReadyClip
from riffstream.stream.options import (
    DEFAULT_STRENGTH,
    EDGE_FADE,
    STEER_MODES,
    StreamOptions,
    crossfade_seconds,
    refuse_remote_continuation,
    tempi,
    validate,
)
from riffstream.stream.pipeline import Stream
from riffstream.stream.ring import CutPoint, CutRequest, RingBuffer, StreamEnds
from riffstream.stream.sources import (
    ClipJob,
    ClipModel,
    ClipSource,
    LocalSource,
    MadeClip,
    continuation_seed,
    denoise_job,
    keep_overlap,
    negative_embedding,
)
from riffstream.stream.status import StreamStats, StreamStatus

__all__ = [
    "DEFAULT_STRENGTH", "EDGE_FADE", "LOW_WATER", "STEER_MODES", "ClipEvent", "ClipJob", "ClipModel", "ClipSource",
    "Clock", "CutPoint", "CutRequest",
    "LocalSource", "MadeClip", "Player", "ReadyClip", "RealTimeClock", "RingBuffer", "Stream", "StreamEnds",
    "StreamOptions", "StreamStats", "StreamStatus", "continuation_seed", "crossfade_seconds", "denoise_job",
    "keep_overlap", "negative_embedding", "refuse_remote_continuation", "tempi", "validate",
]
