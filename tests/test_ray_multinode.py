"""The ``ray`` backend on a real multi-node Ray cluster on this machine (tests/ray_cluster.py).

One cluster for the module: a head (1 CPU, no ``agents_node`` resource) and a worker node
started with ``agents_node`` resources, each a ``ray start --block`` in its own process group,
so one node can be lost on its own. Servers are real ``jupyter server`` children joined to it.
The tests run in order: placement, then loss and return of the node, then a server killed
with SIGKILL and started again (adoption), then Ray Client.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests

from server_extension.serving.ray_backend import app_prefix
from server_extension.serving.serde import decode_tree, encode_tree
from tests.ray_cluster import MultiNodeCluster, Node
from tests.ray_support import RAY_DEPLOY_TIMEOUT, ray_server_args
from tests.servers import ServerProcess, copy_workspace, running_server, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

WORKER_RESOURCES = {"agents_node": 2.0}
PLACED = {"backend": "ray", "replicas": 2, "ray_resources": {"agents_node": 1}}
# Losing a node and starting one: node starts are retried on a loaded machine (ray_cluster).
NODE_TIMEOUT = 420.0


class Cluster:
    """The module's cluster and the worker node that carries ``agents_node``."""

    def __init__(self, cluster: MultiNodeCluster, worker: Node) -> None:
        self.cluster = cluster
        self.worker = worker


@pytest.fixture(scope="module", autouse=True)
def auth_off() -> Iterator[None]:
    """The servers this module starts join the cluster with token authentication off, as
    its nodes run. They inherit this process's environment, and ``ray.init`` writes
    ``RAY_AUTH_MODE=token`` into it: after an earlier module's local Ray, every deploy here
    timed out ("Timed out resolving to ObjectRef")."""
    # This process is a driver too (it asks Serve where the replicas run), and Ray reads the
    # mode into its config once; Ray's own test helper re-reads it, as Ray's tests do.
    from ray._private.authentication_test_utils import reset_auth_token_state

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    reset_auth_token_state()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
        reset_auth_token_state()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head plus one ``agents_node`` worker; every Ray process of it is gone afterwards."""
    pytest.importorskip("ray")
    # Not under pytest's tmp_path: Ray's socket paths inside it must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="awbray-", dir="/tmp"))
    multi = MultiNodeCluster(root, head_cpus=1)
    try:
        multi.start()
        worker = multi.add_node(cpus=1, resources=WORKER_RESOURCES, name="agents1")
        yield Cluster(multi, worker)
    finally:
        multi.shutdown()
        left = multi.processes()
        shutil.rmtree(root, ignore_errors=True)
        assert left == [], f"Ray processes left after the module: {left}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path) -> Path:
    """The module server's workspace (the same path for every node, as on shared storage)."""
    return copy_workspace(tmp_path_factory.mktemp("multinode-ws"), demo_experiments)


@pytest.fixture(scope="module")
def server(workspace: Path, cluster: Cluster) -> Iterator[ServerProcess]:
    """A server joined to the cluster, health checks every second, a short request timeout."""
    args = [*ray_server_args(cluster.cluster.address),
            "--AgentsWorkbenchApp.health_check_interval=1",
            "--AgentsWorkbenchApp.request_timeout=20"]
    with running_server(workspace, extra_args=args) as started:
        yield started


def _apps(prefix: str) -> dict[str, Any]:
    from ray import serve

    return {name: app for name, app in serve.status().applications.items()
            if name.startswith(prefix)}


def _app_of(root: Path, agent: str) -> str:
    apps = _apps(f"{app_prefix(root)}{agent}-")
    assert len(apps) == 1, apps
    return next(iter(apps))


def _replica_pids(app_name: str, want: int) -> set[int]:
    """Process ids of the replicas answering probes (asked through Ray's own handle)."""
    from ray import serve

    handle = serve.get_app_handle(app_name)
    pids: set[int] = set()
    for _ in range(40):
        pids.add(handle.probe.remote().result(timeout_s=120))
        if len(pids) >= want:
            break
    return pids


def _node_of(pid: int, cluster: MultiNodeCluster) -> str:
    """Which node's ``ray start`` session a process belongs to."""
    session = os.getsid(pid)
    names = [node.name for node in cluster.nodes if node.process.pid == session]
    assert names, f"pid {pid} belongs to no node of the cluster"
    return names[0]


def _act(server: ServerProcess, agent: dict[str, Any]) -> requests.Response:
    return server.session.post(agent["endpoint"] + "/get_action", timeout=60,
                               headers={"Authorization": f"Bearer {agent['api_key']}"},
                               json={"obs": encode_tree(np.zeros((2, 4), np.float32))})


def _assert_answer(answer: requests.Response) -> bool:
    """True for a right answer; a clear 503/504 passes as not answered; anything else fails."""
    if answer.status_code == 200:
        actions = np.asarray(decode_tree(answer.json()["action"], "action"))
        assert actions.shape == (2,), answer.text
        assert set(actions.tolist()) <= {0, 1}, answer.text
        return True
    assert answer.status_code in (503, 504), (answer.status_code, answer.text)
    assert answer.json()["error"], answer.text
    return False


def test_ray_resources_place_replicas_on_the_worker_node(server: ServerProcess,
                                                         workspace: Path,
                                                         cluster: Cluster) -> None:
    agent = server.deploy("placed", "cartpole-dqn", options=PLACED, timeout=RAY_DEPLOY_TIMEOUT)
    assert agent["options"] == PLACED
    app_name = _app_of(workspace, "placed")
    pids = _replica_pids(app_name, want=2)
    assert len(pids) == 2
    # Both replicas run in the worker node's processes, none on the head (1 CPU free there).
    assert {_node_of(pid, cluster.cluster) for pid in pids} == {"agents1"}
    assert _assert_answer(_act(server, agent))


@pytest.fixture
def node_returns(cluster: Cluster) -> Iterator[None]:
    """After the test, an ``agents_node`` worker is up again even if the test failed before
    it started one: the later tests of the module need it and should fail only for their own
    reasons."""
    yield
    if not cluster.worker.alive:
        cluster.worker = cluster.cluster.add_node(cpus=1, resources=WORKER_RESOURCES,
                                                  name="agents2")


@pytest.mark.usefixtures("node_returns")
def test_lost_node_fails_the_agent_and_a_returning_node_brings_it_back(
    server: ServerProcess, cluster: Cluster,
) -> None:
    agent = server.api("GET", "agents/placed").json()
    assert agent["status"] == "Deployed", agent
    cluster.cluster.stop_node(cluster.worker)

    # No node has agents_node now: Serve cannot place the replicas. The agent goes Failed
    # with Ray's reason; every request meanwhile is right or a clear 503/504.
    seen: list[str] = []
    deadline = time.monotonic() + NODE_TIMEOUT
    while True:
        state = server.api("GET", "agents/placed").json()
        if not seen or seen[-1] != state["status"]:
            seen.append(state["status"])
        if state["status"] == "Failed":
            break
        _assert_answer(_act(server, agent))
        assert time.monotonic() < deadline, f"never Failed; statuses {seen}"
        time.sleep(0.5)
    # Pending lasts from one failed probe to the next, which may be milliseconds apart (the
    # probes that waited on the lost replica fail together): it is allowed, not required.
    assert seen[0] == "Deployed", seen
    assert set(seen) <= {"Deployed", "Pending", "Failed"}, seen
    assert "Health check failed" in state["error"]
    assert "Ray Serve application" in state["error"], state["error"]
    refused = _act(server, agent)
    assert refused.status_code == 503, refused.text
    assert "Failed" in refused.json()["error"]

    # A node with the resource joins: Serve places replicas there and the agent comes back.
    cluster.worker = cluster.cluster.add_node(cpus=1, resources=WORKER_RESOURCES,
                                              name="agents2")
    deadline = time.monotonic() + NODE_TIMEOUT
    while True:
        state = server.api("GET", "agents/placed").json()
        if state["status"] == "Deployed" and _assert_answer(_act(server, agent)):
            break
        assert state["status"] in ("Failed", "Deployed"), state
        assert time.monotonic() < deadline, f"not back; {state}"
        time.sleep(1)
    assert state["error"] is None
    app_name = _app_of(server.root, "placed")
    assert {_node_of(pid, cluster.cluster) for pid in _replica_pids(app_name, want=2)} == {
        "agents2"}


def test_restarted_server_replaces_what_a_killed_one_left(
    tmp_path: Path, demo_experiments: Path, workspace: Path, cluster: Cluster,
) -> None:
    root = copy_workspace(tmp_path / "other-ws", demo_experiments)
    args = ray_server_args(cluster.cluster.address)
    other_app = _app_of(workspace, "placed")  # the module server's: must stay untouched

    first = ServerProcess(root, extra_args=args).start()
    try:
        first.deploy("cp", "cartpole-dqn", timeout=RAY_DEPLOY_TIMEOUT)
        orphan = _app_of(root, "cp")
        os.kill(first.pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(first.pid)], timeout=30)
    finally:
        first.stop()
    assert orphan in _apps(app_prefix(root)), "the killed server's application should remain"

    with running_server(root, extra_args=args) as second:
        # The agent was connected: the new server deploys it again and deletes the orphan.
        agent = second.wait_status("cp", timeout=RAY_DEPLOY_TIMEOUT)
        assert agent["status"] == "Deployed", agent
        wait_until(lambda: orphan not in _apps(app_prefix(root)), timeout=60,
                   what="the orphaned application to be deleted")
        assert len(_apps(app_prefix(root))) == 1
        assert _assert_answer(_act(second, agent))
        assert other_app in _apps(app_prefix(workspace))
        assert second.api("DELETE", "agents/cp").status_code in (200, 204)
        wait_until(lambda: not _apps(app_prefix(root)), timeout=60,
                   what="Delete to remove the application")
    assert other_app in _apps(app_prefix(workspace))


def _client_server_logs(cluster: Cluster) -> str:
    """The ends of the head's Ray Client server logs."""
    head = cluster.cluster.nodes[0]
    parts = []
    for log in sorted(head.temp_dir.glob("session_latest/logs/ray_client_server*")):
        parts.append(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(parts) or f"no Ray Client server logs under {head.temp_dir}"


def test_ray_client_address_serves_an_agent(tmp_path: Path, demo_experiments: Path,
                                            cluster: Cluster) -> None:
    root = copy_workspace(tmp_path / "client-ws", demo_experiments)
    with running_server(root, extra_args=ray_server_args(
            cluster.cluster.client_address)) as client_server:
        try:
            agent = client_server.deploy("via-client", "cartpole-dqn",
                                         timeout=RAY_DEPLOY_TIMEOUT)
        except AssertionError as exc:
            # Ray Client's failures point at the head's logs, gone with the module's cluster.
            raise AssertionError(f"{exc}\n{_client_server_logs(cluster)}") from exc
        assert _assert_answer(_act(client_server, agent))
        assert len(_apps(app_prefix(root))) == 1
        client_server.api("POST", "agents/via-client/disconnect")
        wait_until(lambda: not _apps(app_prefix(root)), timeout=60,
                   what="Disconnect to remove the application")
