"""A real Ray cluster on loopback for the tests: a head and worker nodes started with ``ray start``.

Ray 2.59 and later guard clusters with a token; each cluster here gets a fresh one, passed
to its nodes and to the commands under test through the environment, as a user would.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.serving import free_ports

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayCluster:
    """``address`` to join; ``env`` (the token) for every process that talks to it."""

    address: str
    env: dict[str, str]
    workers: int
    log: list[str] = field(default_factory=list)
    #: Each worker node's raylet port, which names its processes.
    node_ports: list[int] = field(default_factory=list)

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        result = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        self.log.append(result.stdout + result.stderr)
        return result

    def kill_node(self, number: int) -> None:
        """SIGKILL worker node ``number``: its raylet and every process it started (the workers), as if the
        machine were gone."""
        found = subprocess.run(["pgrep", "-f", f"node_manager_port={self.node_ports[number]}"],
                               capture_output=True, text=True)
        doomed, pending = [], [int(pid) for pid in found.stdout.split()]
        while pending:
            pid = pending.pop()
            doomed.append(pid)
            children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
            pending += [int(child) for child in children.stdout.split()]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop every Ray process on this machine: the nodes, their workers, the GCS."""
        self.run("stop", "--force")


def start_cluster(workers: int = 2, cpus_per_worker: int = 1) -> RayCluster:
    """A head with no CPUs (so clips are made on the workers) and ``workers`` nodes of ``cpus_per_worker`` CPUs."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    # The head's ports and every worker's raylet port are chosen together, so no two are the same.
    port, node_manager, object_manager, *worker_ports = free_ports(3 + 3 * workers)
    cluster = RayCluster(f"127.0.0.1:{port}", env, workers)
    cluster.stop()  # nothing left from an earlier run
    head = cluster.run("start", "--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false",
                       "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                       "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager))
    if head.returncode != 0:
        raise RuntimeError(f"ray start --head failed: {head.stderr[-2000:]}")
    for _ in range(workers):
        # A node joining a head that has just started can time out asking it for the node table
        # ("Failed to get node info: RPC error: Deadline Exceeded", seen once in a fresh-clone run
        # of the suite): a join is tried three times before the cluster counts as failed.
        for attempt in range(3):
            port = worker_ports.pop()
            node = cluster.run("start", "--address", cluster.address, "--num-cpus", str(cpus_per_worker),
                               "--node-ip-address", "127.0.0.1", "--node-manager-port", str(port))
            if node.returncode == 0:
                cluster.node_ports.append(port)
                break
            time.sleep(2.0 * (attempt + 1))
        else:
            cluster.stop()
            raise RuntimeError(f"ray start --address failed: {node.stderr[-2000:]}")
    return cluster


def actor_pids() -> list[int]:
    """Process ids of the live clip workers (Ray names an actor's process after its class)."""
    table = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    rows = (line.split(None, 2) for line in table.splitlines() if line.strip())
    return [int(pid) for pid, stat, args in rows if args.startswith("ray::ClipWorker") and not stat.startswith("Z")]
