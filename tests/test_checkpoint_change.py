"""Changing a live agent's checkpoint: under load, with no failed call, and back again.

A real ``jupyter server`` serves ``flip-dqn`` (tests/checkpoint_fixtures.py): two real AgileRL
checkpoints whose greedy actions are opposite on every row, so each answer names the
checkpoint that gave it. Clients (the Arena client and plain HTTP) call ``get_action`` without
pause while the checkpoint changes and rolls back; every answer must be exactly one
checkpoint's answer to the batch, and none may fail.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from agilerl.arena.inference import Agent

from server_extension.serving.serde import decode_array, encode_array
from tests.checkpoint_fixtures import (
    BROKEN_STEP,
    FLIP,
    NEW_STEP,
    OBS,
    OLD_STEP,
    expected_actions,
    write_flip_experiment,
)
from tests.panel_support import front_end
from tests.servers import ServerProcess, wait_until

pytestmark = pytest.mark.slow
__all__ = ["front_end"]  # a fixture used by name below

ARGS = ["--AgentsWorkbenchApp.health_check_interval=0"]


@pytest.fixture(scope="module")
def flip_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoint-change")
    write_flip_experiment(root)
    return root


@pytest.fixture(scope="module")
def expected(flip_root: Path) -> dict[int, list[int]]:
    answers = expected_actions(flip_root)
    # The premise of every check below: the two checkpoints disagree on every row.
    assert all(a != b for a, b in zip(answers[OLD_STEP], answers[NEW_STEP], strict=True))
    return answers


@pytest.fixture(scope="module")
def served(flip_root: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(flip_root, extra_args=ARGS).start()
    try:
        yield server
    finally:
        server.stop()


def which(actions: list[int], expected: dict[int, list[int]]) -> int:
    """The step whose answer ``actions`` is; fails on a batch mixing the two."""
    for step, answer in expected.items():
        if actions == answer:
            return step
    raise AssertionError(f"an answer from neither checkpoint (a mix?): {actions}")


class Load:
    """Clients calling get_action as fast as they can; every answer checked and logged."""

    def __init__(self, agent: dict[str, Any], expected: dict[int, list[int]],
                 clients: int = 4) -> None:
        self.agent, self.expected = agent, expected
        self.stop = threading.Event()
        self.answers: list[tuple[float, int]] = []  # (time answered, step)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
                        for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _run(self, arena_client: bool) -> None:
        endpoint, key = self.agent["endpoint"], self.agent["api_key"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {key}"
        body = {"obs": encode_array(OBS), "batch_size": len(OBS)}
        client = Agent(endpoint, api_key=key) if arena_client else None
        try:
            while not self.stop.is_set():
                try:
                    if client is not None:
                        actions, _ = client.get_action(OBS, batched=True)
                    else:
                        reply = session.post(f"{endpoint}/get_action", json=body, timeout=30)
                        if reply.status_code != 200:
                            self.failures.append(f"HTTP {reply.status_code}: {reply.text}")
                            continue
                        actions = decode_array(reply.json()["action"], "action")
                    got = [int(a) for a in np.asarray(actions).reshape(-1)]
                    self.answers.append((time.monotonic(), which(got, self.expected)))
                except Exception as exc:  # noqa: BLE001 - every failure is reported
                    self.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            session.close()
            if client is not None:
                client.close()

    def steps_since(self, moment: float) -> set[int]:
        return {step for when, step in list(self.answers) if when > moment}


def change(server: ServerProcess, name: str, checkpoint: Any, **extra: Any) -> dict[str, Any]:
    reply = server.api("POST", f"agents/{name}/checkpoint",
                       json={"checkpoint": checkpoint, **extra})
    assert reply.status_code == 202, reply.text
    return reply.json()


def settled(server: ServerProcess, name: str, change_id: int,
            timeout: float = 90.0) -> dict[str, Any]:
    """Wait until the change ``change_id`` served or failed; the agent as it then stands."""
    def done() -> dict[str, Any] | None:
        agent = server.api("GET", f"agents/{name}").json()
        latest = agent["checkpoint_change"]
        if latest["id"] == change_id and latest["outcome"] in ("serving", "failed"):
            return agent
        return None
    return wait_until(done, timeout=timeout, what=f"change {change_id} of {name} to settle")


def worker_pid(server: ServerProcess, name: str) -> int:
    return int(server.api("GET", f"agents/{name}/metrics").json()["worker"]["pid"])


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A stopped child may linger as a zombie of the server until it is reaped.
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            return "zombie" in fh.read()
    except OSError:
        return True


def test_change_and_rollback_under_load_fail_no_call(
        served: ServerProcess, expected: dict[int, list[int]]) -> None:
    agent = served.deploy("flip", FLIP, OLD_STEP)
    old_pid = worker_pid(served, "flip")
    before = requests.get(f"{agent['endpoint']}/status", timeout=10).json()
    with Load(agent, expected) as load:
        wait_until(lambda: load.steps_since(0) == {OLD_STEP}, what="answers from step 1")
        asked = time.monotonic()
        changed = change(served, "flip", NEW_STEP)
        assert changed["outcome"] == "loading"
        assert changed["checkpoint_step"] == NEW_STEP
        after = settled(served, "flip", changed["id"])
        wait_until(lambda: NEW_STEP in load.steps_since(asked), what="answers from step 2")
        switched = time.monotonic()
        # From the switch on, only the new checkpoint answers (calls started before it may
        # still finish on the old worker, so give those one second).
        time.sleep(1.0)
        assert load.steps_since(switched + 1.0) <= {NEW_STEP}
        # Same endpoint, same key, Deployed all along; the old worker stops.
        assert after["status"] == "Deployed"
        assert (after["endpoint"], after["api_key"]) == (agent["endpoint"], agent["api_key"])
        assert after["checkpoint"] == {"experiment": FLIP, "rule": "specific", "step": NEW_STEP}
        # With the key: anonymous callers are not shown the checkpoint (status_kind_public).
        status = requests.get(f"{agent['endpoint']}/status", timeout=10,
                              headers={"Authorization": f"Bearer {agent['api_key']}"})
        assert status.headers["X-Agent-Checkpoint-Experiment"] == FLIP
        assert status.headers["X-Agent-Checkpoint-Step"] == str(NEW_STEP)
        # A new instance serves the same deployment.
        assert status.json()["deployment_id"] == before["deployment_id"]
        assert status.json()["instance_id"] != before["instance_id"]
        wait_until(lambda: pid_gone(old_pid), what="the old worker to stop")
        assert worker_pid(served, "flip") != old_pid

        # Roll back: the checkpoint before this one serves again, the same way.
        assert after["rollback_to"]["checkpoint_step"] == OLD_STEP
        back = served.api("POST", "agents/flip/rollback")
        assert back.status_code == 202, back.text
        assert back.json()["checkpoint_step"] == OLD_STEP
        assert back.json()["rollback_of"] == after["rollback_to"]["id"]
        rolled = settled(served, "flip", back.json()["id"])
        assert rolled["checkpoint"]["step"] == OLD_STEP
        assert rolled["status"] == "Deployed"
        back_at = time.monotonic()
        wait_until(lambda: load.steps_since(back_at + 1.0), what="answers after rollback")
        assert load.steps_since(back_at + 1.0) == {OLD_STEP}
    assert load.failures == []
    assert len(load.answers) > 20
    history = served.api("GET", "agents/flip/checkpoints").json()["history"]
    assert [(h["checkpoint_step"], h["outcome"]) for h in history] == [
        (OLD_STEP, "serving"), (NEW_STEP, "replaced"), (OLD_STEP, "replaced")]
    assert all(h["server"] == served.url for h in history[:2])
    # Rolling back again returns to the checkpoint the rollback replaced.
    assert served.api("GET", "agents/flip").json()["rollback_to"]["checkpoint_step"] == NEW_STEP


def test_failing_checkpoint_leaves_the_old_one_serving(
        served: ServerProcess, expected: dict[int, list[int]]) -> None:
    agent = served.deploy("flip-fails", FLIP, OLD_STEP)
    pid = worker_pid(served, "flip-fails")
    with Load(agent, expected, clients=2) as load:
        attempt = change(served, "flip-fails", BROKEN_STEP)
        after = settled(served, "flip-fails", attempt["id"])
        shown = after["checkpoint_change"]
        assert shown["outcome"] == "failed"
        assert "load" in (shown["error"] or "").lower(), shown
        assert after["status"] == "Deployed"
        assert after["error"] is None
        assert after["checkpoint"]["step"] == OLD_STEP
        failed_at = time.monotonic()
        wait_until(lambda: load.steps_since(failed_at), what="answers after the failure")
    assert load.failures == []
    assert {step for _, step in load.answers} == {OLD_STEP}
    assert worker_pid(served, "flip-fails") == pid  # the old worker was never touched
    # A failed attempt is not something to roll back to.
    assert served.api("GET", "agents/flip-fails").json()["rollback_to"] is None


def test_bad_change_requests_are_refused_clearly(served: ServerProcess) -> None:
    served.api("POST", "agents", json={"name": "flip-idle", "experiment": FLIP,
                                       "checkpoint": OLD_STEP})
    idle = served.api("POST", "agents/flip-idle/checkpoint", json={"checkpoint": NEW_STEP})
    assert idle.status_code == 409
    assert "Deployed" in idle.json()["message"]
    served.deploy("flip-bad", FLIP, OLD_STEP)
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "checkpoint is required"),
        ({"checkpoint": 99}, "99"),
        ({"checkpoint": "best", "experiment": "no-such"}, "no-such"),
        ({"checkpoint": True}, "checkpoint is required"),
    ]
    for body, words in cases:
        reply = served.api("POST", "agents/flip-bad/checkpoint", json=body)
        assert reply.status_code == 400, (body, reply.text)
        assert words in reply.json()["message"], (body, reply.text)
    nothing = served.api("POST", "agents/flip-bad/rollback")
    assert nothing.status_code == 409
    assert "nothing to roll back" in nothing.json()["message"]
    assert served.api("POST", "agents/none-such/checkpoint",
                      json={"checkpoint": 1}).status_code == 404
    anonymous = requests.post(served.url + "agents/api/agents/flip-bad/checkpoint",
                              json={"checkpoint": NEW_STEP}, timeout=10)
    assert anonymous.status_code in (401, 403)


def test_split_answers_in_proportion_then_promote_and_abort(
        served: ServerProcess, expected: dict[int, list[int]]) -> None:
    agent = served.deploy("flip-split", FLIP, OLD_STEP)
    with Load(agent, expected) as load:
        split = served.api("POST", "agents/flip-split/split",
                           json={"checkpoint": NEW_STEP, "percent": 30})
        assert split.status_code == 202, split.text
        assert split.json()["kind"] == "split"
        wait_until(lambda: (served.api("GET", "agents/flip-split").json()["split"] or {})
                   .get("outcome") == "canary", timeout=90, what="the canary to serve")
        begun = time.monotonic()
        wait_until(lambda: len([1 for w, _ in list(load.answers) if w > begun]) >= 300,
                   timeout=120, what="300 answers during the split")
        steps = [s for w, s in list(load.answers) if w > begun]
        share = steps.count(NEW_STEP) / len(steps)
        # 30 % asked; over 300+ calls a binomial share lies within +-0.12 (4 sd) of it.
        assert 0.18 < share < 0.42, share
        traffic = served.api("GET", "agents/flip-split/metrics").json()["checkpoints"]
        assert [(t["role"], t["step"], t["percent"]) for t in traffic] == [
            ("primary", OLD_STEP, 70), ("canary", NEW_STEP, 30)]
        assert all(t["requests"] > 0 and t["errors"] == 0 for t in traffic), traffic
        # Another change must wait for the split to end.
        refused = served.api("POST", "agents/flip-split/checkpoint", json={"checkpoint": 1})
        assert refused.status_code == 409
        assert "Promote or Abort" in refused.json()["message"]

        promoted = served.api("POST", "agents/flip-split/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["checkpoint"]["step"] == NEW_STEP
        assert promoted.json()["split"] is None
        after = time.monotonic() + 1.0
        wait_until(lambda: load.steps_since(after), what="answers after Promote")
        assert load.steps_since(after) == {NEW_STEP}

        again = served.api("POST", "agents/flip-split/split",
                           json={"checkpoint": OLD_STEP, "percent": 50})
        assert again.status_code == 202, again.text
        wait_until(lambda: OLD_STEP in load.steps_since(after), timeout=90,
                   what="the second canary to answer")
        aborted = served.api("POST", "agents/flip-split/abort")
        assert aborted.status_code == 200, aborted.text
        assert aborted.json()["checkpoint"]["step"] == NEW_STEP
        later = time.monotonic() + 1.0
        wait_until(lambda: load.steps_since(later), what="answers after Abort")
        assert load.steps_since(later) == {NEW_STEP}
    assert load.failures == []
    outcomes = [(h["kind"], h["checkpoint_step"], h["outcome"]) for h in
                served.api("GET", "agents/flip-split/checkpoints").json()["history"]]
    assert outcomes[:2] == [("split", OLD_STEP, "aborted"), ("split", NEW_STEP, "serving")]
    bad = served.api("POST", "agents/flip-split/split", json={"checkpoint": 1, "percent": 100})
    assert bad.status_code == 400
    assert "1 to 99" in bad.json()["message"]
    nothing = served.api("POST", "agents/flip-split/promote")
    assert nothing.status_code == 409


def test_change_through_the_other_server_of_the_workspace(
        served: ServerProcess, flip_root: Path, expected: dict[int, list[int]]) -> None:
    """B shares A's workspace; A loads the agents. A change asked through B is made by A."""
    agent = served.deploy("flip-shared", FLIP, OLD_STEP)
    other = ServerProcess(flip_root, extra_args=ARGS).start()
    try:
        with Load(agent, expected, clients=2) as load:
            asked = other.api("POST", "agents/flip-shared/checkpoint",
                              json={"checkpoint": NEW_STEP})
            assert asked.status_code == 202, asked.text
            assert asked.json()["outcome"] == "requested"  # B loads nothing itself
            seen = settled(served, "flip-shared", asked.json()["id"])
            assert seen["checkpoint"]["step"] == NEW_STEP
            assert seen["checkpoint_change"]["server"] == other.url
            assert other.api("GET", "agents/flip-shared").json()["checkpoint"]["step"] \
                == NEW_STEP
            switched = time.monotonic() + 1.0
            wait_until(lambda: load.steps_since(switched), what="answers after the change")
            assert load.steps_since(switched) == {NEW_STEP}
        assert load.failures == []
        assert "Agent flip-shared now serves" in served.log()
        assert "Agent flip-shared now serves" not in other.log()
    finally:
        other.stop()


def test_notebook_api_changes_rolls_back_and_reports_a_failure(served: ServerProcess) -> None:
    from agents_widget.client import CheckpointChangeFailed, WorkbenchClient
    from workbench_core.discovery import ServerInfo

    served.deploy("flip-api", FLIP, OLD_STEP)
    client = WorkbenchClient(ServerInfo(url=served.url, token=served.token))
    try:
        row = client.change_checkpoint("flip-api", NEW_STEP)
        assert (row["checkpoint_step"], row["outcome"]) == (NEW_STEP, "serving")
        agent = client.agent("flip-api")
        assert agent.checkpoint_step == NEW_STEP
        assert agent.rollback_to is not None
        assert agent.rollback_to["checkpoint_step"] == OLD_STEP
        with pytest.raises(CheckpointChangeFailed, match="still serves its previous"):
            client.change_checkpoint("flip-api", BROKEN_STEP)
        assert client.agent("flip-api").status == "Deployed"
        assert client.rollback("flip-api")["checkpoint_step"] == OLD_STEP
        assert [h["outcome"] for h in client.checkpoint_history("flip-api")] == [
            "serving", "failed", "replaced", "replaced"]
        # The module-level shortcuts (import agents_widget as aw) do the same.
        import agents_widget as aw

        assert aw.change_checkpoint("flip-api", NEW_STEP, client=client)["outcome"] == \
            "serving"
        history = aw.checkpoint_history("flip-api", client=client)
        assert list(history["checkpoint_step"][:2]) == [NEW_STEP, OLD_STEP]
        assert str(history["requested_at"].dtype) == "datetime64[ns, UTC]"
        assert aw.rollback("flip-api", client=client)["checkpoint_step"] == OLD_STEP
    finally:
        client.close()


def test_panel_change_checkpoint_section(served: ServerProcess,
                                         front_end: list[dict[str, Any]]) -> None:
    """The expanded row's Change checkpoint: pick on the chart, change, see a failure, roll
    back, split and promote, all against the real server."""
    from agents_widget.checkpoint_change import CheckpointChanger
    from agents_widget.client import AgentInfo, ExperimentInfo, WorkbenchClient
    from agents_widget.details import DeploymentDetails
    from workbench_core.discovery import ServerInfo

    deployed = served.deploy("flip-panel", FLIP, OLD_STEP)
    listed = served.api("GET", "experiments").json()["experiments"]
    experiment = ExperimentInfo.from_json(next(e for e in listed if e["name"] == FLIP))
    client = WorkbenchClient(ServerInfo(url=served.url, token=served.token))
    details = DeploymentDetails(AgentInfo.from_json(served.api("GET", "agents/flip-panel")
                                                    .json()), experiment,
                                key=lambda: deployed["api_key"], on_rotate=lambda _n: None,
                                client=client)
    try:
        view = details.checkpoint_view
        assert isinstance(view, CheckpointChanger)
        assert "step 1" in view.serving.value
        assert view.rollback_button.disabled  # nothing served before
        view.pick(NEW_STEP)  # a dot on a chart: Specific, that checkpoint
        assert view.rule.value == "specific"
        assert view.chosen == NEW_STEP
        assert view.training_chart.chosen == NEW_STEP
        future = view.change()
        assert future is not None
        agent = future.result(120)
        assert agent.checkpoint_step == NEW_STEP
        assert "step 2" in view.serving.value
        assert "Done" in view.status.value
        assert not view.rollback_button.disabled

        view.pick(BROKEN_STEP)
        broken = view.change()
        assert broken is not None
        broken.result(120)
        assert "still serves" in view.status.value
        assert "failed" in view.last_change.value
        assert "step 2" in view.serving.value  # the old one serves on

        assert view.rollback().result(120).checkpoint_step == OLD_STEP
        view.pick(NEW_STEP)
        view.percent.value = 40
        split = view.split()
        assert split is not None
        assert split.result(120).split is not None
        assert view.split_box.layout.display == ""
        assert "40%" in view.last_change.value
        assert view.change_button.disabled  # a split must end first
        # The traffic view gives each checkpoint's figures while the split runs.
        from agents_widget.metrics_view import headline

        figures = headline(client.metrics("flip-panel"))
        assert "primary step 1 (60%)" in figures
        assert "canary step 2 (40%)" in figures
        promoted = view.end_split("promote").result(60)
        assert promoted.checkpoint_step == NEW_STEP
        assert promoted.split is None
        assert view.split_box.layout.display == "none"
    finally:
        details.close()
        client.close()


def test_change_of_an_agent_served_in_the_server_process(
        flip_root: Path, expected: dict[int, list[int]]) -> None:
    """With isolation="thread" (the path Ray-served agents take too) the new runtime loads on
    the loader pool and the old one is closed after its calls, with no failed call."""
    server = ServerProcess(flip_root, extra_args=[
        *ARGS, "--AgentsWorkbenchApp.isolation=thread"]).start()
    try:
        agent = server.deploy("flip-thread", FLIP, OLD_STEP)
        with Load(agent, expected, clients=2) as load:
            wait_until(lambda: load.steps_since(0) == {OLD_STEP}, what="answers from step 1")
            asked = change(server, "flip-thread", NEW_STEP)
            after = settled(server, "flip-thread", asked["id"])
            assert after["checkpoint"]["step"] == NEW_STEP, after["checkpoint_change"]
            switched = time.monotonic() + 1.0
            wait_until(lambda: load.steps_since(switched), what="answers after the change")
            assert load.steps_since(switched) == {NEW_STEP}
        assert load.failures == []
    finally:
        server.stop()
