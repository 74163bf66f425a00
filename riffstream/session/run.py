"""The one path every generation command runs: load where clips are made, announce, run, sum up.

A render or live play (:func:`generate`), and a served station (:func:`serve`), differ only in their
sinks and clock; the model or Ray pool is opened the same way (:func:`clip_source`). The session
never prints: it reports through a :class:`Reporter` the caller gives (the terminal's, or a
program's), and hands back the closing line of a finished file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from riffstream.errors import RiffstreamError, SourceLost, Terminated, WriteFailed
from riffstream.journal import FinishedClip, Journal
from riffstream.model.options import TINY_MODEL
from riffstream.server import CONTROL_CALLS, DEFAULT_MAX_LISTENERS
from riffstream.session.plan import GenerationPlan, GenerationRequest, journal_plan, plan_generation
from riffstream.sinks import AudioFileWriter, claim_output
from riffstream.sinks.broadcast import Broadcast
from riffstream.sinks.midi import MidiWriter
from riffstream.session.inputs import stream_tempo
from riffstream.stream import ClipSource, Player, RealTimeClock, Stream, refuse_remote_continuation

# The model (OpenVINO, diffusers), Ray and the server's web stack are imported inside the functions that
# use them: --help and argument errors then answer at once, and need none of the extras installed.
if TYPE_CHECKING:
    from riffstream.model import RiffusionModel
    from riffstream.server.icecast import IcecastTarget

#: Clips ``riffstream serve`` buffers ahead of its listeners: few, so that a new prompt is heard soon.
SERVE_AHEAD_CLIPS = 2
#: What ``riffstream serve`` plays when no prompt is given (the page steers it from there).
DEFAULT_SERVE_PROMPT = "lofi hip hop beat"


class Reporter(Protocol):
    """Where a session's lines and progress go."""

    def say(self, line: str) -> None:
        """Show one line of news (a note, a warning, what is being done)."""

    def watch(self, stream: Stream) -> AbstractContextManager[Callable[[Stream], None]]:
        """While the stream runs: a ``tick(stream)`` to call every tenth of a second; on leaving, any lines the
        stream still has are shown."""


@dataclass(frozen=True)
class ServeRequest:
    """Where and how ``serve`` serves, as plain values."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_listeners: int = DEFAULT_MAX_LISTENERS
    control_rate: int = CONTROL_CALLS
    icecast: IcecastTarget | None = None
    icecast_format: str = "mp3"


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


class _SayHandler(logging.Handler):
    """The model store's few progress lines (downloading, exporting, cached where), said as news."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(record.getMessage())


@contextlib.contextmanager
def model_stack(failure: str, say: Callable[[str], None]) -> Iterator[None]:
    """Quiet the model libraries, say the store's progress lines, and turn anything unexpected they raise into
    one line starting with ``failure``."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "optimum", "nncf", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    store_log = logging.getLogger("riffstream.model")
    for handler in [h for h in store_log.handlers if isinstance(h, _SayHandler)]:
        store_log.removeHandler(handler)
    store_log.addHandler(_SayHandler(say))
    store_log.setLevel(logging.INFO)
    store_log.propagate = False
    try:
        yield
    except (RiffstreamError, KeyboardInterrupt):
        raise
    except Exception as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise RiffstreamError(f"{failure}: {detail[:300]}") from None


def load_model(plan: GenerationPlan, say: Callable[[str], None]) -> RiffusionModel:
    """The plan's model, loaded (or its fallback, if the Hub is unreachable and the model is not cached)."""
    progress = not plan.request.no_progress
    with model_stack(f"cannot load model {plan.model.model!r}", say):
        from riffstream.model import RiffusionModel
        from riffstream.model.hub import HubUnreachable

        say(f"loading {plan.model.model} ...")
        began = time.monotonic()
        try:
            model = RiffusionModel.load(plan.model, progress=progress)
        except HubUnreachable as error:
            if plan.fallback is None:
                raise
            say(f"note: {error} Using {plan.fallback.model} instead.")
            model = RiffusionModel.load(plan.fallback, progress=progress)
    say(f"model ready in {time.monotonic() - began:.1f} s")
    return model


@contextlib.contextmanager
def clip_source(plan: GenerationPlan, say: Callable[[str], None]) -> Iterator[ClipSource | RiffusionModel]:
    """Where the plan's clips are made, ready: this process's model, or a pool of Ray workers (closed after)."""
    with contextlib.ExitStack() as stack:
        if plan.request.ray is None:
            source = load_model(plan, say)
            tiny = source.is_tiny  # the fallback model may be the tiny one
        else:
            source = stack.enter_context(_ray_pool(plan, say))
            tiny = plan.model.model == TINY_MODEL
        if tiny:
            say("note: the tiny model has random weights: its output is noise, not music")
        yield source


@contextlib.contextmanager
def _ray_pool(plan: GenerationPlan, say: Callable[[str], None]) -> Iterator[ClipSource]:
    """A pool of Ray workers holding the plan's model, ready (closed after)."""
    refuse_remote_continuation(plan.stream)  # before the workers start
    with model_stack("cannot start the Ray workers", say):
        from riffstream.stream.raypool import RayPool

        began = time.monotonic()
        say("starting Ray workers ...")
        pool = RayPool(plan.model, plan.request.ray or None, plan.request.ray_workers)
    try:
        with model_stack(f"cannot load model {plan.model.model!r} on the Ray workers", say):
            pool.wait_ready()
        say(f"{pool.workers} Ray workers ready in {time.monotonic() - began:.1f} s")
        if plan.model.threads is None:
            say("note: each Ray worker runs 1 thread: the audio differs from a local render's unless both are "
                "given the same --threads")
        yield pool
    finally:
        pool.close()


def summary(stream: Stream) -> str:
    """What a finished run made, how fast, and how live play went."""
    status = stream.status()
    parts = [f"made {status.made_seconds:.1f} s of audio in {status.elapsed_seconds:.1f} s",
             f"{status.real_time_factor:.3f}x real time"]
    if status.live:
        parts.append(f"{status.underruns} underruns")
        if status.loops:
            parts.append(f"looped the last clip {status.loops} times while waiting for the model")
    return "; ".join(parts)


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def generate(request: GenerationRequest, reporter: Reporter) -> str | None:
    """Run a generation command: check it, hold its output, load, play and/or render. Returns the closing line
    (``wrote FILE: ...``) once a file is whole and on disk; one-line RiffstreamError for anything unusable."""
    plan = plan_generation(request)
    # One writer per file: held from before the journal is read until the file is whole or abandoned.
    with claim_output(request.out) if request.out else contextlib.nullcontext():
        journal, finished = None, []
        if request.resume:  # checked before the model loads, and nothing is touched if it does not match
            journal, finished = Journal.resume(request.out, journal_plan(plan), plan.stream.continuation)
        if request.preset == "auto" and plan.preset == "live":
            reporter.say("live preset for live play on a CPU (LCM-LoRA, 4 steps, TAESD); --preset quality plays "
                         "the model as trained, far slower than real time here")
        with clip_source(plan, reporter.say) as source:
            return _play(plan, source, reporter, journal, finished)


def _play(plan: GenerationPlan, source: ClipSource | RiffusionModel, reporter: Reporter, journal: Journal | None,
          finished: list[FinishedClip]) -> str | None:
    """Play and/or render the plan from ``source``, keeping every finished clip however it ends."""
    request, options = plan.request, plan.stream
    params, out = options.params, request.out
    if journal is None and out and options.duration is not None:
        journal = Journal.start(out, journal_plan(plan))
    writer = AudioFileWriter(out, params.sample_rate, params.channels) if out else None
    midi = midi_writer(plan)
    clock = None
    if plan.output_device is not None:
        def clock(ring) -> Player:
            return Player(ring, params.sample_rate, params.channels, request.output_device)
    try:
        stream = Stream(source, options, [sink for sink in (writer, midi) if sink], clock, journal, finished)
        if finished:
            reporter.say(f"resuming {out}: {len(finished)} of {stream.total_clips} clips are done")
        reporter.say(_announcement(plan, stream.total_clips))
        if stream.total_clips is None:
            reporter.say("type a prompt and Enter to move the music to it")
        signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with reporter.watch(stream) as tick:
                stream.run(tick)
        finally:
            reporter.say(summary(stream))
    except (KeyboardInterrupt, SourceLost):  # stopped, or where clips are made is gone: keep what is finished
        _keep_midi(midi, reporter)
        if writer is not None:
            writer.close()
            more = "; the same command with --resume finishes it" if journal is not None else ""
            if writer.is_on_disk():
                reporter.say(f"kept {out}: {writer.frames_written / params.sample_rate:.2f} s{more}")
        raise
    except WriteFailed as failure:  # a full disk: keep what is finished, and say so in the one line
        kept = ""
        _keep_midi(midi, reporter)
        if writer is not None:
            with contextlib.suppress(WriteFailed):
                writer.close()
            if writer.is_on_disk():
                kept = f"; kept {writer.frames_written / params.sample_rate:.2f} s of finished audio in {out}"
            else:
                writer.discard()
        more = "; free some space, then the same command with --resume finishes it" if journal is not None else ""
        raise WriteFailed(f"{failure}{kept}{more}") from None
    except BaseException:
        if writer is not None:
            writer.discard()
        if midi is not None:
            midi.discard()
        raise
    _keep_midi(midi, reporter)
    if writer is None:
        return None
    writer.close()
    if not writer.is_on_disk():  # never claim what is not there; the journal can write it again
        more = "; the same command with --resume writes it again" if journal is not None else ""
        raise RiffstreamError(f"{out} was replaced or removed by another program after it was written{more}")
    if journal is None:
        return None
    journal.finish()
    return f"wrote {out}: {writer.frames_written / params.sample_rate:.2f} s at {params.sample_rate} Hz"


def midi_writer(plan: GenerationPlan) -> MidiWriter | None:
    """The sink that writes ``--midi-out``; None without one."""
    path = plan.request.midi_out
    return MidiWriter(path, plan.stream.params.sample_rate, stream_tempo(plan.stream)) if path else None


def _station_notes(plan: GenerationPlan, say: Callable[[str], None]) -> MidiWriter | None:
    """What ``serve`` transcribes its notes with, for ``/api/midi`` and ``--midi-out``: None, said once, when
    Basic Pitch's model is not installed (and no ``--midi-out`` asked for it: the plan checked that)."""
    try:
        return midi_writer(plan) or MidiWriter(None, plan.stream.params.sample_rate, stream_tempo(plan.stream))
    except RiffstreamError as error:
        say(f"note: /api/midi is off: {error}")
        return None


def _keep_midi(midi: MidiWriter | None, reporter: Reporter) -> None:
    """Put ``--midi-out`` in place with every note transcribed, and say so."""
    if midi is not None:
        with contextlib.suppress(RiffstreamError):
            midi.close()
            reporter.say(f"wrote {midi.path}: {len(midi.notes)} notes")


def _announcement(plan: GenerationPlan, total_clips: int | None) -> str:
    """The line that says what is about to play: the journey, seed, tempo, length and where it goes."""
    request, options = plan.request, plan.stream
    what = f"{_format_seconds(options.duration)} in {total_clips} clips" if total_clips else "endless (Ctrl-C stops)"
    where = ", ".join(filter(None, [f"playing on {plan.output_device}" if plan.output_device else None,
                                    f"writing {request.out}" if request.out else None]))
    journey = (f"timeline {request.timeline} ({len(options.timeline.entries)} entries)" if options.timeline
               else " -> ".join(options.prompts))
    tempo = f"; {options.bpm:g} BPM" if options.bpm else ""
    if options.tempo_map is not None and options.tempo_map.tempi:
        tempo = f"; tempo from MIDI: {' -> '.join(f'{bpm:g}' for _, bpm in options.tempo_map.changes if bpm)} BPM"
    return f"{journey}; seed {options.seed}{tempo}; {what}; {where}"


def serve(request: GenerationRequest, listen: ServeRequest, reporter: Reporter) -> None:
    """``riffstream serve``: check everything, bind the port, load the model, then serve until stopped (a
    signal ends it as Ctrl-C or SIGTERM does)."""
    try:
        from riffstream.server import serve as server
    except ImportError as error:
        raise RiffstreamError(f"riffstream serve needs the server extra ({error.name} is missing): "
                              "pip install 'riffstream[serve]'") from None

    if not request.prompt and request.timeline is None:
        request = dataclasses.replace(request, prompt=(DEFAULT_SERVE_PROMPT,))
    plan = plan_generation(dataclasses.replace(request, serve=True, no_play=True))
    with claim_output(request.out) if request.out else contextlib.nullcontext():
        options = server.ServeOptions(
            host=listen.host, port=listen.port, token=server.needs_token(listen.host, listen.token),
            max_listeners=listen.max_listeners, icecast=listen.icecast, icecast_format=listen.icecast_format,
            control_calls=listen.control_rate)
        if options.icecast is not None:
            server.check_icecast(options, reporter.say)
        sock = server.bind(listen.host, listen.port)
        try:
            with clip_source(plan, reporter.say) as source:
                params = plan.stream.params
                broadcast = Broadcast(params.sample_rate, params.channels)

                def clock(ring) -> RealTimeClock:
                    return RealTimeClock(ring, params.sample_rate, [broadcast])

                def ready() -> None:
                    reporter.say(f"{' -> '.join(plan.stream.prompts)}; seed {plan.stream.seed}; endless (Ctrl-C stops)")
                    reporter.say(f"serving on {options.url}" + ("" if options.token is None else
                                                                "  (control calls need this token; listening does not)"))

                ahead = SERVE_AHEAD_CLIPS * params.duration_of(request.width)
                recording = AudioFileWriter(request.out, params.sample_rate, params.channels) if request.out else None
                midi = _station_notes(plan, reporter.say)
                # The file closes with every finished clip in it however serving ends, and is removed on an error.
                with recording or contextlib.nullcontext():
                    stream = Stream(source, dataclasses.replace(plan.stream, max_ahead=ahead),
                                    [sink for sink in (recording, midi) if sink], clock)
                    try:
                        stopped_by = server.serve(stream, stream.clock, broadcast, options, sock, log=reporter.say,
                                                  on_ready=ready, midi=midi)
                    except BaseException:
                        if midi is not None:
                            midi.discard()
                        raise
                _keep_midi(midi if request.midi_out else None, reporter)
                if recording is not None:
                    reporter.say(f"kept {request.out}: {recording.frames_written / params.sample_rate:.2f} s")
                reporter.say(summary(stream))
        finally:
            sock.close()
    if stopped_by is not None:
        raise Terminated() if stopped_by == signal.SIGTERM else KeyboardInterrupt()
