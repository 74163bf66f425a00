"""riffstream: endless, evolving, AI-generated music from Riffusion on OpenVINO.

The audio core is importable without the model stack:

>>> from riffstream import SpectrogramParams, audio_to_image, image_to_audio
"""

from riffstream.errors import RiffstreamError
from riffstream.phase import image_to_audio
from riffstream.spectrogram import SpectrogramParams, audio_to_image

__all__ = ["RiffstreamError", "SpectrogramParams", "audio_to_image", "image_to_audio"]
__version__ = "0.1.0"
