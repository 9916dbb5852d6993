"""Worker processes: hostile checkpoints and runaway calls cost one agent, never the server.

Every hostile checkpoint here is a real pickle built in the test (AgileRL checkpoints are
pickles, so loading one runs whatever it says), served by a real ``jupyter server`` whose
agents run in real worker processes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.servers import ServerProcess, copy_workspace, wait_until
from tests.test_management_api import obs_payload

ARGS = [
    "--AgentsWorkbenchApp.load_timeout=6",
    "--AgentsWorkbenchApp.request_timeout=3",
    "--AgentsWorkbenchApp.worker_memory_mb=1536",
    "--AgentsWorkbenchApp.max_body_mb=1",
    "--AgentsWorkbenchApp.max_batch_rows=1000",
    "--AgentsWorkbenchApp.health_check_interval=0",
]


class _Call:
    """Pickles as ``fn(*args)``: what a hostile checkpoint runs when it is loaded."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.fn, self.args


# Loads as the real checkpoint at REAL, after making the runtime hang on 3-row calls (the
# probe sends one row, so the agent deploys and only those calls never return).
_HANG_ON_THREE_ROWS = """
import time, torch, dill
from server_extension.serving.runtimes import agilerl as _rt
_orig = _rt.AgileRLRuntime.get_action
def _get_action(self, obs, **kw):
    if getattr(obs, "shape", (0,))[0] == 3:
        time.sleep(3600)
    return _orig(self, obs, **kw)
_rt.AgileRLRuntime.get_action = _get_action
"""

HOSTILE: dict[str, Any] = {
    "exits": _Call(os._exit, 3),
    "segfaults": _Call(eval, "__import__('ctypes').string_at(0)"),
    "sleeps": _Call(eval, "__import__('time').sleep(3600)"),
    "allocates": _Call(eval, "bytearray(8 * 1024 ** 3)"),
    "talks-then-exits": _Call(exec, "import sys, os\nsys.stderr.write('boom: the checkpoint "
                                    "gave up\\n')\nsys.stderr.flush()\nos._exit(7)"),
}


def _hostile_experiment(root: Path, name: str, payload: Any | None) -> Path:
    """A copy of the demo CartPole experiment whose checkpoints are ``payload``'s pickle."""
    source = root / "experiments" / "cartpole-dqn"
    target = root / "experiments" / name
    shutil.copytree(source, target)
    info = json.loads((target / "experiment.json").read_text())
    info["name"] = name
    (target / "experiment.json").write_text(json.dumps(info))
    for path in (target / "checkpoints").iterdir():
        if payload is None:  # the hanging-call agent: a real checkpoint behind a patch
            import dill
            import torch

            code = _HANG_ON_THREE_ROWS + (
                f"\n_loaded = torch.load({str(path) + '.real'!r}, map_location='cpu', "
                "pickle_module=dill, weights_only=False)\n")
            real = path.with_name(path.name + ".real")
            shutil.copyfile(path, real)
            expr = f"(exec({code!r}, (g := {{}})), g['_loaded'])[1]"
            torch.save(_Call(eval, expr), path, pickle_module=dill)
        else:
            path.write_bytes(pickle.dumps(payload))
    return target


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           demo_experiments: Path) -> Iterator[ServerProcess]:
    root = copy_workspace(tmp_path_factory.mktemp("workers"), demo_experiments)
    for name, payload in HOSTILE.items():
        _hostile_experiment(root, name, payload)
    _hostile_experiment(root, "hangs-on-three-rows", None)
    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        yield srv
    finally:
        srv.stop()


def _deploy(server: ServerProcess, name: str, experiment: str) -> dict[str, Any]:
    created = server.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                  "checkpoint": "best"})
    assert created.status_code in (201, 409), created.text
    assert server.api("POST", f"agents/{name}/connect").status_code == 200
    return server.wait_status(name)


def _act(agent: dict[str, Any], rows: int = 1, timeout: float = 30) -> requests.Response:
    return requests.post(agent["endpoint"] + "/get_action",
                         json=obs_payload(np.zeros((rows, 4), np.float32)),
                         headers={"Authorization": f"Bearer {agent['api_key']}"},
                         timeout=timeout)


def _assert_server_and_neighbour_fine(server: ServerProcess, neighbour: dict[str, Any]) -> None:
    assert server.proc is not None
    assert server.proc.poll() is None, "the Jupyter server died"
    assert server.api("GET", "experiments").status_code == 200
    answer = _act(neighbour)
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def healthy(server: ServerProcess) -> dict[str, Any]:
    agent = _deploy(server, "healthy", "cartpole-dqn")
    assert agent["status"] == "Deployed", agent
    return agent


@pytest.mark.parametrize(("experiment", "reason"), [
    ("exits", "exited with code 3"),
    ("segfaults", "crashed (SIGSEGV)"),
    ("sleeps", "did not load within 6 s"),
    ("allocates", "more than the worker's 1536 MiB"),
    ("talks-then-exits", "boom: the checkpoint gave up"),
])
def test_hostile_checkpoint_fails_its_agent_only(server: ServerProcess,
                                                 healthy: dict[str, Any],
                                                 experiment: str, reason: str) -> None:
    started = time.monotonic()
    agent = _deploy(server, f"bad-{experiment}", experiment)
    assert agent["status"] == "Failed", agent
    assert reason in agent["error"], agent["error"]
    assert "Traceback" not in agent["error"]
    assert time.monotonic() - started < 30
    _assert_server_and_neighbour_fine(server, healthy)


def test_a_crashed_load_is_not_retried_at_server_start(
        tmp_path: Path, demo_experiments: Path) -> None:
    # About 60 s in CI: two servers, one after the other, since what it tests is what a
    # restarted server does with a load that crashed before.
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    _hostile_experiment(root, "exits", HOSTILE["exits"])
    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        assert _deploy(srv, "good", "cartpole-dqn")["status"] == "Deployed"
        bad = _deploy(srv, "bad", "exits")
        assert bad["status"] == "Failed"
    finally:
        srv.stop()
    again = ServerProcess(root, extra_args=ARGS).start()
    try:
        assert again.wait_status("good")["status"] == "Deployed"
        bad = again.api("GET", "agents/bad").json()
        # Not reloaded: it keeps its reason and waits for Retry (which fails it again).
        assert bad["status"] == "Failed", bad
        assert "exited with code 3" in bad["error"], bad
        assert again.api("POST", "agents/bad/connect").status_code == 200
        assert again.wait_status("bad")["status"] == "Failed"
    finally:
        again.stop()


def test_a_call_that_never_returns_is_answered_504_and_its_worker_restarts(
        server: ServerProcess, healthy: dict[str, Any]) -> None:
    agent = _deploy(server, "hanging", "hangs-on-three-rows")
    assert agent["status"] == "Deployed", agent
    first_pid = server.api("GET", "agents/hanging/metrics").json()["worker"]["pid"]
    started = time.monotonic()
    answer = _act(agent, rows=3)
    assert answer.status_code == 504, answer.text
    assert answer.json()["success"] is False
    assert time.monotonic() - started < 10
    _assert_server_and_neighbour_fine(server, healthy)
    # The stuck worker is stopped, not left running; a new one serves the agent.
    wait_until(lambda: not _alive(first_pid), 10, "the stuck worker to be stopped")
    back = server.wait_status("hanging", ("Deployed",))
    assert _act(back).status_code == 200
    worker = server.api("GET", "agents/hanging/metrics").json()["worker"]
    assert worker["restarts"] == 1
    assert worker["pid"] != first_pid


def test_killed_worker_mid_call_gives_5xx_then_the_agent_comes_back(
        server: ServerProcess, healthy: dict[str, Any]) -> None:
    agent = _deploy(server, "victim", "hangs-on-three-rows")
    pid = server.api("GET", "agents/victim/metrics").json()["worker"]["pid"]
    session = requests.Session()
    # A call in flight (it would hang), then the worker is killed under it.
    import threading

    result: list[requests.Response] = []
    call = threading.Thread(target=lambda: result.append(_act(agent, rows=3)))
    call.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    call.join(20)
    assert result, "the call did not come back"
    assert result[0].status_code == 503, result[0].text
    assert "killed by SIGKILL" in result[0].json()["error"]
    _assert_server_and_neighbour_fine(server, healthy)
    back = server.wait_status("victim", ("Deployed",))
    assert "SIGKILL" in server.api("GET", "agents/victim/metrics").json()["last_error"]["message"]
    assert _act(back).status_code == 200
    session.close()


def test_a_worker_that_keeps_dying_ends_failed(server: ServerProcess,
                                               healthy: dict[str, Any]) -> None:
    agent = _deploy(server, "fragile", "cartpole-dqn")
    killed: list[int] = []

    def next_worker() -> int | None:
        worker = server.api("GET", "agents/fragile/metrics").json().get("worker") or {}
        pid = worker.get("pid")
        return pid if pid and pid not in killed else None

    for _ in range(4):
        pid = wait_until(next_worker, 60, "a new worker")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        wait_until(lambda p=pid: not _alive(p), 10, "the worker to die")
        wait_until(lambda: server.api("GET", "agents/fragile").json()["status"] != "Deployed"
                   or next_worker(), 60, "the death to be noticed")
    status = server.wait_status("fragile", ("Failed",))
    assert status["status"] == "Failed", status
    assert "died 4 times" in status["error"]
    assert "SIGKILL" in status["error"]
    assert _act(agent).status_code == 404  # no longer served
    _assert_server_and_neighbour_fine(server, healthy)


def test_oversized_requests_are_refused_with_the_setting_to_change(
        server: ServerProcess, healthy: dict[str, Any]) -> None:
    rows = _act(healthy, rows=5000)
    assert rows.status_code == 400
    assert "max_batch_rows" in rows.json()["error"]
    assert "5000 rows" in rows.json()["error"]
    big = requests.post(healthy["endpoint"] + "/get_action", data=b"x" * (2 * 1024 * 1024),
                        headers={"Authorization": f"Bearer {healthy['api_key']}"}, timeout=30)
    assert big.status_code == 413
    assert "max_body_mb" in big.json()["error"]
    _assert_server_and_neighbour_fine(server, healthy)


def test_a_too_large_body_is_refused_before_it_is_sent(server: ServerProcess,
                                                       healthy: dict[str, Any]) -> None:
    """The 413 comes from Content-Length alone: the server does not wait for (or buffer)
    the 512 MiB the client announces."""
    path = healthy["endpoint"].split(str(server.port), 1)[1] + "/get_action"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {healthy['api_key']}\r\n"
                      f"Content-Length: {512 * 1024 * 1024}\r\n\r\n").encode())
        answer = sock.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    _assert_server_and_neighbour_fine(server, healthy)


def test_disconnect_stops_the_worker(server: ServerProcess) -> None:
    _deploy(server, "short-lived", "cartpole-dqn")
    pid = server.api("GET", "agents/short-lived/metrics").json()["worker"]["pid"]
    assert _alive(pid)
    assert server.api("POST", "agents/short-lived/disconnect").status_code == 200
    wait_until(lambda: not _alive(pid), 10, "the worker to exit")
    assert server.api("GET", "agents/short-lived/metrics").json()["worker"] is None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_two_llm_agents_connected_at_once_both_deploy(tmp_path: Path,
                                                      advanced_experiments: Path) -> None:
    """Loading transformers models from two threads of one process is not safe; in two
    worker processes it is."""
    root = copy_workspace(tmp_path / "llm", advanced_experiments)
    srv = ServerProcess(root, extra_args=["--AgentsWorkbenchApp.load_timeout=120",
                                          "--AgentsWorkbenchApp.health_check_interval=0"]).start()
    try:
        for name, experiment in (("sft", "tiny-chat-sft"), ("lora", "tiny-chat-lora")):
            created = srv.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                       "checkpoint": "best"})
            assert created.status_code == 201, created.text
        for name in ("sft", "lora"):  # back to back: both load at the same moment
            assert srv.api("POST", f"agents/{name}/connect").status_code == 200
        agents = {name: srv.wait_status(name, timeout=120) for name in ("sft", "lora")}
        pids = set()
        for name, agent in agents.items():
            assert agent["status"] == "Deployed", agent
            answer = requests.post(
                agent["endpoint"] + "/generate",
                json={"prompts": ["What is the capital of France?"],
                      "params": {"max_new_tokens": 8, "do_sample": False}},
                headers={"Authorization": f"Bearer {agent['api_key']}"}, timeout=60)
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"][0]["completion"]
            pids.add(srv.api("GET", f"agents/{name}/metrics").json()["worker"]["pid"])
        assert len(pids) == 2
        # Disconnecting gives the model's memory back: its worker process is gone.
        assert srv.api("POST", "agents/sft/disconnect").status_code == 200
        wait_until(lambda: sum(_alive(p) for p in pids) == 1, 10, "the sft worker to exit")
    finally:
        srv.stop()


def test_the_panel_says_a_pending_agent_is_restarting_and_why() -> None:
    from agents_widget.client import AgentInfo
    from agents_widget.table import status_html

    fresh = status_html(AgentInfo(name="a", tab="classic", experiment="e", status="Pending"))
    assert "loading" in fresh
    again = status_html(AgentInfo(name="a", tab="classic", experiment="e", status="Pending",
                                  error="Restarting its worker: the worker crashed (SIGSEGV)"))
    assert "restarting" in again
    assert "SIGSEGV" in again  # the reason, as the hint's tooltip
