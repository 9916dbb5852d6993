"""Injected faults: broken checkpoints, runtimes that raise or hang, kill -9 mid-operation."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.servers import ServerProcess, wait_until
from tests.test_management_api import call, create, obs_payload, wait_status


@pytest.fixture
def jp_server_config(workspace: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Short request timeout and fast health checks, so hangs are noticed within the test.

    Tests marked ``in_process`` patch a loaded runtime object, so their agents must be served
    in the server's own process (``isolation="thread"``); test_workers.py has the same faults
    as real checkpoints in worker processes.
    """
    isolation = "thread" if request.node.get_closest_marker("in_process") else "process"
    return {
        "ServerApp": {"jpserver_extensions": {"server_extension": True},
                      "allow_unauthenticated_access": False},
        "AgentsWorkbenchApp": {"root_dir": str(workspace), "health_check_interval": 0.3,
                               "health_check_failures": 2, "request_timeout": 0.5,
                               "isolation": isolation},
    }


def _ckpt(workspace: Path, experiment: str, step: int) -> Path:
    folder = workspace / "experiments" / experiment / "checkpoints"
    # The checkpoint itself, not its policy sidecar (step_<N>.policy.npz) beside it.
    return next(p for p in folder.glob(f"step_{step}*") if not p.name.endswith(".policy.npz"))


@pytest.mark.parametrize("fault", ["truncated", "other algorithm", "empty", "deleted"])
async def test_broken_checkpoints_fail_one_agent_only(jp_fetch: Any, workspace: Path,
                                                      fault: str) -> None:
    await create(jp_fetch, "healthy")
    _, victim = await create(jp_fetch, "victim", checkpoint="final")
    path = _ckpt(workspace, "cartpole-dqn", victim["checkpoint_step"])
    if fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif fault == "other algorithm":
        donor = sorted((workspace / "experiments" / "pendulum-td3" / "checkpoints").glob(
            "step_*.pt"))[0]
        shutil.copyfile(donor, path)
    elif fault == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    await call(jp_fetch, "POST", "agents", "api", "agents", "victim", "connect")
    await call(jp_fetch, "POST", "agents", "api", "agents", "healthy", "connect")
    victim = await wait_status(jp_fetch, "victim")
    healthy = await wait_status(jp_fetch, "healthy")
    assert victim["status"] == "Failed", victim
    assert victim["error"]
    assert len(victim["error"]) < 2000
    assert "Traceback" not in victim["error"]
    # Each cause gets its own fix: only a file of another algorithm points at experiment.json.
    assert ("'algorithm'" in victim["error"]) == (fault == "other algorithm"), victim["error"]
    if fault == "truncated":
        # The panel shows the first line and folds the rest: the fix must be on that line.
        assert "save_checkpoint" in victim["error"].split("\n")[0]
    assert healthy["status"] == "Deployed"
    code, _ = await call(jp_fetch, "POST", "agents", "d", "healthy", "get_action",
                         body=obs_payload(np.zeros((1, 4), np.float32)),
                         headers={"Authorization": f"Bearer {healthy['api_key']}"})
    assert code == 200


@pytest.mark.in_process
async def test_runtime_that_raises_gives_500_and_is_noticed(jp_fetch: Any,
                                                            jp_serverapp: Any) -> None:
    await create(jp_fetch, "bad")
    await create(jp_fetch, "good")
    await call(jp_fetch, "POST", "agents", "api", "agents", "bad", "connect")
    await call(jp_fetch, "POST", "agents", "api", "agents", "good", "connect")
    bad = await wait_status(jp_fetch, "bad")
    good = await wait_status(jp_fetch, "good")
    runtime = jp_serverapp.web_app.settings["agents_workbench_deployer"].live("bad").runtime

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected fault: weights on fire")

    runtime.get_action = explode
    runtime.probe = explode
    code, err = await call(jp_fetch, "POST", "agents", "d", "bad", "get_action",
                           body=obs_payload(np.zeros((1, 4), np.float32)),
                           headers={"Authorization": f"Bearer {bad['api_key']}"})
    assert code == 500
    assert err["success"] is False
    assert "weights on fire" not in err["error"]  # internals stay in the server log
    failed = await wait_status(jp_fetch, "bad", ("Failed",), timeout=10)
    assert "weights on fire" in failed["error"]
    code, _ = await call(jp_fetch, "POST", "agents", "d", "good", "get_action",
                         body=obs_payload(np.zeros((1, 4), np.float32)),
                         headers={"Authorization": f"Bearer {good['api_key']}"})
    assert code == 200


@pytest.mark.in_process
async def test_runtime_that_hangs_times_out_and_is_noticed(jp_fetch: Any,
                                                           jp_serverapp: Any) -> None:
    await create(jp_fetch, "slow")
    await call(jp_fetch, "POST", "agents", "api", "agents", "slow", "connect")
    slow = await wait_status(jp_fetch, "slow")
    runtime = jp_serverapp.web_app.settings["agents_workbench_deployer"].live("slow").runtime
    release = threading.Event()

    def hang(*args: Any, **kwargs: Any) -> Any:
        release.wait(3)  # bounded, so the worker thread comes back after the test
        raise RuntimeError("hung")

    runtime.get_action = hang
    runtime.probe = hang
    try:
        code, err = await call(jp_fetch, "POST", "agents", "d", "slow", "get_action",
                               body=obs_payload(np.zeros((1, 4), np.float32)),
                               headers={"Authorization": f"Bearer {slow['api_key']}"})
        assert code == 504
        assert "did not answer" in err["error"]
        failed = await wait_status(jp_fetch, "slow", ("Failed",), timeout=10)
        assert "did not answer" in failed["error"]
        code, _ = await call(jp_fetch, "GET", "agents", "api", "agents")
        assert code == 200
    finally:
        release.set()


def test_kill_9_during_create_connect_rotate(server: ServerProcess) -> None:
    """Hammer the management API from a thread, kill -9 the server mid-stream, restart."""
    stop = threading.Event()
    done: list[str] = []

    def churn() -> None:
        i = 0
        while not stop.is_set():
            name = f"agent-{i}"
            try:
                server.api("POST", "agents", json={"name": name, "experiment": "cartpole-dqn"})
                server.api("POST", f"agents/{name}/connect")
                server.api("POST", f"agents/{name}/rotate-key")
                done.append(name)
            except requests.RequestException:
                return
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    # Kill once the churn is under way (two agents through), mid-way through the next one.
    wait_until(lambda: len(done) >= 2, timeout=60, what="the churn to get going")
    server.kill9()
    stop.set()
    worker.join(10)
    assert done, "the churn made no progress before the kill"

    again = ServerProcess(server.root).start()
    try:
        agents = again.api("GET", "agents").json()["agents"]
        names = {a["name"] for a in agents}
        assert set(done) <= names  # every acknowledged creation survived
        for agent in agents:
            assert agent["experiment"] == "cartpole-dqn"
            assert agent["checkpoint_step"] > 0
            final = again.wait_status(agent["name"], ("Deployed", "Failed", "Undeployed"))
            if final["connected"]:
                assert final["status"] == "Deployed", final
                resp = requests.post(final["endpoint"] + "/get_action", timeout=10,
                                     json=obs_payload(np.zeros((1, 4), np.float32)),
                                     headers={"Authorization": f"Bearer {final['api_key']}"})
                assert resp.status_code == 200
            else:
                assert final["status"] == "Undeployed"
    finally:
        again.stop()
