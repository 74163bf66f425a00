"""riffstream: endless, evolving, AI-generated music from Riffusion on OpenVINO.

Data flows one way through its rooms, each importing only those below it:

* the audio core: ``spectrogram`` (parameters, image format), ``phase`` (image to audio),
  ``stitch`` and ``loudness`` (joining clips);
* planning: ``planner`` (prompts, blends, the :class:`~riffstream.planner.Journey`),
  ``timeline``, ``tempo``;
* ``model/``: the store (find, fetch, export, cache) apart from the runtime (run on OpenVINO);
* ``sinks/``: where audio goes (files, sound card devices, broadcasts); ``journal``: resumable renders;
* ``stream/``: the only threads: clip sources, steering, dispatcher, consumer, ring, clocks, ``Stream``;
* ``server/``: ``riffstream serve`` (station, routes, serve);
* ``session/``: a command's plan built from plain values, and the one path that runs it;
* ``terminal`` and ``cli``: what the user types and sees.

The audio core is importable without the model stack:

>>> from riffstream import SpectrogramParams, audio_to_image, image_to_audio
"""

from riffstream.compat import hide_broken_torchvision

hide_broken_torchvision()  # before transformers, diffusers or optimum is first imported, by riffstream or its user

from riffstream.errors import RiffstreamError  # noqa: E402
from riffstream.phase import image_to_audio  # noqa: E402
from riffstream.spectrogram import SpectrogramParams, audio_to_image  # noqa: E402

__all__ = ["RiffstreamError", "SpectrogramParams", "audio_to_image", "image_to_audio"]
__version__ = "0.1.0"
