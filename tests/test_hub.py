"""The published checkpoint's layout, fetched by the real ``huggingface_hub`` client from a stand-in Hub.

The stand-in serves ``riffusion/riffusion-model-v1`` as it is published (late-2022 diffusers
layout: ``.bin`` weights, a safety checker and a ``CLIPFeatureExtractor`` named in
``model_index.json``, an old PNDM config, a tokenizer without ``tokenizer.json``, a
``.ckpt`` and a traced UNet), built from the tiny random weights. Every command runs in a
subprocess with ``HF_ENDPOINT`` pointed at it, so the client is configured exactly as a
user's would be; nothing touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from riffstream.model.checkpoint import select_files
from riffstream.model.tiny import build_tiny_decoder, build_tiny_lora, build_tiny_pipeline
from tests.running import run_cli
from tests.standin_hub import StandInHub

REPO = "riffusion/riffusion-model-v1"
LCM_REPO = "latent-consistency/lcm-lora-sdv1-5"
TAESD_REPO = "madebyollin/taesd"
WIDTH = 64
FAST = ["--width", str(WIDTH), "--steps", "2", "--no-progress"]
PIPELINE_FILES = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json", "unet/config.json", "unet/diffusion_pytorch_model.bin", "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
}
"""What a first start may fetch from the published repo: nothing else."""
DEAD_ENDPOINT = "http://127.0.0.1:9"
"""Nothing listens on the discard port: a machine with no network."""


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """The tiny weights in the published repo's layout, with the files the pipeline never runs."""
    folder = build_tiny_pipeline(tmp_path_factory.mktemp("published") / "riffusion-model-v1")
    rng = np.random.default_rng(0)
    (folder / "riffusion-model-v1.ckpt").write_bytes(rng.bytes(1 << 20))
    (folder / "unet_traced").mkdir()
    (folder / "unet_traced" / "unet_traced.pt").write_bytes(rng.bytes(1 << 19))
    (folder / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# Riffusion\n")
    return folder


@pytest.fixture(scope="module")
def hub(published, tmp_path_factory):
    with StandInHub() as hub:
        hub.add_repo(REPO, published)
        hub.add_repo("riffusion/gated-model", published, gated=True)
        twins = _with_twins(published, tmp_path_factory.mktemp("twins") / "repo")
        hub.add_repo("riffstream-test/with-safetensors", twins)
        sdxl = shutil.copytree(published, tmp_path_factory.mktemp("sdxl") / "repo")
        index = json.loads((sdxl / "model_index.json").read_text())
        (sdxl / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLPipeline"}))
        hub.add_repo("riffstream-test/sdxl-like", sdxl)
        # The live preset's adapter and decoder, laid out as published, at the tiny model's size.
        lcm = build_tiny_lora(tmp_path_factory.mktemp("lcm") / "lcm-lora-sdv1-5")
        (lcm / "README.md").write_text("---\nlibrary_name: diffusers\nbase_model: runwayml/stable-diffusion-v1-5\n---\n")
        hub.add_repo(LCM_REPO, lcm)
        taesd = build_tiny_decoder(tmp_path_factory.mktemp("taesd") / "taesd")
        (taesd / "taesd_decoder.pth").write_bytes(np.random.default_rng(1).bytes(1 << 16))
        hub.add_repo(TAESD_REPO, taesd)
        yield hub


def _with_twins(published: Path, folder: Path) -> Path:
    """The published layout plus what the repo may gain later: safetensors twins and fp16 variants."""
    import torch
    from safetensors.torch import save_file

    shutil.copytree(published, folder)
    for part, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        state = torch.load(next((folder / part).glob("*.bin")), weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, folder / part / f"{stem}.safetensors")
        save_file({k: v.half().contiguous() for k, v in state.items()}, folder / part / f"{stem}.fp16.safetensors")
    return folder


def _env(tmp: Path, endpoint: str, hf_home: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home or tmp / "hf"), RIFFSTREAM_CACHE=str(tmp / "cache"),
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


def _run(args: list[str], env: dict, timeout: float = 300, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}import sys; from riffstream.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("riffstream: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def _no_half_made_entries(tmp: Path) -> None:
    cache = tmp / "cache"
    partial = [p for p in cache.rglob("*") if ".partial" in p.name] if cache.exists() else []
    exports = list((cache / "models").glob("*/*")) if (cache / "models").exists() else []
    assert not partial and not exports, (partial, exports)


def _snapshot_files(hf_home: Path, repo: str) -> set[str]:
    snapshots = hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    return {p.relative_to(s).as_posix() for s in snapshots.glob("*") for p in s.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_start(hub, tmp_path_factory):
    """The default command on a fresh machine: download, export, render."""
    tmp = tmp_path_factory.mktemp("first-start")
    env = _env(tmp, hub.url)
    out = tmp / "first.wav"
    result = _run(["lofi to jazz", "--duration", "3", "--seed", "1", "--no-play", "--out", str(out), *FAST], env)
    return tmp, env, result, out


@pytest.mark.slow
def test_the_default_model_downloads_only_what_the_pipeline_runs_and_renders(hub, first_start, tiny_exported,
                                                                             tmp_path, capsys):
    tmp, env, result, out = first_start
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(out)
    # The Hub served the tiny weights: what was downloaded, exported and run renders what the
    # tiny model renders with the same options (within 4 LSB: PGHI breaks ties between equal
    # pixels by float rounding, which another process need not repeat).
    reference_out = tmp_path / "tiny.wav"
    code, stderr = run_cli(capsys, "lofi to jazz", "--duration", "3", "--seed", "1", "--no-play", "--out",
                           reference_out, *FAST, "--model", "tiny", "--cache-dir", tiny_exported)
    assert code == 0, stderr
    reference, _ = soundfile.read(reference_out)
    assert rate == 44100 and audio.shape == reference.shape == (3 * rate,) and np.abs(reference).max() > 0.1
    np.testing.assert_allclose(audio, reference, atol=4 / 32768)
    assert hub.files_requested(REPO) == PIPELINE_FILES
    assert _snapshot_files(tmp / "hf", REPO) == PIPELINE_FILES, "not in the standard Hugging Face cache"
    lines = result.stderr
    assert f"downloading {REPO}" in lines and "12 files the pipeline runs" in lines and "MB" in lines
    assert "exporting to OpenVINO: once" in lines
    assert f"cached the OpenVINO export in {tmp / 'cache' / 'models'}" in lines


@pytest.mark.slow
def test_a_second_start_without_network_loads_from_the_caches(hub, first_start):
    tmp, env, first, _ = first_start
    assert first.returncode == 0, first.stderr
    served = len(hub.requests)
    out = tmp / "offline.wav"
    result = _run(["lofi to jazz", "--duration", "3", "--seed", "1", "--no-play", "--out", str(out), *FAST],
                  dict(env, HF_ENDPOINT=DEAD_ENDPOINT))
    assert result.returncode == 0, result.stderr
    assert "exporting" not in result.stderr and "downloading" not in result.stderr
    assert len(hub.requests) == served
    np.testing.assert_array_equal(soundfile.read(out)[0], soundfile.read(first_start[3])[0])


@pytest.mark.slow
def test_a_model_another_tool_fetched_is_exported_without_network(hub, first_start, tmp_path):
    tmp, env, first, _ = first_start
    assert first.returncode == 0, first.stderr
    offline = dict(env, HF_ENDPOINT=DEAD_ENDPOINT, RIFFSTREAM_CACHE=str(tmp_path / "fresh-cache"))
    result = _run(["download", "--no-progress"], offline)
    assert result.returncode == 0, result.stderr
    assert "the Hub is unreachable; using the cached" in result.stderr and "exporting to OpenVINO" in result.stderr
    assert "plays offline" in result.stdout


@pytest.mark.slow
def test_a_whole_local_download_renders(published, tmp_path):
    """The folder `huggingface-cli download --local-dir` makes: safety checker, .ckpt and traced UNet included."""
    out = tmp_path / "whole.wav"
    result = _run(["lofi", "--model", str(published), "--duration", "2", "--no-play", "--out", str(out), *FAST],
                  _env(tmp_path, DEAD_ENDPOINT))
    assert result.returncode == 0, result.stderr
    assert soundfile.info(out).frames == 2 * 44100


@pytest.mark.slow
def test_a_folder_of_only_the_pipeline_parts_renders(published, tmp_path):
    folder = tmp_path / "parts"
    for name in PIPELINE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(published / name, folder / name)
    out = tmp_path / "parts.wav"
    result = _run(["lofi", "--model", str(folder), "--duration", "2", "--no-play", "--out", str(out), *FAST],
                  _env(tmp_path, DEAD_ENDPOINT))
    assert result.returncode == 0, result.stderr
    assert soundfile.info(out).frames == 2 * 44100


@pytest.fixture(scope="module")
def twins_downloaded(hub, tmp_path_factory):
    """``riffstream download`` of the repo with safetensors twins and fp16 variants."""
    tmp = tmp_path_factory.mktemp("twins-download")
    env = _env(tmp, hub.url)
    return env, _run(["download", "riffstream-test/with-safetensors", "--no-progress"], env)


@pytest.mark.slow
def test_safetensors_are_preferred_and_no_format_is_fetched_twice(hub, twins_downloaded):
    _, result = twins_downloaded
    assert result.returncode == 0, result.stderr
    fetched = hub.files_requested("riffstream-test/with-safetensors")
    weights = {name for name in fetched if name.endswith((".bin", ".safetensors"))}
    assert weights == {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                       "text_encoder/model.safetensors"}


@pytest.mark.slow
def test_download_reexports_only_when_the_hub_has_a_new_commit(hub, twins_downloaded, tmp_path):
    env, first = twins_downloaded
    assert first.returncode == 0, first.stderr
    same = _run(["download", "riffstream-test/with-safetensors", "--no-progress"], env)
    assert same.returncode == 0, same.stderr
    assert "exporting" not in same.stderr and "plays offline" in same.stdout
    updated = shutil.copytree(next(Path(env["HF_HOME"]).glob("hub/models--riffstream-test--with-safetensors/snapshots/*")),
                              tmp_path / "updated", symlinks=False)
    config = json.loads((updated / "unet" / "config.json").read_text())
    (updated / "unet" / "config.json").write_text(json.dumps({**config, "_diffusers_version": "0.39.0"}))
    commit = hub.add_repo("riffstream-test/with-safetensors", updated)
    newer = _run(["download", "riffstream-test/with-safetensors", "--no-progress"], env)
    assert newer.returncode == 0, newer.stderr
    assert "exporting to OpenVINO" in newer.stderr
    exports = list(Path(env["RIFFSTREAM_CACHE"]).glob("models/*/f32/source.json"))
    assert len(exports) == 1 and json.loads(exports[0].read_text())["source"] == commit


def test_the_file_choice_keeps_one_full_precision_format_per_part():
    names = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin",
             "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.non_ema.bin",
             "vae/config.json", "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
             "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
             "vae/diffusion_pytorch_model.safetensors.index.json", "vae/diffusion_pytorch_model.bin",
             "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/pytorch_model.bin",
             "safety_checker/pytorch_model.bin", "feature_extractor/preprocessor_config.json",
             "riffusion-model-v1.ckpt", "unet_traced/unet_traced.pt", "unet/diffusion_pytorch_model.fp16.safetensors.index.json"]
    small, weights = select_files(names)
    assert small == ["model_index.json", "text_encoder/config.json", "unet/config.json", "vae/config.json"]
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.bin",
                       "vae/diffusion_pytorch_model-00001-of-00002.safetensors",
                       "vae/diffusion_pytorch_model-00002-of-00002.safetensors",
                       "vae/diffusion_pytorch_model.safetensors.index.json"]


@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["download", "riffusion/gated-model"], "is gated on the Hugging Face Hub"),
    (["download", "riffusion/no-such-model"], "was not found on the Hugging Face Hub"),
    (["download", REPO, "--revision", "v9"], "has no revision 'v9'"),
])
def test_hub_errors_are_one_line_and_leave_no_cache_entry(hub, tmp_path, args, expected):
    result = _run([*args, "--no-progress"], _env(tmp_path, hub.url))
    assert expected in _one_line_error(result)
    _no_half_made_entries(tmp_path)
    assert not _snapshot_files(tmp_path / "hf", args[1])


@pytest.mark.slow
def test_a_hub_repo_that_is_not_sd1_is_refused_before_any_weights_download(hub, tmp_path):
    result = _run(["download", "riffstream-test/sdxl-like", "--no-progress"], _env(tmp_path, hub.url))
    assert "is a Stable Diffusion XL pipeline" in _one_line_error(result)
    assert not [name for name in hub.files_requested("riffstream-test/sdxl-like") if name.endswith((".bin", ".safetensors"))]
    _no_half_made_entries(tmp_path)


@pytest.mark.slow
def test_a_connection_that_keeps_breaking_mid_file_is_one_line_and_leaves_no_cache_entry(hub, tmp_path):
    hub.drop_after(REPO, "unet/diffusion_pytorch_model.bin", nbytes=200_000, times=50)
    try:
        result = _run(["download", "--no-progress"], _env(tmp_path, hub.url))
    finally:
        hub.drop_after(REPO, "unet/diffusion_pytorch_model.bin", nbytes=0, times=0)
    assert "broke off" in _one_line_error(result) and "run the same command again" in result.stderr
    _no_half_made_entries(tmp_path)
    assert "unet/diffusion_pytorch_model.bin" not in _snapshot_files(tmp_path / "hf", REPO)


@pytest.mark.slow
def test_an_interrupted_download_resumes_where_it_broke_off(hub, published, first_start, tmp_path):
    """The client writes in 10 MiB pieces; at 256 KiB the tiny UNet behaves as the real 3.4 GB one does."""
    name = "unet/diffusion_pytorch_model.bin"
    before = len(hub.hits(REPO, name))
    hub.drop_after(REPO, name, nbytes=1_000_000, times=1)
    prelude = "import huggingface_hub.constants as c; c.DOWNLOAD_CHUNK_SIZE = 1 << 18; "
    exported = dict(first_start[1], HF_HOME=str(tmp_path / "hf"))  # same commit already exported: no export again
    result = _run(["download", "--no-progress"], exported, prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "exporting" not in result.stderr
    gets = hub.hits(REPO, name)[before:]
    assert [g.range for g in gets][0] is None and len(gets) == 2
    start = int(gets[1].range.removeprefix("bytes=").split("-")[0])
    assert gets[1].status == 206 and 0 < start <= 1_000_000
    snapshot = next((tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots").glob("*"))
    assert (snapshot / name).read_bytes() == (published / name).read_bytes()


def _tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill a disk")
    return folder


@pytest.mark.slow
def test_a_full_disk_for_the_download_is_one_line_before_anything_is_fetched(hub, tmp_path):
    small = _tmpfs(tmp_path / "small", "2m")
    try:
        served = len(hub.requests)
        result = _run(["download", "--no-progress"], _env(tmp_path, hub.url, hf_home=small))
        message = _one_line_error(result)
        assert "needs" in message and "free some space" in message
        assert not any(name.endswith(".bin") for name in _snapshot_files(small, REPO))
        assert not [r for r in hub.requests[served:] if r.method == "GET" and (r.file or "").endswith(".bin")]
    finally:
        subprocess.run(["umount", str(small)])
    _no_half_made_entries(tmp_path)


@pytest.mark.slow
def test_a_full_disk_during_the_export_is_one_line_and_leaves_no_half_made_export(hub, published, tmp_path):
    cache = _tmpfs(tmp_path / "cache", "3m")
    try:
        result = _run(["download", str(published), "--no-progress"], _env(tmp_path, hub.url))
        assert "the disk is full" in _one_line_error(result)
        leftovers = [p for p in cache.rglob("*") if ".partial" in p.name or p.name.startswith("staged-")]
        assert not leftovers and not list((cache / "models").glob("*/f32"))
    finally:
        subprocess.run(["umount", str(cache)])


@pytest.mark.slow
@pytest.mark.parametrize("index, expected", [
    ({"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"]},
     "Stable Diffusion XL"),
    ({"_class_name": "AudioLDMPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}, "is a diffusers AudioLDMPipeline"),
    ("sd2", "Stable Diffusion 2.x"),
    (None, "no model_index.json"),
])
def test_a_checkpoint_that_is_not_sd1_text_to_image_is_one_line(published, tmp_path, index, expected):
    folder = tmp_path / "other"
    shutil.copytree(published, folder)
    if index is None:
        (folder / "model_index.json").unlink()
    elif index == "sd2":
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        config["prediction_type"] = "v_prediction"
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    else:
        (folder / "model_index.json").write_text(json.dumps(index))
    result = _run(["download", str(folder), "--no-progress"], _env(tmp_path, DEAD_ENDPOINT))
    assert expected in _one_line_error(result)
    _no_half_made_entries(tmp_path)


@pytest.mark.slow
def test_without_network_the_fallback_model_plays_and_says_so(tiny_exported, tmp_path):
    out = tmp_path / "fallback.wav"
    offline = dict(_env(tmp_path, DEAD_ENDPOINT), RIFFSTREAM_CACHE=str(tiny_exported))
    result = _run(["lofi", "--fallback-model", "tiny", "--duration", "2", "--no-play", "--out", str(out), *FAST], offline)
    assert result.returncode == 0, result.stderr
    assert "cannot reach the Hugging Face Hub" in result.stderr and "Using tiny instead" in result.stderr
    assert "noise, not music" in result.stderr and soundfile.info(out).frames == 2 * 44100
    plain = _run(["lofi", "--duration", "2", "--no-play", "--out", str(out), *FAST], offline)
    assert "riffstream download riffusion/riffusion-model-v1" in _one_line_error(plain)


@pytest.mark.slow
def test_the_live_preset_fetches_lcm_lora_and_taesd_once_then_plays_offline(hub, first_start, tmp_path):
    tmp, env, first, _ = first_start
    assert first.returncode == 0, first.stderr
    env = dict(env, RIFFSTREAM_CACHE=str(tmp_path / "cache"))
    args = ["lofi", "--preset", "live", "--duration", "3", "--seed", "2", "--no-play", *FAST]
    result = _run([*args, "--out", str(tmp_path / "live.wav")], env)
    assert result.returncode == 0, result.stderr
    assert hub.files_requested(LCM_REPO) == {"pytorch_lora_weights.safetensors"}
    assert hub.files_requested(TAESD_REPO) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert "fusing LoRA lcm into the model" in result.stderr and "exporting to OpenVINO: once" in result.stderr
    served = len(hub.requests)
    offline = _run([*args, "--out", str(tmp_path / "again.wav")], dict(env, HF_ENDPOINT=DEAD_ENDPOINT))
    assert offline.returncode == 0, offline.stderr
    assert "exporting" not in offline.stderr and len(hub.requests) == served
    live, again = soundfile.read(tmp_path / "live.wav")[0], soundfile.read(tmp_path / "again.wav")[0]
    assert len(live) == 3 * 44100 and np.abs(live).max() > 0
    np.testing.assert_array_equal(live, again)
    quality = soundfile.read(first_start[3])[0]
    assert not np.allclose(live[: len(quality)], quality)


@pytest.mark.slow
def test_without_network_an_uncached_lora_is_one_line_that_says_how_to_get_it(hub, first_start, tmp_path):
    tmp, env, first, _ = first_start
    assert first.returncode == 0, first.stderr
    offline = dict(env, HF_ENDPOINT=DEAD_ENDPOINT, RIFFSTREAM_CACHE=str(tmp_path / "cache"))
    result = _run(["lofi", "--lora", "someone/never-fetched-lora:0.8", "--no-play", "--out", str(tmp_path / "x.wav"),
                   *FAST], offline)
    line = _one_line_error(result)
    assert "LoRA someone/never-fetched-lora" in line and "riffstream download" in line, line
    assert not (tmp_path / "x.wav").exists()
