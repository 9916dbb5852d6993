"""A real multi-node Ray cluster on one machine: a head and worker nodes from ``ray start``.

Each node is its own ``ray start --block`` process in its own session (process group), with
its own temp dir and ports, so one node can be stopped on its own (``stop_node``) while the
others keep running; ``ray stop`` would take every Ray process on the machine. Used by
tests/test_ray_multinode.py and benchmarks/ray_multinode.py.

Example::

    with MultiNodeCluster(tmp, head_cpus=1) as cluster:
        node = cluster.add_node(cpus=1, resources={"agents_node": 2})
        print(cluster.address)          # host:port of the head's GCS
        cluster.stop_node(node)         # SIGKILL to that node's process group
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from tests.ray_support import leave_ray, raised_priority
from tests.servers import free_port

RAY = str(Path(sys.executable).with_name("ray"))
# A raylet whose dashboard agent takes more than about 15 s to come up aborts its start
# (Ray 2.60); on a busy 2-core machine that happens, so a node start is tried a few times.
START_ATTEMPTS = 6
NODE_START_TIMEOUT = 150.0


def node_env() -> dict[str, str]:
    """Environment for the nodes: no usage stats, generous start-up waits for a loaded
    machine, and token authentication off.

    ``ray start --head`` turns token authentication on by default in Ray 2.60, but a driver
    fixes its own mode when it imports ray (and this test process imported it long before),
    so the test cluster opts out (RAY_AUTH_MODE=disabled); the README says what a server
    needs for a cluster that keeps it on.
    """
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_raylet_start_wait_time_s": "120"}


@dataclass
class Node:
    """One ``ray start --block`` process (the leader of its process group)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    temp_dir: Path
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        """Whether its ``ray start`` is still running."""
        return self.process.poll() is None


class MultiNodeCluster:
    """A head node plus worker nodes, each in its own process group; see the module doc."""

    def __init__(self, root: Path, *, head_cpus: int = 1,
                 head_resources: dict[str, float] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.head_cpus = head_cpus
        self.head_resources = head_resources or {}
        self.port = free_port()
        self.client_port = free_port()
        self.nodes: list[Node] = []
        self.head: Node | None = None

    @property
    def address(self) -> str:
        """The GCS address (``host:port``) drivers and nodes join."""
        return f"{node_ip()}:{self.port}"

    @property
    def client_address(self) -> str:
        """The Ray Client address (``ray://host:port``) of the head."""
        return f"ray://{node_ip()}:{self.client_port}"

    def __enter__(self) -> MultiNodeCluster:
        try:
            self.start()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def start(self) -> Node:
        """Start the head (with a Ray Client server); returns once it takes drivers."""
        self.head = self._start("head", [
            "--head", f"--port={self.port}", f"--ray-client-server-port={self.client_port}",
            "--include-dashboard=false", f"--num-cpus={self.head_cpus}",
        ], self.head_resources, expected_nodes=1)
        return self.head

    def add_node(self, *, cpus: int = 1, resources: dict[str, float] | None = None,
                 name: str | None = None) -> Node:
        """Start a worker node that joins the head; returns once the GCS lists it alive."""
        alive = len(self.alive_nodes())
        return self._start(name or f"worker{len(self.nodes)}", [
            f"--address={self.address}", f"--num-cpus={cpus}",
        ], resources or {}, expected_nodes=alive + 1)

    def _start(self, name: str, args: list[str], resources: dict[str, float],
               expected_nodes: int) -> Node:
        last = ""
        for attempt in range(1, START_ATTEMPTS + 1):
            temp_dir = self.root / f"{name}-{attempt}"
            log_path = self.root / f"{name}-{attempt}.log"
            # No log monitor: one Python process fewer competing with the agent's start.
            command = [RAY, "start", "--block", "--disable-usage-stats",
                       "--include-log-monitor=false",
                       f"--temp-dir={temp_dir}", f"--resources={json.dumps(resources)}",
                       f"--node-manager-port={free_port()}",
                       f"--object-manager-port={free_port()}",
                       f"--runtime-env-agent-port={free_port()}",
                       f"--dashboard-agent-grpc-port={free_port()}",
                       f"--dashboard-agent-listen-port={free_port()}",
                       f"--metrics-export-port={free_port()}", *args]
            with log_path.open("wb") as log, raised_priority():
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                           env=node_env(), start_new_session=True)
            node = Node(name, process, log_path, temp_dir, dict(resources))
            self.nodes.append(node)
            if self._wait_up(node, expected_nodes):
                if name == "head":
                    self.head = node
                return node
            last = log_path.read_text(errors="replace")[-600:]
            self._kill(node)
            self.nodes.remove(node)
        raise RuntimeError(f"Ray node {name} did not start in {START_ATTEMPTS} attempts:\n{last}")

    def _wait_up(self, node: Node, expected_nodes: int) -> bool:
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while time.monotonic() < deadline:
            if not node.alive or _raylet_aborted(node.temp_dir):
                return False
            if b"Ray runtime started" in node.log_path.read_bytes():
                # The node says so once its raylet has registered with the GCS.
                with contextlib.suppress(Exception):
                    if len(self.alive_nodes()) >= expected_nodes:
                        return True
            time.sleep(0.5)
        return False

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The alive nodes as ``ray.nodes()`` lists them (NodeID, Resources, ...)."""
        import ray

        if not ray.is_initialized():
            # This process joins as a driver: the state API needs the dashboard, which the
            # head does not run, while ray.nodes() asks the GCS.
            ray.init(address=self.address, log_to_driver=False, namespace="awb-cluster-driver")
        return [n for n in ray.nodes() if n["Alive"]]

    def stop_node(self, node: Node) -> None:
        """Kill a node's whole process group (raylet, workers, replicas) at once: a lost node."""
        self._kill(node)

    @staticmethod
    def _kill(node: Node) -> None:
        try:
            group = os.getpgid(node.process.pid)
        except ProcessLookupError:
            group = node.process.pid
        # Its replicas are in the same session but may have left the group; find them by
        # session before the leader goes.
        members = [p for p in psutil.process_iter(["pid"])
                   if _session(p.info["pid"]) == group]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        for proc in members:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=30)
        psutil.wait_procs(members, timeout=30)

    def processes(self) -> list[psutil.Process]:
        """Every process still running in one of this cluster's node sessions."""
        sessions = {node.process.pid for node in self.nodes}
        return [p for p in psutil.process_iter(["pid"]) if _session(p.info["pid"]) in sessions]

    def shutdown(self) -> None:
        """Kill every node (workers first, then the head); nothing of the cluster survives."""
        leave_ray()
        for node in reversed(self.nodes):
            self._kill(node)
        self.nodes.clear()


def _raylet_aborted(temp_dir: Path) -> bool:
    # The raylet's fatal check ends its start; `ray start` itself notices only much later.
    for log in temp_dir.glob("session_*/logs/raylet.out"):
        with contextlib.suppress(OSError):
            if b"Check failed" in log.read_bytes():
                return True
    return False


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def node_ip() -> str:
    """The address Ray's nodes register under on this machine (Ray's own choice)."""
    from ray._private.services import get_node_ip_address

    ip: str = get_node_ip_address()
    return ip
