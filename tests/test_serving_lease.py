"""The serving lease: a frozen leader is noticed, taken over, and steps down when it wakes.

The lease itself (serving/lease.py) is checked with two real SQLite connections and flocks in
this process; the behaviour a user sees with real ``jupyter server`` processes over one
workspace: SIGSTOP the serving one and the other says "not responding" (panel listing,
Connect, the Arena control plane's deploy), a takeover through the management route makes it
serve, and SIGCONT makes the old one stop its workers and follow. Deleting the old
``serving.lock`` while servers run no longer lets a new server load agents a second time.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from agents_widget import AgentsPanel
from server_extension.serving.lease import ServingLease
from server_extension.serving.serde import encode_array
from server_extension.workspace.registry import Registry
from tests.panel_support import front_end
from tests.servers import ServerProcess, copy_workspace, wait_until
from workbench_core.discovery import ServerInfo

__all__ = ["front_end"]  # a fixture used by name below

OBS = {"obs": encode_array(np.zeros((1, 4), dtype=np.float32))}
SILENCE = "--AgentsWorkbenchApp.leader_silence_s=5"


# -- the lease, in this process -----------------------------------------------------------


@pytest.fixture
def leases(tmp_path: Path) -> Iterator[list[ServingLease]]:
    """Three servers' leases over one registry file (each with its own connection)."""
    made: list[tuple[Registry, ServingLease]] = []
    for i in range(3):
        registry = Registry(tmp_path / "registry.sqlite3")
        made.append((registry, ServingLease(tmp_path, registry, url=f"http://s{i}/",
                                            silence_s=3.0)))
    yield [lease for _, lease in made]
    for registry, lease in made:
        registry.close()
        lease.close()


def test_one_leader_fenced_by_epoch(leases: list[ServingLease]) -> None:
    a, b, c = leases
    assert a.try_acquire()
    assert not b.try_acquire()  # a holds the registry file's flock
    assert b.holder_url() == "http://s0/"
    # a stops beating (frozen): b notices, and takes over when told to.
    assert wait_until(b.silent_since, timeout=10, what="a's beats to go stale")
    assert b.state()["can_take_over"]
    assert "http://s0/" in b.state()["message"]
    assert b.take_over()
    assert b.epoch is not None
    assert a.epoch is not None
    assert b.epoch > a.epoch
    # a wakes: its next beat finds another epoch, and it lets the flock go.
    wait_until(lambda: not a.beat(), timeout=10, what="a to see it lost the lease")
    assert not a.held
    assert a.holder_url() == "http://s1/"
    # b gets the flock back at a beat; c, arriving later, follows.
    wait_until(lambda: b.beat() and b._locked, timeout=10, what="b to hold the flock")
    assert not c.try_acquire()
    assert not a.try_acquire()
    # b stops cleanly: the next server takes over at once.
    b.release()
    assert c.try_acquire()
    assert a.holder_url() == "http://s2/"


def test_a_forced_leader_keeps_the_lease_while_the_frozen_one_lets_the_flock_go(
        leases: list[ServingLease]) -> None:
    a, b, c = leases
    assert a.try_acquire()
    wait_until(b.silent_since, timeout=10, what="a's beats to go stale")
    assert b.take_over()  # a still holds the flock (frozen, not dead)
    assert not c.take_over()  # a second takeover at the same moment: b beats, c follows
    wait_until(lambda: not a.beat(), timeout=10, what="a to step down")
    # The flock is free for a moment, before b's next beat: c takes it but sees b beating.
    assert not c.try_acquire()
    assert b.beat()
    assert b.held
    assert not c.held


# -- real servers ---------------------------------------------------------------------------


def _act(endpoint: str, key: str) -> requests.Response:
    return requests.post(f"{endpoint}/get_action", json=OBS, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie its parent has yet to reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


def _worker_pid(server: ServerProcess, name: str) -> int:
    worker = server.api("GET", f"agents/{name}/metrics").json()["worker"]
    assert worker is not None, f"{name} has no worker on {server.url}"
    return int(worker["pid"])


@pytest.fixture
def two_servers(tmp_path: Path, demo_experiments: Path) -> Iterator[tuple[ServerProcess,
                                                                         ServerProcess]]:
    """A (serving; workers at nice 11) and B over one workspace; A continued and stopped
    whatever a test did to it."""
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    a = ServerProcess(root, extra_args=[SILENCE, "--AgentsWorkbenchApp.worker_nice=11"]).start()
    b = ServerProcess(root, extra_args=[SILENCE]).start()
    try:
        yield a, b
    finally:
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
        b.stop()
        a.stop()


@pytest.mark.slow
def test_frozen_leader_is_reported_taken_over_and_steps_down_on_waking(
        two_servers: tuple[ServerProcess, ServerProcess], front_end: list[Any]) -> None:
    a, b = two_servers
    agent = a.deploy("steady", "cartpole-dqn")
    assert agent["endpoint"].startswith(a.url)
    old_worker = _worker_pid(a, "steady")
    # CPU: workers run at the configured nice level (this machine has no cgroup v2 cpu.max).
    assert _nice(old_worker) == 11
    assert _nice(a.pid) != 11
    # While A beats, a takeover is refused (and, like every management route, needs auth).
    refused = b.api("POST", "serving/takeover")
    assert refused.status_code == 409
    assert a.url in refused.json()["message"]
    assert requests.post(f"{b.url}agents/api/serving/takeover", timeout=10).status_code == 403
    state = b.api("GET", "serving").json()
    assert (state["serving_here"], state["serving_url"], state["responding"]) == (
        False, a.url, True)
    assert a.api("GET", "serving").json()["serving_here"]

    os.kill(a.pid, signal.SIGSTOP)  # Ctrl-Z: A's loop stops, its beats with it
    state = wait_until(lambda: (s := b.api("GET", "serving").json())["can_take_over"] and s,
                       timeout=60, what="B to see A silent")
    assert not state["responding"]
    assert not state["serving_here"]
    assert state["serving_url"] == a.url
    assert f"The serving server ({a.url}) is not responding since" in state["message"]
    # Every answer about a connected agent says so instead of a silent Pending.
    assert "is not responding since" in b.api("GET", "agents/steady").json()["error"]
    assert b.api("POST", "agents", json={"name": "late", "experiment": "cartpole-dqn"}
                 ).status_code == 201
    connected = b.api("POST", "agents/late/connect").json()
    assert connected["status"] == "Pending"
    assert f"The serving server ({a.url}) is not responding" in connected["error"]
    # The Arena control plane's deploy (arena agent deploy) answers at once, naming A.
    token = b.api("POST", "tokens", json={"name": "cli"}).json()["token"]
    deployed = requests.post(f"{b.url}agents/arena/api/cli/v1/inference/deploy",
                             json={"experiment_name": "cartpole-dqn"}, timeout=30,
                             headers={"Authorization": f"Bearer {token}"})
    assert deployed.status_code == 503, deployed.text
    assert f"The serving server ({a.url}) is not responding" in deployed.json()["error"]
    for name in ("late", "cartpole-dqn"):  # keep the takeover to one agent to load
        assert b.api("DELETE", f"agents/{name}").status_code == 204

    # B's panel says so too, and its button takes over (POST agents/api/serving/takeover).
    panel = AgentsPanel(ServerInfo(url=b.url, token=b.token), poll_interval=0.2)
    try:
        panel.wait_idle()
        panel.refresh().result(30)
        assert panel.serving_notice.visible
        assert f"The serving server ({a.url}) is not responding" in \
            panel.serving_notice.text.value
        assert "serving server not responding" in panel.row("steady").status_cell.value
        panel.serving_notice.button.click()
        panel.wait_idle()
        assert "This server now serves the workspace" in panel.notice.value
        assert not panel.serving_notice.visible
    finally:
        panel.close()
    state = b.api("GET", "serving").json()
    assert state["serving_here"]
    assert state["serving_url"] == b.url
    moved = wait_until(lambda: (r := b.api("GET", "agents/steady").json())["status"]
                       == "Deployed" and r, timeout=120, what="B to load the agent")
    assert moved["endpoint"] == f"{b.url}agents/d/steady"
    assert moved["error"] is None
    assert _act(moved["endpoint"], agent["api_key"]).status_code == 200
    new_worker = _worker_pid(b, "steady")

    os.kill(a.pid, signal.SIGCONT)  # A wakes: it finds the lease gone and stops its workers
    wait_until(lambda: _gone(old_worker), timeout=60, what="A's worker to stop")
    assert "Another server took over serving this workspace" in a.log()
    assert a.api("GET", "serving").json()["serving_url"] == b.url
    assert not a.api("GET", "serving").json()["serving_here"]
    # One server serves: A points callers at B and answers no call itself.
    assert a.api("GET", "agents/steady").json()["endpoint"] == moved["endpoint"]
    refused = _act(f"{a.url}agents/d/steady", agent["api_key"])
    assert refused.status_code == 404
    assert b.url in refused.json()["error"]
    assert not _gone(new_worker)
    assert _act(moved["endpoint"], agent["api_key"]).status_code == 200


@pytest.mark.slow
def test_deleting_the_old_lock_file_makes_no_second_loader(
        tmp_path: Path, demo_experiments: Path) -> None:
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    a = ServerProcess(root).start()
    b = ServerProcess(root).start()
    c: ServerProcess | None = None
    try:
        (root / "serving.lock").unlink(missing_ok=True)  # what once made two servers load
        c = ServerProcess(root).start()
        agent = c.deploy("once", "cartpole-dqn")
        assert agent["endpoint"] == f"{a.url}agents/d/once"
        states: list[dict[str, Any]] = [s.api("GET", "serving").json() for s in (a, b, c)]
        assert [s["serving_here"] for s in states] == [True, False, False]
        assert {s["serving_url"] for s in states} == {a.url}
        assert "Agent once deployed" in a.log()
        assert "Agent once deployed" not in b.log() + c.log()
    finally:
        if c is not None:
            c.stop()
        b.stop()
        a.stop()
