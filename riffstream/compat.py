"""Import-time repairs for the libraries the model runs on, applied when riffstream is imported (8 ms)."""

from __future__ import annotations

import importlib.util
import logging
import sys

log = logging.getLogger(__name__)


def hide_broken_torchvision() -> None:
    """Make a torchvision that cannot be imported look absent to transformers and diffusers.

    optimum-intel's metadata asks for torchvision, so pip installs one; but PyPI's build for
    the CPU wheel of torch is the CUDA one, and it fails to import beside it
    (``operator torchvision::nms does not exist``). transformers then fails to import its image
    processors, and ``import optimum.intel`` fails with it. riffstream never uses torchvision:
    a broken one is hidden (``sys.modules["torchvision"] = None``, which ``find_spec`` and so
    both libraries' availability checks read as "not installed"); a working one is left alone.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as error:  # a RuntimeError or an OSError from its compiled operators
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        log.debug("torchvision is installed but cannot be imported (%s): hidden, as riffstream never uses it", error)
