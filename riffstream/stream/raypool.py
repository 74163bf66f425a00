"""Clips made on a Ray cluster: a pool of actors, each holding a loaded model.

Once planned (prompt embeddings lerped, seed noise slerped, clip by clip), the clips of a
stream are independent, so they can be made anywhere at once and joined in order. The
stream plans each clip exactly as it does locally, as a :class:`~riffstream.stream.sources.ClipJob`,
and sends it to a worker. The worker runs the same :func:`~riffstream.stream.sources.denoise_job`
and decode as the local source and returns the spectrogram's pixels. :class:`RayPool` is
a :class:`~riffstream.stream.sources.ClipSource`, like the local one.

Workers return images rather than latents because decoding is the costliest part after
the UNet (the VAE decoder is 2.5 TFLOP a clip): it belongs beside the model, and the
machine that stitches then needs no model at all. An image is 768 KB of uint8 pixels for
a 512 x 512 clip (its 64 x 64 latents would be 64 KB).

Faults are Ray's to handle: a worker that dies mid-clip is restarted (``max_restarts``)
and its clip retried (``max_task_retries``), on its node or any other with room. A worker
lost with no room to restart (its node gone) would hold its clips for ever, so a clip
long overdue is sent again to the others. Results are taken by clip, in order, so
nothing is lost or repeated. This module holds no threads; the stream's dispatcher
drives it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from riffstream.errors import RiffstreamError, SourceLost
from riffstream.stream.sources import ClipJob, MadeClip

#: A clip not back after this many times the usual clip time (and at least OVERDUE_FLOOR seconds) marks its
#: worker as lost: its clips are sent again to the others. Ray restarts a dead worker only where there is room;
#: a lost node with no spare CPU elsewhere would otherwise hold its clips for ever.
OVERDUE_FACTOR = 4.0
OVERDUE_FLOOR = 15.0
#: Seconds between checks that the cluster is still there while waiting for a clip. Ray itself gives up
#: on a lost head only after a minute, by ending the whole process; the stream must end first, cleanly.
HEALTH_EVERY = 2.0


def _ray():
    # Ray's core logs its retries to stderr as warnings; the command line speaks for itself.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError:
        raise RiffstreamError("--ray needs Ray, an optional extra: pip install 'riffstream[ray]'") from None
    return ray


class ClipWorker:
    """A Ray actor: one loaded model that turns clip jobs into spectrogram pixels."""

    def __init__(self, options) -> None:
        from riffstream.model import RiffusionModel

        self.model = RiffusionModel.load(options, progress=False)
        self.encoded: dict = {}

    def make(self, job: ClipJob) -> tuple[np.ndarray, float, int]:
        """(pixels (H, W, 3) uint8, seconds the model took, this worker's process id)."""
        from riffstream.stream.sources import denoise_job

        began = time.monotonic()
        image = self.model.decode(denoise_job(self.model, job, self.encoded))
        return np.asarray(image.convert("RGB")), time.monotonic() - began, os.getpid()

    def pid(self) -> int:
        """The worker's process id (it answers once the model is loaded)."""
        return os.getpid()


@dataclass(eq=False)
class _Sent:
    """A clip on its way: the job, the worker it went to, when, and Ray's reference to the result."""

    job: ClipJob
    worker: int
    when: float
    result: object = field(repr=False)


class RayPool:
    """Workers on a Ray cluster, for the stream to send clip jobs to: a :class:`~riffstream.stream.sources.ClipSource`.

    ``address`` is a cluster to join (``ray://...``, ``HOST:PORT`` or ``auto``); None starts a
    local one unless ``RAY_ADDRESS`` names one. ``workers`` actors are made (default: one per
    ``threads`` CPUs the cluster has), each with the model loaded from ``options``.
    """

    def __init__(self, options, address: str | None = None, workers: int | None = None) -> None:
        ray = _ray()
        self.options = options
        threads = options.threads or 1
        joining = address or os.environ.get("RAY_ADDRESS")
        try:
            if not ray.is_initialized():
                with _quiet_stderr():
                    ray.init(address=joining, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                             **({} if joining else {"num_cpus": os.cpu_count()}))
            cpus = int(ray.cluster_resources().get("CPU", 0))
            host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
            self._head = (host, int(port))
        except Exception as error:  # Ray raises ConnectionError, RuntimeError, its own errors ...
            detail = _first_line(error)
            causes = [error]
            while causes[-1].__cause__ is not None and len(causes) < 10:
                causes.append(causes[-1].__cause__)
            if any("Authentication" in str(cause) or "AuthenticationError" in type(cause).__name__ for cause in causes):
                detail = ("it wants the cluster's token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                          "~/.ray/auth_token) as on its nodes")
            raise RiffstreamError(f"cannot reach the Ray cluster at {joining or 'a new local cluster'}: "
                                  f"{detail[:200]}") from None
        self.workers = workers or max(1, cpus // threads)
        if cpus < threads:
            raise RiffstreamError(f"the Ray cluster has {cpus} CPUs: too few for a worker of {threads} threads")
        actor = ray.remote(num_cpus=threads, max_restarts=-1, max_task_retries=-1)(ClipWorker)
        worker_options = replace(options, threads=threads)
        self._actors = [actor.remote(worker_options) for _ in range(self.workers)]
        self._next = 0
        #: Clips in flight at once: enough to keep every worker busy while the next result travels.
        self.window = 2 * self.workers
        #: Its workers make clips side by side, so a clip cannot continue the one before.
        self.chains = False
        self._checked = time.monotonic()
        self.lost = False
        self._sent: list[_Sent] = []  # clips on their way, oldest first
        self._took: list[float] = []  # recent clip times, seconds
        self._suspects: set[int] = set()  # workers whose clips are overdue

    def wait_ready(self, timeout: float = 600.0) -> list[int]:
        """Wait until every worker has loaded its model; their process ids."""
        ray = _ray()
        try:
            return ray.get([actor.pid.remote() for actor in self._actors], timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            raise RiffstreamError(f"the Ray workers did not load the model within {timeout:g} s") from None
        except ray.exceptions.RayError as error:
            raise RiffstreamError(f"a Ray worker cannot load the model: {_first_line(error)}") from None

    def submit(self, job: ClipJob) -> _Sent:
        """Start making ``job``'s clip on the next worker not thought lost; a handle for :meth:`collect`."""
        live = [n for n in range(len(self._actors)) if n not in self._suspects] or list(range(len(self._actors)))
        number = live[self._next % len(live)]
        self._next += 1
        sent = _Sent(job, number, time.monotonic(), self._actors[number].make.remote(job))
        self._sent.append(sent)
        return sent

    def started(self, handle: _Sent) -> bool:
        """Whether the clip is being made: a worker makes its clips one at a time, in the order sent, so
        the oldest one it holds is the one it is making (unless the worker is thought lost)."""
        if handle.worker in self._suspects:
            return False
        return next((sent for sent in self._sent if sent.worker == handle.worker), None) is handle

    def collect(self, handle: _Sent, timeout: float) -> MadeClip | None:
        """The clip once made, else None after ``timeout`` seconds.

        A clip so late that its worker must be lost is sent again, with every other clip that worker
        holds, to the others. A cluster that has gone away is a :class:`SourceLost` error.
        """
        from PIL import Image

        ray = _ray()
        done, _ = ray.wait([handle.result], timeout=timeout)
        if not done:
            if time.monotonic() - self._checked > HEALTH_EVERY:
                self._checked = time.monotonic()
                self._check_cluster()
            if self._overdue(handle):
                lost = [handle] + [sent for sent in self._sent if sent.worker in self._suspects and sent is not handle]
                for sent in lost:
                    self._send_again(sent)
            return None
        try:
            pixels, seconds, _ = ray.get(handle.result)
        except ray.exceptions.RayError as error:
            raise SourceLost(f"the Ray cluster could not make a clip: {_first_line(error)}") from None
        self._forget(handle)
        self._took = (self._took + [time.monotonic() - handle.when])[-32:]
        self._suspects.discard(handle.worker)  # it answers after all
        return MadeClip(Image.fromarray(pixels), denoise_seconds=seconds)

    def cancel(self, handle: _Sent) -> None:
        """Drop a clip no longer wanted (a queued job is cancelled; a running one finishes unused)."""
        self._forget(handle)
        try:
            _ray().cancel(handle.result)
        except Exception:  # cancelling is best effort: the result is dropped either way
            pass

    def _overdue(self, handle: _Sent) -> bool:
        """Whether ``handle``'s clip is so late that its worker is taken as lost."""
        usual = sorted(self._took)[len(self._took) // 2] if self._took else 0.0
        if time.monotonic() - handle.when <= max(OVERDUE_FLOOR, OVERDUE_FACTOR * usual):
            return False
        if len(self._suspects) + 1 < len(self._actors):
            self._suspects.add(handle.worker)
        return True

    def _send_again(self, handle: _Sent) -> None:
        """Send ``handle``'s job to a worker not thought lost, in place (the first copy is dropped)."""
        try:
            _ray().cancel(handle.result)
        except Exception:  # best effort: a lost worker's copy never comes back anyway
            pass
        self._forget(handle)
        fresh = self.submit(handle.job)
        handle.worker, handle.when, handle.result = fresh.worker, fresh.when, fresh.result
        self._sent[-1] = handle

    def _forget(self, handle: _Sent) -> None:
        self._sent = [sent for sent in self._sent if sent is not handle]

    def _check_cluster(self) -> None:
        """SourceLost if the cluster's head no longer answers (asking Ray would block until it gives up)."""
        try:
            socket.create_connection(self._head, timeout=2.0).close()
        except OSError as error:
            self.lost = True
            raise SourceLost(f"lost the Ray cluster: its head at {self._head[0]}:{self._head[1]} does not answer "
                             f"({error.strerror or error})") from None

    def close(self) -> None:
        """Let the workers go (and stop a local cluster this pool started)."""
        if self.lost:  # nothing to release, and Ray would wait a minute for the head
            return
        ray = _ray()
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # an actor already gone needs no killing
                pass
        if ray.is_initialized():
            ray.shutdown()


@contextlib.contextmanager
def _quiet_stderr():
    """Ray's core (C++) logs each failed try to connect straight to file descriptor 2: hold it back."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__
