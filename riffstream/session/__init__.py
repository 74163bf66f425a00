"""The session layer, between what a user asks (the CLI, or a program) and the stream.

* :mod:`~riffstream.session.plan`: a command as plain values (:class:`GenerationRequest`), checked
  into a :class:`GenerationPlan` before any model loads, and the journal's record of it, derived
  from the options' own fingerprints;
* :mod:`~riffstream.session.inputs`: what a command brings (a timeline, an audio loop, an init audio);
* :mod:`~riffstream.session.run`: the one path local, Ray and served streams run: open where clips
  are made, announce, run, sum up, keep every finished clip; it reports through a :class:`Reporter`;
* :mod:`~riffstream.session.convert`: the commands that make no stream (conversions, ``download``).

A new generation option is a field of :class:`GenerationRequest` (and of
:class:`~riffstream.stream.StreamOptions` or :class:`~riffstream.model.ModelOptions` if it changes
the audio: the journal then records it by itself) plus its flag in :mod:`riffstream.cli`.
"""

from riffstream.session.plan import GenerationPlan, GenerationRequest, journal_plan, plan_generation
from riffstream.session.run import Reporter, ServeRequest, generate, serve

__all__ = ["GenerationPlan", "GenerationRequest", "Reporter", "ServeRequest", "generate", "journal_plan",
           "plan_generation", "serve"]
