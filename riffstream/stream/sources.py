"""Clip sources: where a stream's clips are made.

The stream plans every clip as a :class:`ClipJob` and hands it to a :class:`ClipSource`,
which makes its spectrogram image somewhere and gives it back as a :class:`MadeClip`.
The stream keeps a window of jobs in flight and takes the clips back in order, so the
stitcher, the sinks and the play policy never know where clips are made. Two sources
implement it: :class:`LocalSource`, this process's model, and
:class:`~riffstream.stream.raypool.RayPool`, workers on a Ray cluster. Both run
:func:`denoise_job` and then the VAE's decode, so a clip is the same bytes wherever it is
made.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from riffstream.planner import Clip, blend_embedding, clip_noise, lerp
from riffstream.stream.ring import get_until, put_until
from riffstream.tempo import Slot

if TYPE_CHECKING:
    from PIL import Image

    from riffstream.model import ModelOptions

#: Jobs the local source keeps in flight: one denoising, one decoding, and the next one queued, so that
#: the UNet never waits for the stream to hand it work.
LOCAL_WINDOW = 3


def continuation_seed(previous_latents: np.ndarray, overlap: int, scale: int = 8) -> np.ndarray:
    """The latents a continued clip starts from (img2img): the previous clip's latent columns
    under its last ``overlap`` image columns, then those columns mirrored, tiled to the clip's
    width, so the seed runs on without a jump and keeps the previous clip's sound.

    Working on latents rather than on the decoded image spares a VAE encode per clip and
    lets the denoiser start the next clip before the decoder has painted this one.
    """
    width = previous_latents.shape[-1]
    columns = min(width, max(1, -(-overlap // scale)))
    tail = previous_latents[..., width - columns :]
    mirrored = np.concatenate([tail, tail[..., ::-1]], axis=-1)
    repeats = -(-width // mirrored.shape[-1])
    return np.ascontiguousarray(np.tile(mirrored, repeats)[..., :width])



def keep_overlap(previous: Image.Image, image: Image.Image, overlap: int) -> Image.Image:
    """``image`` with its first ``overlap`` columns replaced by the previous clip's last ones,
    so that the two clips agree exactly where they are crossfaded."""
    from PIL import Image

    if not overlap:
        return image
    pixels = np.array(image.convert("RGB"))
    before = np.asarray(previous.convert("RGB"))
    pixels[:, :overlap] = before[:, before.shape[1] - overlap :]
    return Image.fromarray(pixels)



class ClipModel(Protocol):
    """What a clip source needs of a loaded model (:class:`~riffstream.model.RiffusionModel` is one): text and
    pictures in, latents through the UNet, a spectrogram image out."""

    options: ModelOptions
    latents_shape: tuple[int, ...]
    vae_scale_factor: int
    #: The full VAE takes turns with the UNet instead of overlapping it (see :class:`LocalSource`).
    decoder_takes_turns: bool

    def encode_prompt(self, text: str) -> np.ndarray:
        """The text encoder's embedding of ``text``."""

    def encode_image(self, image: Image.Image) -> np.ndarray:
        """A starting image's latents, for img2img."""

    def denoise(self, prompt_embeds: np.ndarray, negative_prompt_embeds: np.ndarray | None, latents: np.ndarray, *,
                steps: int, guidance: float, init_latents: np.ndarray | None, strength: float,
                on_step: Callable[[int, int], None] | None) -> np.ndarray:
        """The latents of one clip, denoised from the noise ``latents`` (or from ``init_latents`` at ``strength``)."""

    def decode(self, latents: np.ndarray) -> Image.Image:
        """The spectrogram image of ``latents``."""


@dataclass(frozen=True)
class ClipJob:
    """One clip to make, as the stream planned it: what :func:`denoise_job` needs, and nothing of the stream.

    ``init_image`` is the starting image (the init audio's or the tempo loop's). A continued
    clip (``continue_overlap`` > 0) starts instead from the clip before it: from
    ``previous_latents``, or, while that clip is still being made by the same source, from
    the latents the source made last. Jobs pickle, so a remote worker can make them.
    """

    clip: Clip
    slot: Slot
    steps: int
    guidance: float
    strength: float
    negative_prompt: str | None
    init_image: Image.Image | None = None
    #: Image columns this clip shares with the one before, when it continues it (0: it does not).
    continue_overlap: int = 0
    previous_latents: np.ndarray | None = None


def denoise_job(model: ClipModel, job: ClipJob, encoded: dict | None = None,
                on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The latents of ``job``'s clip: prompt (or blend) embeddings lerped, seed noise slerped, and img2img
    from its starting image if it has one. The local stream and Ray workers both run this, so a clip
    is the same wherever it is made. ``encoded`` caches starting images' latents between calls."""
    from riffstream.model import noise_for_seed

    clip = job.clip
    embeds = lerp(blend_embedding(model.encode_prompt, clip.prompt_a),
                  blend_embedding(model.encode_prompt, clip.prompt_b), clip.alpha)
    noise = clip_noise(clip, lambda seed: noise_for_seed(seed, model.latents_shape))
    init_latents = None
    if job.continue_overlap and job.previous_latents is not None:
        init_latents = continuation_seed(job.previous_latents, job.continue_overlap, model.vae_scale_factor)
    elif job.init_image is not None:
        encoded = {} if encoded is None else encoded
        key = hashlib.sha1(job.init_image.tobytes()).hexdigest()
        if key not in encoded:
            if len(encoded) >= 64:
                encoded.clear()
            encoded[key] = model.encode_image(job.init_image)
        init_latents = encoded[key]
    return model.denoise(embeds, negative_embedding(model, clip, job.negative_prompt), noise, steps=job.steps,
                         guidance=job.guidance, init_latents=init_latents, strength=job.strength, on_step=on_step)


def negative_embedding(model: ClipModel, clip: Clip, negative_prompt: str | None) -> np.ndarray | None:
    """A clip's negative embedding: its ends' (a timeline's) lerped, else ``negative_prompt``'s; None for none."""
    if clip.negative_a is None and clip.negative_b is None:
        return blend_embedding(model.encode_prompt, negative_prompt) if negative_prompt else None
    ends = [blend_embedding(model.encode_prompt, text) if text else model.encode_prompt("")
            for text in (clip.negative_a or negative_prompt, clip.negative_b or negative_prompt)]
    return lerp(ends[0], ends[1], clip.alpha)


@dataclass(frozen=True)
class MadeClip:
    """A clip a source has made: its spectrogram image, its latents where the source keeps them (for
    continuation), and what the model spent on it. ``denoise_span`` is when its denoising ran, on this
    machine's monotonic clock (None for a clip made elsewhere)."""

    image: Image.Image
    latents: np.ndarray | None = None
    denoise_seconds: float = 0.0
    decode_seconds: float = 0.0
    denoise_span: tuple[float, float] | None = None

    @property
    def model_seconds(self) -> float:
        """Time the model took to make the clip, denoising and decoding."""
        return self.denoise_seconds + self.decode_seconds


@runtime_checkable
class ClipSource(Protocol):
    """Something that makes clips from clip jobs, several at once, and hands each back when asked.

    ``options`` says what it makes (the model's :class:`~riffstream.model.ModelOptions`: its
    image size above all); ``window`` is how many jobs it wants in flight to stay busy;
    ``chains`` whether it makes jobs one after another, in order, so that a clip can
    continue the one before (``--continuation``).
    """

    options: ModelOptions
    window: int
    chains: bool

    def submit(self, job: ClipJob) -> object:
        """Start making ``job``'s clip; a handle for the other calls."""

    def collect(self, handle: object, timeout: float) -> MadeClip | None:
        """The clip once it is made, else None after ``timeout`` seconds; a fault that loses it is an error."""

    def started(self, handle: object) -> bool:
        """Whether the clip is being made already (a change of plan then keeps it; a queued one is dropped)."""

    def cancel(self, handle: object) -> None:
        """Drop a clip no longer wanted: a queued one is never made, one being made is abandoned or left unused."""

    def close(self) -> None:
        """Stop making clips and let go of what the source holds."""


class _Abandoned(Exception):
    """Raised inside the model's step callback to give up a clip that was cancelled or whose source closed."""


class _Ticket:
    """A job in the local source, from submission until it is made (or dropped)."""

    def __init__(self, job: ClipJob) -> None:
        self.job = job
        self.started = False
        self.cancelled = False
        self.made: MadeClip | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class LocalSource:
    """Clips made by a model in this process. With a small decoder (TAESD) two threads make them: the
    UNet denoises a clip while the decoder decodes the one before, so the UNet never waits for it.
    With the full VAE on a CPU one thread denoises and then decodes each clip. Measured on the full-size
    model on two cores: overlapping made 8 TAESD clips 9% faster, but gained nothing consistent
    with the VAE (3 clips: 8% slower in bf16, 3% faster in f32), and the VAE's working memory
    (0.75 GB at 512x512) beside the UNet's was the peak of a quality render: taking turns
    lowered that peak by 0.3 GB in bf16 and 0.4 GB in f32.

    Jobs are made in the order they are submitted, so a continued clip can start from the latents of
    the clip submitted just before it. A model error reaches the caller of :meth:`collect`.
    """

    window = LOCAL_WINDOW
    chains = True

    def __init__(self, model: ClipModel) -> None:
        self.model = model
        self.options = model.options
        self._jobs: queue.Queue[_Ticket] = queue.Queue()
        self._to_decode: queue.Queue[tuple[_Ticket, np.ndarray, float, tuple[float, float]]] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._encoded: dict = {}  # starting images' latents, by the image's digest
        self._latest: np.ndarray | None = None  # the latents made last, for a continued clip
        self._in_turn = bool(model.decoder_takes_turns)
        self._threads = [threading.Thread(target=self._denoise, name="riffstream-denoiser", daemon=True)]
        if not self._in_turn:
            self._threads.append(threading.Thread(target=self._decode, name="riffstream-decoder", daemon=True))

    def submit(self, job: ClipJob) -> _Ticket:
        """Queue ``job``; it is made after every job submitted before it. The threads start with the first job."""
        if self._threads[0].ident is None:
            for thread in self._threads:
                thread.start()
        ticket = _Ticket(job)
        self._jobs.put(ticket)
        return ticket

    def collect(self, handle: _Ticket, timeout: float) -> MadeClip | None:
        """The clip once made, else None after ``timeout`` seconds; the model's error if it failed."""
        if not handle.done.wait(timeout):
            return None
        if handle.error is not None:
            raise handle.error
        return handle.made

    def started(self, handle: _Ticket) -> bool:
        """Whether the denoiser has taken the job."""
        return handle.started

    def cancel(self, handle: _Ticket) -> None:
        """Drop the job; if it is being denoised, give up at the next step."""
        handle.cancelled = True

    def close(self, timeout: float = 1.0) -> None:
        """Stop both threads: a clip being denoised is given up at its next step. A decode in progress
        cannot be interrupted; its thread ends on its own, unused."""
        self._closed.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _check(self, ticket: _Ticket) -> None:
        if ticket.cancelled or self._closed.is_set():
            raise _Abandoned

    def _denoise(self) -> None:
        while (ticket := get_until(self._jobs, self._closed)) is not None:
            if ticket.cancelled:
                continue
            ticket.started = True
            job = ticket.job
            if job.continue_overlap and job.previous_latents is None:
                job = replace(job, previous_latents=self._latest)
            began = time.monotonic()
            marks = [began]
            try:
                latents = denoise_job(self.model, job, self._encoded,
                                      on_step=lambda i, n: (marks.append(time.monotonic()), self._check(ticket)))
            except _Abandoned:
                continue
            except BaseException as error:  # handed to the stream through collect()
                ticket.error = error
                ticket.done.set()
                continue
            self._latest = latents
            denoised = (ticket, latents, marks[-1] - began, (began, marks[-1]))
            if self._in_turn:
                self._finish(*denoised)
            else:
                put_until(self._to_decode, denoised, self._closed)

    def _decode(self) -> None:
        while (item := get_until(self._to_decode, self._closed)) is not None:
            self._finish(*item)

    def _finish(self, ticket: _Ticket, latents: np.ndarray, denoise_seconds: float,
                span: tuple[float, float]) -> None:
        """Decode a denoised clip and hand it to whoever waits for it."""
        if ticket.cancelled:
            return
        began = time.monotonic()
        try:
            image = self.model.decode(latents)
        except BaseException as error:  # handed to the stream through collect()
            ticket.error = error
        else:
            ticket.made = MadeClip(image, latents, denoise_seconds, time.monotonic() - began, span)
        ticket.done.set()


def clip_source(model_or_source: ClipSource | ClipModel) -> tuple[ClipSource, bool]:
    """``model_or_source`` as a clip source, and whether it was made here (a local model is wrapped in a
    :class:`LocalSource`, which whoever asked must close)."""
    if isinstance(model_or_source, ClipSource):
        return model_or_source, False
    return LocalSource(model_or_source), True
