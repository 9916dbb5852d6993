"""A worker owns its whole process tree: a checkpoint's children go with it, and no signal
ever reaches a process that merely got a dead worker's pid.

The checkpoints are real pickles built here that, when loaded, start processes the way
innocent code does (``os.fork`` keeping every descriptor, a ``multiprocessing`` pool with the
fork method, busy children), then load the real demo checkpoint. A real ``jupyter server``
serves them from real worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.servers import ServerProcess, copy_workspace, wait_until
from tests.test_management_api import obs_payload
from tests.test_workers import _Call

ARGS = [
    "--AgentsWorkbenchApp.load_timeout=60",
    "--AgentsWorkbenchApp.request_timeout=10",
    "--AgentsWorkbenchApp.max_array_mb=32",
    "--AgentsWorkbenchApp.health_check_interval=0",
]

# Runs in the worker while the checkpoint loads: children that hold the worker's descriptors.
_STARTS = {
    "forks-keepfds": """
import os, time
if os.fork() == 0:
    time.sleep(3600)
    os._exit(0)
""",
    "pool-fork": """
import multiprocessing, sys
sys._hostile_pool = multiprocessing.get_context("fork").Pool(2)
sys._hostile_pool.map(abs, range(4))
""",
    "answers-big": """
import numpy as np
from server_extension.serving.runtimes import agilerl as _big
_small = _big.AgileRLRuntime.get_action
def _huge(self, obs, **kw):
    if getattr(obs, "shape", (0,))[0] == 2:  # 128 MiB of actions, past the 48 MiB cap
        return np.ones((2, 16 * 2**20), np.float32)
    return _small(self, obs, **kw)
_big.AgileRLRuntime.get_action = _huge
""",
    "loads-slowly": """
import time
time.sleep(6)
""",
    "spins": """
import os
for _ in range(2):
    if os.fork() == 0:
        while True:
            pass
""",
}

# Then it loads as the real checkpoint, whose runtime hangs on 3-row calls (the probe sends
# one row, so the agent deploys and only those calls never return).
_REAL = """
import time, torch, dill
from server_extension.serving.runtimes import agilerl as _rt
_orig = _rt.AgileRLRuntime.get_action
def _get_action(self, obs, **kw):
    if getattr(obs, "shape", (0,))[0] == 3:
        time.sleep(3600)
    return _orig(self, obs, **kw)
_rt.AgileRLRuntime.get_action = _get_action
_loaded = torch.load(REAL, map_location='cpu', pickle_module=dill, weights_only=False)
"""


def _experiment(root: Path, name: str, starts: str) -> None:
    import dill
    import torch

    target = root / "experiments" / name
    shutil.copytree(root / "experiments" / "cartpole-dqn", target)
    info = json.loads((target / "experiment.json").read_text())
    info["name"] = name
    (target / "experiment.json").write_text(json.dumps(info))
    for path in (target / "checkpoints").iterdir():
        real = path.with_name(path.name + ".real")
        shutil.copyfile(path, real)
        code = starts + _REAL.replace("REAL", repr(str(real)))
        expr = f"(exec({code!r}, (g := {{}})), g['_loaded'])[1]"
        torch.save(_Call(eval, expr), path, pickle_module=dill)


def _workspace(base: Path, demo: Path) -> Path:
    root = copy_workspace(base, demo)
    for name, starts in _STARTS.items():
        _experiment(root, name, starts)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           demo_experiments: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(_workspace(tmp_path_factory.mktemp("tree"), demo_experiments),
                        extra_args=ARGS).start()
    try:
        yield srv
    finally:
        srv.stop()


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes in session ``sid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(entry))
    return found


def _deploy(server: ServerProcess, name: str, experiment: str) -> tuple[dict[str, Any], int]:
    created = server.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                  "checkpoint": "best"})
    assert created.status_code == 201, created.text
    assert server.api("POST", f"agents/{name}/connect").status_code == 200
    agent = server.wait_status(name, timeout=120)
    assert agent["status"] == "Deployed", agent
    pid = server.api("GET", f"agents/{name}/metrics").json()["worker"]["pid"]
    return agent, pid


def _act(agent: dict[str, Any], rows: int = 1) -> requests.Response:
    # The timeout only bounds a hang (the old behaviour: 330 s for a 10 s request timeout).
    return requests.post(agent["endpoint"] + "/get_action",
                         json=obs_payload(np.zeros((rows, 4), np.float32)),
                         headers={"Authorization": f"Bearer {agent['api_key']}"}, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["forks-keepfds", "pool-fork", "spins"])
def test_a_checkpoints_children_go_with_disconnect(server: ServerProcess,
                                                    experiment: str) -> None:
    agent, pid = _deploy(server, f"kids-{experiment}", experiment)
    assert _act(agent).status_code == 200
    # The worker leads a session of its own, and the checkpoint's children are in it.
    wait_until(lambda: len(_session(pid)) >= 2, 10, "the checkpoint's children")
    if experiment == "spins":  # the traffic view shows the CPU the worker's tree takes
        first = server.api("GET", f"agents/kids-{experiment}/metrics").json()["worker"]
        wait_until(lambda: (server.api("GET", f"agents/kids-{experiment}/metrics").json()[
            "worker"]["cpu_percent"] or 0) > 0, 30, "the CPU share to show")
        shown = server.api("GET", f"agents/kids-{experiment}/metrics").json()["worker"]
        assert shown["cpu_seconds"] > first["cpu_seconds"], shown
    assert server.api("POST", f"agents/kids-{experiment}/disconnect").status_code == 200
    wait_until(lambda: not _session(pid), 10, "the worker and its children to be gone")


def _decoy_on(pid: int) -> subprocess.Popen[bytes] | None:
    """A process of its own session that gets ``pid`` (which must be free), or ``None``."""
    for _ in range(50):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                fh.write(str(pid - 1))
        except OSError:
            return None
        decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                 start_new_session=True)
        if decoy.pid == pid:
            return decoy
        decoy.kill()
        decoy.wait()
    return None


@pytest.mark.slow
def test_a_child_holding_the_socket_hides_no_death_and_no_pid_is_signalled_again(
        server: ServerProcess) -> None:
    agent, pid = _deploy(server, "held-open", "forks-keepfds")
    children = [p for p in _session(pid) if p != pid]
    assert children, "the checkpoint's child did not start"
    # A call that never returns: the worker is killed at the deadline and the caller gets
    # its 504, although the checkpoint's child still holds the worker's end of the socket.
    answer = _act(agent, rows=3)
    assert answer.status_code == 504, answer.text
    assert answer.json()["success"] is False
    assert "10 s" in answer.text, answer.text
    # The child went with it, and the agent came back in a new worker.
    wait_until(lambda: not _session(pid), 10, "the old worker's session to be gone")
    back = server.wait_status("held-open", timeout=120)
    assert back["status"] == "Deployed", back
    assert _act(agent).status_code == 200
    # The old pid is free: an unrelated process (in a session of its own) now gets it. The
    # server used to SIGKILL the dead worker's pid every 200 ms.
    decoy = _decoy_on(pid)
    if decoy is None:
        pytest.skip("cannot place a process on a given pid here (ns_last_pid)")
    try:
        time.sleep(1.5)  # several sweeps of the supervisor (every 200 ms)
        assert server.api("POST", "agents/held-open/disconnect").status_code == 200
        time.sleep(0.5)
        assert decoy.poll() is None, "the server signalled a process that got a dead pid"
    finally:
        decoy.kill()
        decoy.wait()


@pytest.mark.slow
def test_nothing_of_a_worker_outlives_a_killed_server(tmp_path: Path,
                                                      demo_experiments: Path) -> None:
    root = copy_workspace(tmp_path, demo_experiments)
    _experiment(root, "spins", _STARTS["spins"])
    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        agent, pid = _deploy(srv, "spinner", "spins")
        wait_until(lambda: len(_session(pid)) >= 3, 10, "the spinning children")
        assert srv.proc is not None
        template = int(_stat(pid)[1])
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=10)
        # No cleanup code runs in a SIGKILLed server: the template dies with it, each worker
        # with the template, and each worker takes its session down.
        wait_until(lambda: not _session(pid), 10, "the worker and its children to be gone")
        wait_until(lambda: _stat(template)[:1] in ([], ["Z"]), 10, "the template to be gone")
    finally:
        srv.stop()
        for stray in _session(pid) if "pid" in locals() else []:
            os.kill(stray, signal.SIGKILL)  # a failed run leaves no spinning process behind


@pytest.mark.slow
def test_calls_while_the_worker_loads_get_503_with_retry_after(server: ServerProcess) -> None:
    agent, _ = _deploy(server, "slow", "loads-slowly")  # its load takes 6 s
    # Loading again (as after a worker restart): a caller holding the key is told to retry.
    assert server.api("POST", "agents/slow/connect").status_code == 200
    assert server.api("GET", "agents/slow").json()["status"] == "Pending"
    answer = _act(agent)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "2"
    assert "is loading" in answer.json()["error"]
    # Without the key it stays the 404 that says nothing about the agent.
    assert requests.post(agent["endpoint"] + "/get_action", json={}, timeout=30,
                         headers={"Authorization": "Bearer nope"}).status_code == 404
    assert server.wait_status("slow", timeout=120)["status"] == "Deployed"
    assert _act(agent).status_code == 200
    server.api("POST", "agents/slow/disconnect")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.slow
def test_an_answer_over_the_cap_is_refused_in_the_worker(server: ServerProcess) -> None:
    agent, _ = _deploy(server, "big-answer", "answers-big")
    assert server.proc is not None
    before = _rss_mb(server.proc.pid)
    answer = _act(agent, rows=2)
    assert answer.status_code == 500, answer.text[:500]
    assert "48.0 MiB" in answer.json()["error"], answer.text[:500]
    assert "max_array_mb" in answer.json()["error"]
    # The server never held the answer (the worker refused it): its memory stayed put.
    assert _rss_mb(server.proc.pid) - before < 48
    assert _act(agent).status_code == 200
    assert server.api("GET", "agents/big-answer").json()["status"] == "Deployed"
    server.api("POST", "agents/big-answer/disconnect")
