"""riffstream: endless, evolving, AI-generated music from Riffusion on OpenVINO.

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
