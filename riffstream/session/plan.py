"""A generation command as plain values (:class:`GenerationRequest`), checked into a :class:`GenerationPlan`
before any model loads, and the record a resumable render keeps of it (:func:`journal_plan`)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from riffstream.errors import RiffstreamError
from riffstream.journal import Journal
from riffstream.model.options import DEFAULT_MODEL, PRESETS, TINY_MODEL, LoraSpec, ModelOptions, Preset, auto_preset
from riffstream.planner import DEFAULT_CLIPS_PER_TRANSITION, parse_duration, parse_prompts
from riffstream.session.inputs import init_image_from_audio, midi_track, read_loop, timeline_with_defaults
from riffstream.sinks import check_folder_writable, check_output_device, check_writable, file_format
from riffstream.sinks.midi import check_midi_out
from riffstream.spectrogram import SpectrogramParams
from riffstream.stitch import DEFAULT_LOUDNESS
from riffstream.stream import DEFAULT_STRENGTH, StreamOptions, validate
from riffstream.transcribe import basic_pitch_model

@dataclass(frozen=True)
class GenerationRequest:
    """What a generation (or ``serve``) command asks for, as plain values: the command line's options, or a
    program's. Nothing here is checked yet; :func:`plan_generation` checks it all."""

    prompt: tuple[str, ...] = ()
    timeline: str | None = None
    duration: str | None = None
    seed: int | None = None
    preset: str = "auto"
    steps: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None
    clips_per_transition: int = DEFAULT_CLIPS_PER_TRANSITION
    steer: str = "now"
    crossfade: float | None = None
    loudness: float | None = DEFAULT_LOUDNESS
    bpm: float | None = None
    init_audio: str | None = None
    init_midi: str | None = None
    soundfont: str | None = None
    midi_out: str | None = None
    continuation: bool = False
    strength: float | None = None
    width: int = 512
    model: str = DEFAULT_MODEL
    fallback_model: str | None = None
    revision: str | None = None
    device: str = "CPU"
    threads: int | None = None
    quantization: str | None = None
    scheduler: str | None = None
    decoder: str | None = None
    lora: tuple[LoraSpec, ...] = ()
    precision: str = "auto"
    cache_dir: str | None = None
    out: str | None = None
    no_play: bool = False
    output_device: str | None = None
    prebuffer: float | None = None
    save_spectrograms: str | None = None
    ray: str | None = None  # None: no Ray; "": a local cluster (or RAY_ADDRESS's); else its address
    ray_workers: int | None = None
    resume: bool = False
    serve: bool = False
    no_progress: bool = False


@dataclass(frozen=True)
class GenerationPlan:
    """A generation command, checked: everything but the model is known to be usable."""

    request: GenerationRequest
    stream: StreamOptions
    model: ModelOptions
    fallback: ModelOptions | None  # --fallback-model's, used if the Hub is unreachable and --model is not cached
    output_device: str | None  # the sound card's name, or None when not playing
    preset: str  # "live" or "quality": what --preset (auto by default) came to

    @property
    def is_tiny(self) -> bool:
        """Whether it plays the random-weight test model: noise, not music."""
        return self.model.model == TINY_MODEL


def preset_for(request: GenerationRequest, playing: bool, name: str | None = None) -> Preset:
    """The preset ``request.preset`` (or ``name``) comes to, before per-option overrides."""
    name = name or request.preset
    return PRESETS[auto_preset(playing, request.device) if name == "auto" else name]


def model_options(request: GenerationRequest, model: str, preset: Preset) -> ModelOptions:
    """The model ``model`` as the request's model options and ``preset`` make it."""
    loras = preset.loras + tuple(lora for lora in request.lora if lora not in preset.loras)
    return ModelOptions(
        model=model, revision=request.revision, device=request.device, threads=request.threads, height=512,
        width=request.width, quantization=request.quantization, scheduler=request.scheduler or preset.scheduler,
        decoder=request.decoder or preset.decoder, loras=loras, precision=request.precision,
        cache_dir=Path(request.cache_dir) if request.cache_dir else None)


def plan_generation(request: GenerationRequest) -> GenerationPlan:
    """Check every generation option without loading the model; one-line RiffstreamError if any is unusable."""
    timeline = timeline_with_defaults(request) if request.timeline is not None else None
    prompts = list(timeline.prompts) if timeline is not None else parse_prompts(" ".join(request.prompt))
    duration = parse_duration(request.duration) if request.duration is not None else None
    play = not request.no_play
    if duration is None and timeline is not None and not (play or request.serve):
        duration = timeline.end  # a render ends there; live play runs through the timeline and riffs on
    if not play and not request.out and not request.serve:
        raise RiffstreamError("--no-play needs --out FILE: otherwise there is nothing to do")
    if request.width % 8:
        raise RiffstreamError(f"--width must be a multiple of 8, not {request.width}")
    preset = preset_for(request, play or request.serve)
    model = model_options(request, request.model, preset)
    fallback = (model_options(request, request.fallback_model, preset)
                if request.fallback_model not in (None, request.model) else None)
    for checked in filter(None, (model, fallback)):
        checked.check()
    if request.resume and not (request.out and duration is not None):
        raise RiffstreamError("--resume continues a render: give the --out FILE and --duration it was started with")
    seed = request.seed if request.seed is not None else random.randrange(1_000_000)
    if timeline is not None and timeline.seed is not None and request.seed is None:
        seed = timeline.seed
    elif request.resume and request.seed is None:
        seed = Journal.read_plan(request.out).get("stream", {}).get("seed", seed)
    spectrograms = Path(request.save_spectrograms) if request.save_spectrograms is not None else None
    if request.init_midi is not None and (request.bpm is not None or request.init_audio is not None):
        raise RiffstreamError(f"--init-midi sets what clips start from and the tempo: leave out "
                              f"{'--bpm' if request.bpm is not None else '--init-audio'}")
    midi = midi_track(request.init_midi, request.soundfont, timeline)
    if midi is not None and duration is None and not (play or request.serve):
        duration = max(midi.end, timeline.end or 0) if timeline is not None else midi.end  # a render ends there
    tempo_locked = request.bpm is not None or (timeline is not None and timeline.uses_bpm) or midi is not None
    loop = read_loop(request.init_audio, timeline, request.bpm) if tempo_locked and request.init_audio else None
    options = StreamOptions(
        prompts=tuple(prompts), seed=seed, steps=request.steps or preset.steps,
        guidance=preset.guidance if request.guidance is None else request.guidance,
        negative_prompt=request.negative_prompt, clips_per_transition=request.clips_per_transition,
        crossfade=request.crossfade, loudness=request.loudness,
        init_image=None if tempo_locked else init_image_from_audio(request.init_audio, request.width),
        strength=DEFAULT_STRENGTH if request.strength is None else request.strength, bpm=request.bpm, loop=loop,
        timeline=timeline, track=midi.audio if midi else None, tempo_map=midi.tempo if midi else None,
        continuation=request.continuation, duration=duration, save_spectrograms=spectrograms,
        prebuffer=request.prebuffer, steer=request.steer, params=SpectrogramParams())
    if options.strength == 0 and options.init_image is None and not tempo_locked:
        raise RiffstreamError("--strength 0 plays the starting loop as it is: give --bpm or --init-audio")
    validate(options, request.width)
    if request.out is not None:
        file_format(request.out)
        check_writable(request.out)
    if spectrograms is not None:
        check_folder_writable(spectrograms)
    if request.midi_out is not None:
        check_midi_out(request.midi_out)
        basic_pitch_model()
    return GenerationPlan(request, options, model, fallback,
                          check_output_device(request.output_device) if play else None, preset.name)


def journal_plan(plan: GenerationPlan) -> dict:
    """What decides a render's audio, as its journal records it: a resume must match it exactly. Derived from
    the options' own fingerprints, so a new option is recorded without being listed here.

    OpenVINO's output depends on its thread count, so the journal records the count the clips are
    made with: ``--threads``, or 1 on Ray workers, or OpenVINO's own choice, which follows the CPUs
    this process may use.
    """
    on_ray = plan.request.ray is not None
    threads = plan.model.threads or (1 if on_ray else f"auto on {len(os.sched_getaffinity(0))} CPUs")
    return {"stream": plan.stream.fingerprint(), "model": plan.model.fingerprint(threads),
            "format": Path(plan.request.out).suffix.lower()}
