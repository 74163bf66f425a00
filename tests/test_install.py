"""riffstream imports whatever torchvision pip chose: a working one, none, or one that cannot load.

optimum-intel's metadata pulls in torchvision, and PyPI's build of it for the CPU wheel of torch
fails to import. Each case runs in a fresh interpreter, since what is imported is the point (so they
are in the full tier; the development venv has that torchvision too, so every test meets it).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

IMPORTS = ("import riffstream, sys; from diffusers import UNet2DConditionModel; "
           "from optimum.intel import OVStableDiffusionPipeline; "
           "print('hidden' if sys.modules.get('torchvision', 0) is None else 'present')")


@pytest.mark.slow
def test_a_torchvision_that_cannot_load_is_hidden_and_the_model_stack_imports(tmp_path):
    shim = tmp_path / "torchvision"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    result = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "hidden"


@pytest.mark.slow
def test_without_the_repair_that_torchvision_breaks_the_model_stack(tmp_path):
    """The case the repair is for is real: the same shim, diffusers imported before riffstream."""
    shim = tmp_path / "torchvision"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    code = "from optimum.intel import OVStableDiffusionPipeline"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0 and "OVStableDiffusionPipeline" in result.stderr
