"""--ray: clips made on a real Ray cluster (a head and two worker nodes on loopback), bit-identical to a local render.

The tests that lose nodes or the whole cluster start clusters of their own and come last:
starting one stops every Ray process on the machine.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.jack import RATE, play_recorded, read_head
from tests.ray_cluster import actor_pids, start_cluster
from tests.running import assert_one_line_error, clip_records, run_cli, wait_for

pytest.importorskip("ray")

RENDER = ["lofi to jazz", "--model", "tiny", "--width", "64", "--steps", "2", "--no-progress", "--no-play",
          "--duration", "12", "--seed", "4", "--threads", "1"]


def _command(cache, out, *args):
    return [sys.executable, "-m", "riffstream", *RENDER, "--cache-dir", str(cache), "--out", str(out), *args]


@pytest.fixture(scope="module")
def cluster():
    started = start_cluster(workers=2)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def local_render(tiny_exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.wav"
    result = subprocess.run(_command(tiny_exported, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


@pytest.mark.slow
def test_a_render_on_the_cluster_is_bit_identical_to_a_local_one(tiny_exported, tmp_path, cluster, local_render):
    out = tmp_path / "cluster.wav"
    result = subprocess.run(_command(tiny_exported, out, "--ray", cluster.address), env=cluster.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 Ray workers ready" in result.stderr
    assert out.read_bytes() == local_render


@pytest.mark.slow
def test_a_worker_killed_mid_render_loses_nothing(tiny_exported, tmp_path, cluster, local_render):
    out, spec = tmp_path / "killed.wav", tmp_path / "clips"
    process = subprocess.Popen(_command(tiny_exported, out, "--ray", cluster.address, "--save-spectrograms",
                                        str(spec)), env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 3, 180, process)
        victims = actor_pids()
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)  # mid-render: one worker and the clip it was making
        process.wait(timeout=300)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 0, stderr
    records = clip_records(spec)
    assert [r["file"] for r in records] == [f"clip-{n:05d}.png" for n in range(25)]  # no gap, no duplicate
    assert out.read_bytes() == local_render
    assert victims[0] not in actor_pids()  # it really died; Ray restarted it as a new process


@pytest.mark.slow
def test_live_play_keeps_playing_through_a_worker_death(tiny_exported, tmp_path, cluster, jack_server):
    """Endless play on a real-time sound card (JACK's dummy driver) from two workers, one of them killed:
    the stream rides out the worker's restart (looping the last clip when the buffer runs low) and the
    sound card never runs dry."""
    out, spec, head_path = tmp_path / "live.wav", tmp_path / "clips", tmp_path / "head.npy"
    env = {**jack_server, **{key: value for key, value in cluster.env.items() if key.startswith("RAY_")}}
    # 8 steps: the two workers then leave the player's process a share of the two cores. With 24 they kept
    # both busy, and on a 2-core machine the sound card's callback came late (JACK logged its XRuns) and
    # played slower than real time, on the code before steering too.
    process = play_recorded(tmp_path, env, "lofi", "--model", "tiny", "--preset", "quality", "--width", "64",
                            "--steps", "8", "--threads", "1", "--no-progress", "--cache-dir", str(tiny_exported),
                            "--seed", "3", "--out", str(out), "--save-spectrograms", str(spec),
                            "--ray", cluster.address)
    try:
        wait_for(lambda: (head := read_head(head_path)) is not None and head[3] > 0, 180, process, "the first audio")
        wait_for(lambda: len(clip_records(spec)) >= 4, 120, process, "4 clips")
        victims = actor_pids()
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)  # mid-play: one worker and the clip it was making
        killed_at, killed_after = time.time(), len(clip_records(spec))
        wait_for(lambda: len(clip_records(spec)) >= killed_after + 6, 180, process, "6 clips after the kill")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    first, last, frames, reads, short_reads, first_short = np.load(head_path)
    print(stderr)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert victims[0] not in actor_pids()  # it really died; Ray restarted it as a new process
    # Every clip came, in order, none lost or repeated, and clips kept coming after the kill.
    records = clip_records(spec)
    assert [r["file"] for r in records] == [f"clip-{n:05d}.png" for n in range(len(records))]
    made = [(spec / r["file"]).stat().st_mtime for r in records]
    assert sum(when > killed_at for when in made) >= 6
    # The sound card played at a real clock's pace all along and never ran dry.
    assert frames / RATE == pytest.approx(last - first, rel=0.1, abs=0.3)
    assert short_reads == 0, f"the ring buffer ran dry {short_reads:g} times, first at {first_short / RATE:.2f} s"
    summary = [line for line in stderr.splitlines() if line.startswith("riffstream: made ")]
    assert len(summary) == 1 and "; 0 underruns" in summary[0], stderr


@pytest.mark.slow
def test_a_prompt_queued_mid_stream_reaches_later_clips(tiny_exported, tmp_path, cluster):
    spec = tmp_path / "clips"
    command = [sys.executable, "-m", "riffstream", "lofi", "--model", "tiny", "--width", "64", "--steps", "2",
               "--no-progress", "--no-play", "--out", str(tmp_path / "endless.wav"), "--threads", "1",
               "--cache-dir", str(tiny_exported), "--ray", cluster.address, "--save-spectrograms", str(spec),
               "--clips-per-transition", "2"]
    process = subprocess.Popen(command, env=cluster.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 3, 180, process)
        process.stdin.write(b"smooth jazz\n")
        process.stdin.flush()
        wait_for(lambda: any(r["prompt_a"] == "smooth jazz" for r in clip_records(spec)), 60, process)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    records = clip_records(spec)
    assert [r["file"] for r in records] == [f"clip-{n:05d}.png" for n in range(len(records))]
    to_jazz = [r["alpha"] for r in records if r["prompt_b"] == "smooth jazz" and r["prompt_a"] == "lofi"]
    assert to_jazz == [0.5, 1.0]  # a whole transition, planned after the prompt, not a jump


def test_continuation_is_refused_on_ray_in_one_line(tiny_exported, tmp_path, capsys, no_model_load):
    # Refused before any worker starts: the address is never dialled.
    code, stderr = run_cli(capsys, *_command(tiny_exported, tmp_path / "x.wav", "--ray", "127.0.0.1:9",
                                             "--continuation")[3:])
    assert_one_line_error(code, stderr, "--continuation chains each clip to the one before, so its clips cannot be made "
                                        "apart: it runs on one machine, without --ray")


@pytest.mark.slow
def test_a_cluster_without_its_token_is_one_line(tiny_exported, tmp_path, cluster):
    env = {key: value for key, value in cluster.env.items() if not key.startswith("RAY_AUTH")}
    result = subprocess.run(_command(tiny_exported, tmp_path / "x.wav", "--ray", cluster.address), env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "wants the cluster's token" in lines[-1] and "Traceback" not in result.stderr
    assert not (tmp_path / "x.wav").exists()


def test_ray_missing_is_one_line_saying_how_to_add_it(tiny_exported, tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    code, stderr = run_cli(capsys, *_command(tiny_exported, tmp_path / "x.wav", "--ray")[3:])
    assert code == 2 and [line for line in stderr.splitlines() if "error" in line] == [
        "riffstream: error: --ray needs Ray, an optional extra: pip install 'riffstream[ray]'"], stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.slow
def test_a_node_lost_mid_render_has_its_clips_made_by_the_other(tiny_exported, tmp_path, local_render):
    two = start_cluster(workers=2)
    out, spec = tmp_path / "node.wav", tmp_path / "clips"
    process = subprocess.Popen(_command(tiny_exported, out, "--ray", two.address, "--save-spectrograms", str(spec)),
                               env=two.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 3, 180, process)
        before = len(clip_records(spec))
        two.kill_node(0)  # no room elsewhere for its worker to restart: its clips must go to the other
        node = ["pgrep", "-f", f"node_manager_port={two.node_ports[0]}"]
        # The node and its worker go (a killed process lingers a moment before it is reaped), and no
        # worker takes its place: the other node has no room for one.
        wait_for(lambda: subprocess.run(node, capture_output=True).returncode == 1 and len(actor_pids()) == 1, 30,
                 process, "the node and its worker to go")
        process.wait(timeout=300)
    finally:
        process.kill()
        two.stop()
    stderr = process.stderr.read().decode()
    assert process.returncode == 0, stderr
    assert [r["file"] for r in clip_records(spec)] == [f"clip-{n:05d}.png" for n in range(25)]
    assert before < 25  # the node was lost mid-render
    assert out.read_bytes() == local_render


@pytest.mark.slow
def test_when_the_whole_cluster_goes_the_render_ends_like_an_interrupted_one(tiny_exported, tmp_path):
    lost = start_cluster(workers=1)
    out, spec = tmp_path / "lost.wav", tmp_path / "clips"
    command = _command(tiny_exported, out, "--ray", lost.address, "--save-spectrograms", str(spec))
    command[command.index("--duration") + 1] = "10m"
    process = subprocess.Popen(command, env=lost.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(clip_records(spec)) >= 3, 180, process)
        lost.stop()
        began = time.monotonic()
        process.wait(timeout=120)
        took = time.monotonic() - began
    finally:
        process.kill()
        lost.stop()
    stderr = process.stderr.read().decode()
    assert process.returncode == 2 and "Traceback" not in stderr, stderr
    *_, kept, error = stderr.strip().splitlines()
    assert kept.startswith(f"riffstream: kept {out}: ") and "--resume finishes it" in kept, stderr
    assert error.startswith("riffstream: error: lost the Ray cluster: its head at "), stderr
    assert took < 90
    import soundfile

    assert soundfile.info(out).frames > 0  # the finished clips are kept, in a valid file
