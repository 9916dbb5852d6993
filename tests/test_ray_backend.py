"""The ``ray`` serving backend: lifecycle on a real local Ray cluster, and its failures.

Servers are real ``jupyter server`` children joined to one Ray cluster started for this module
(tests/ray_fixtures.py); agents are the quick demo checkpoints, called with the Arena client.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import psutil
import pytest
from agilerl.arena.exceptions import ArenaInferenceError
from agilerl.arena.inference import Agent

from server_extension.serving.ray_backend import (
    APP_PREFIX,
    actor_options,
    app_prefix,
    scale_config,
)
from tests.ray_support import RAY_DEPLOY_TIMEOUT, REPLICA_CPUS, ray_server_args
from tests.servers import ServerProcess, copy_workspace, free_port, running_server, wait_until

pytest_plugins = ["tests.ray_fixtures"]
pytestmark = pytest.mark.slow


def _apps(agent: str) -> dict[str, Any]:
    """The workbench's Serve applications on the module's cluster serving agent ``agent``
    (``awb-<workspace tag>-<agent>-<suffix>``), whichever workspace they belong to."""
    from ray import serve

    return {name: app for name, app in serve.status().applications.items()
            if name.startswith(APP_PREFIX) and name.split("-", 2)[-1].startswith(f"{agent}-")}


def _only_app(agent: str) -> str:
    apps = _apps(agent)
    assert len(apps) == 1, apps
    return next(iter(apps))


def _replicas(app_name: str) -> dict[str, int]:
    from ray import serve

    deployment = serve.status().applications[app_name].deployments["agent"]
    return {getattr(state, "value", str(state)): count
            for state, count in deployment.replica_states.items()}


def _probe_pid(app_name: str) -> int:
    """The pid of whichever replica answers a probe, asked through Ray's own handle."""
    from ray import serve

    pid: int = serve.get_app_handle(app_name).probe.remote().result(timeout_s=120)
    return pid


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path,
               ray_cluster: str) -> Iterator[ServerProcess]:
    """A server joined to the module's cluster; agents are local unless their options say ray."""
    root = copy_workspace(tmp_path_factory.mktemp("ray-served"), demo_experiments)
    args = [*ray_server_args(ray_cluster, default_backend="local"),
            "--AgentsWorkbenchApp.health_check_interval=1"]
    with running_server(root, extra_args=args) as server:
        yield server


@pytest.mark.ray
def test_ray_agent_lifecycle_and_replicas(ray_server: ServerProcess) -> None:
    created = ray_server.api("POST", "agents", json={
        "name": "cp-ray", "experiment": "cartpole-dqn", "checkpoint": "best",
        "options": {"backend": "ray", "replicas": 2}})
    assert created.status_code == 201, created.text
    assert created.json()["options"] == {"backend": "ray", "replicas": 2}
    connected = ray_server.api("POST", "agents/cp-ray/connect").json()
    assert connected["status"] == "Pending"
    agent = ray_server.wait_status("cp-ray", timeout=RAY_DEPLOY_TIMEOUT)
    assert agent["status"] == "Deployed", agent

    app_name = _only_app("cp-ray")
    assert _replicas(app_name) == {"RUNNING": 2}
    # Both replicas answer: Serve spreads calls over them.
    pids = {_probe_pid(app_name) for _ in range(30)}
    assert len(pids) == 2

    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        assert client.metadata is not None
        assert client.metadata.agent is not None
        assert client.metadata.agent.algo == "DQN"
        actions, _ = client.get_action(obs, batched=True)
    assert np.asarray(actions).shape == (16,)

    assert ray_server.api("POST", "agents/cp-ray/disconnect").json()["status"] == "Undeployed"
    wait_until(lambda: not _apps("cp-ray"), timeout=60,
               what="the Serve application to be deleted")
    gone = ray_server.session.get(agent["endpoint"] + "/status", timeout=10)
    assert gone.status_code == 404


@pytest.mark.ray
def test_autoscaling_bounds_start_at_the_minimum(ray_server: ServerProcess) -> None:
    agent = ray_server.deploy("cp-auto", "cartpole-dqn", timeout=RAY_DEPLOY_TIMEOUT, options={
        "backend": "ray", "min_replicas": 1, "max_replicas": 2})
    app_name = _only_app("cp-auto")
    assert _replicas(app_name) == {"RUNNING": 1}
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        action, _ = client.get_action(np.zeros(4, np.float32))
    assert int(action) in (0, 1)
    ray_server.api("DELETE", "agents/cp-auto")
    wait_until(lambda: not _apps("cp-auto"), timeout=60,
               what="the Serve application to be deleted")


@pytest.mark.ray
def test_killed_replica_is_replaced_and_the_agent_keeps_answering(
    ray_server: ServerProcess,
) -> None:
    agent = ray_server.deploy("cp-kill", "cartpole-dqn", timeout=RAY_DEPLOY_TIMEOUT,
                              options={"backend": "ray"})
    app_name = _only_app("cp-kill")
    old_pid = _probe_pid(app_name)
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(old_pid) or
               psutil.Process(old_pid).status() == psutil.STATUS_ZOMBIE, timeout=10,
               what="the replica to die")

    # What happens, truthfully: Serve notices the dead actor and starts a new replica; the
    # workbench's health probe waits for it (within the request timeout) and the agent stays
    # or comes back Deployed, answering from the new process.
    seen: set[str] = set()
    failures: list[int | None] = []
    deadline = time.monotonic() + RAY_DEPLOY_TIMEOUT
    # The client waits longer than the server's request timeout (60 s), so that a call held
    # while Serve replaces the replica ends in the server's own answer: with the SDK's default
    # 30 s, a loaded machine showed a client-side timeout (status 0) instead of the 503/504.
    with Agent(agent["endpoint"], api_key=agent["api_key"], timeout=90) as client:
        while True:
            state = ray_server.api("GET", "agents/cp-kill").json()
            seen.add(state["status"])
            if state["status"] == "Deployed":
                try:
                    action, _ = client.get_action(np.zeros(4, np.float32))
                except ArenaInferenceError as exc:  # a 5xx while the replica restarts
                    failures.append(exc.status_code)
                    action = None
                if action is not None:
                    break
            assert time.monotonic() < deadline, f"no answer after the kill; statuses {seen}"
            time.sleep(0.5)
    assert int(action) in (0, 1)
    assert set(failures) <= {503, 504}, failures  # never a 4xx or a 500: a clear retry-later
    assert "Failed" not in seen, seen
    new_pid = _probe_pid(app_name)
    assert new_pid != old_pid
    assert _replicas(app_name) == {"RUNNING": 1}
    assert ray_server.api("GET", "agents/cp-kill").json()["error"] is None


@pytest.mark.ray
def test_llm_and_supervised_agents_on_ray(tmp_path: Path, advanced_experiments: Path,
                                          ray_cluster: str) -> None:
    """generate, generate_stream (streamed from the replica), sessions and predict on Ray."""
    greedy = {"max_new_tokens": 40, "temperature": 0.0, "do_sample": False}
    root = copy_workspace(tmp_path / "advanced", advanced_experiments)
    with running_server(root, extra_args=ray_server_args(ray_cluster)) as server:
        chat = server.deploy("chat", "tiny-chat-sft", timeout=RAY_DEPLOY_TIMEOUT)
        iris = server.deploy("iris", "iris-classifier", timeout=RAY_DEPLOY_TIMEOUT)
        assert len(_apps("chat")) == len(_apps("iris")) == 1
        with Agent(chat["endpoint"], api_key=chat["api_key"]) as client:
            assert client.metadata is not None
            assert client.metadata.agent is not None
            assert client.metadata.agent.llm is True
            batch = client.generate(["hello", "what is the capital of France?"], params=greedy)
            chunks = list(client.generate_stream("tell me something", params=greedy))
            client.generate("first question", params=greedy, session_id="conv-1")
            client.generate("second question", params=greedy, session_id="conv-1")
        assert [r.prompt for r in batch.results] == ["hello", "what is the capital of France?"]
        assert len(chunks) >= 2, chunks
        session = server.session.get(chat["endpoint"] + "/sessions/conv-1", timeout=30,
                                     headers={"Authorization": f"Bearer {chat['api_key']}"})
        assert [m["role"] for m in session.json()["messages"]] == [
            "user", "assistant", "user", "assistant"]
        too_long = server.session.post(
            chat["endpoint"] + "/generate", timeout=60, json={"prompts": ["word " * 20000]},
            headers={"Authorization": f"Bearer {chat['api_key']}"})
        assert too_long.status_code == 400
        assert "tokens" in too_long.json()["error"]
        # The OpenAI API of the same agent, served by the replica (test_openai_api.py: the rest).
        question = [{"role": "user", "content": "what is the capital of France?"}]
        greedy_chat: dict[str, Any] = {"model": "chat", "messages": question, "temperature": 0,
                                       "max_tokens": 20}
        with openai.OpenAI(base_url=chat["endpoint"] + "/v1", api_key=chat["api_key"],
                           max_retries=0) as oai:
            whole = oai.chat.completions.create(**greedy_chat)
            chunks = list(oai.chat.completions.create(**greedy_chat, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == whole.choices[0].message.content
        assert whole.usage is not None
        assert whole.usage.completion_tokens > 0

        with Agent(iris["endpoint"], api_key=iris["api_key"]) as client:
            results, meta = client.predict(
                np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32), batched=True)
        assert meta.batch_size == 2
        assert np.asarray(results).shape[0] == 2


def test_scale_options_are_checked_at_creation(server: ServerProcess) -> None:
    def create(options: dict[str, Any]) -> tuple[int, str]:
        answer = server.api("POST", "agents", json={
            "name": "cp-opts", "experiment": "cartpole-dqn", "options": options})
        return answer.status_code, answer.text

    status, text = create({"backend": "local", "replicas": 2})
    assert (status, "apply to the 'ray' backend" in text) == (400, True)
    status, text = create({"backend": "ray", "min_replicas": 3, "max_replicas": 2})
    assert (status, "above max_replicas" in text) == (400, True)
    status, text = create({"backend": "ray", "replicas": 0})
    assert (status, "whole number from 1" in text) == (400, True)
    status, text = create({"backend": "ray", "replicas": 5, "max_replicas": 4})
    assert (status, "between min_replicas and max_replicas" in text) == (400, True)
    status, text = create({"backend": "cluster"})
    assert (status, "['local', 'ray']" in text) == (400, True)


def test_ray_resources_are_checked_at_creation(server: ServerProcess) -> None:
    def create(resources: Any, backend: str = "ray") -> tuple[int, str]:
        answer = server.api("POST", "agents", json={
            "name": "cp-placed", "experiment": "cartpole-dqn",
            "options": {"backend": backend, "ray_resources": resources}})
        return answer.status_code, answer.text

    refused = {
        "not an object": (["agents_node"], "must be an object"),
        "empty": ({}, "must be an object"),
        "negative": ({"agents_node": -1}, "above 0"),
        "zero": ({"agents_node": 0}, "above 0"),
        "a string amount": ({"agents_node": "1"}, "must be a number"),
        "a bool amount": ({"agents_node": True}, "must be a number"),
        "fractional above 1": ({"agents_node": 1.5}, "whole number"),
        "too large": ({"agents_node": 10**6}, "at most"),
        "a built-in resource": ({"CPU": 1}, "built-in resource 'CPU'"),
        "a blank name": ({" ": 1}, "not a resource name"),
    }
    for case, (value, words) in refused.items():
        status, error = create(value)
        assert (case, status) == (case, 400), error
        assert words in error, (case, error)
    status, error = create({"agents_node": 1}, backend="local")
    assert (status, "apply to the 'ray' backend" in error) == (400, True), error
    answer = server.api("POST", "agents", json={
        "name": "cp-placed", "experiment": "cartpole-dqn",
        "options": {"backend": "ray", "ray_resources": {"agents_node": 0.5, "gpu_box": 2}}})
    assert answer.status_code == 201, answer.text
    assert answer.json()["options"]["ray_resources"] == {"agents_node": 0.5, "gpu_box": 2}
    server.api("DELETE", "agents/cp-placed")


def test_placement_and_workspace_names_reach_serve(tmp_path: Path) -> None:
    assert actor_options({}, 0.25) == {"num_cpus": 0.25}
    assert actor_options({"ray_resources": {"agents_node": 1}}, 1.0) == {
        "num_cpus": 1.0, "resources": {"agents_node": 1}}
    one, other = tmp_path / "a", tmp_path / "b"
    assert app_prefix(one) != app_prefix(other)
    assert app_prefix(one) == app_prefix(tmp_path / "x" / ".." / "a")  # the same folder
    assert app_prefix(one).startswith(APP_PREFIX)


def test_scale_config_maps_options_to_serve() -> None:
    assert scale_config({}) == {"num_replicas": 1}
    assert scale_config({"replicas": 3}) == {"num_replicas": 3}
    auto = scale_config({"min_replicas": 1, "max_replicas": 4, "replicas": 2})
    assert auto["autoscaling_config"]["min_replicas"] == 1
    assert auto["autoscaling_config"]["max_replicas"] == 4
    assert auto["autoscaling_config"]["initial_replicas"] == 2
    assert scale_config({"max_replicas": 3})["autoscaling_config"]["min_replicas"] == 1


def test_unreachable_ray_fails_the_agent_and_local_agents_still_serve(
    tmp_path: Path, demo_experiments: Path
) -> None:
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    nobody = f"127.0.0.1:{free_port()}"
    with running_server(root, extra_args=[f"--AgentsWorkbenchApp.ray_address={nobody}"]) as server:
        created = server.api("POST", "agents", json={
            "name": "remote", "experiment": "cartpole-dqn", "options": {"backend": "ray"}})
        assert created.status_code == 201, created.text
        server.api("POST", "agents/remote/connect")
        local = server.deploy("here", "cartpole-dqn")
        failed = server.wait_status("remote")
        assert failed["status"] == "Failed"
        assert f"The Ray cluster at {nobody} is not reachable" in failed["error"]
        with Agent(local["endpoint"], api_key=local["api_key"]) as client:
            action, _ = client.get_action(np.zeros(4, np.float32))
        assert int(action) in (0, 1)
        assert server.api("GET", "agents/here").json()["status"] == "Deployed"


def test_ray_not_installed_fails_the_agent_with_the_install_hint(
    tmp_path: Path, demo_experiments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package named ray that cannot be imported, first on the server's path: what a server
    # without the [ray] extra sees.
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ray (hidden)')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    with running_server(root, extra_args=["--AgentsWorkbenchApp.backend=ray"]) as server:
        server.api("POST", "agents", json={"name": "cp", "experiment": "cartpole-dqn"})
        server.api("POST", "agents/cp/connect")
        failed = server.wait_status("cp")
        local = server.deploy("cp-local", "cartpole-dqn", options={"backend": "local"})
        assert local["status"] == "Deployed"
    assert failed["status"] == "Failed"
    assert "pip install 'agents-workbench[ray]'" in failed["error"]


@pytest.mark.ray
def test_local_ray_is_started_for_the_server_and_stops_with_it(
    tmp_path: Path, demo_experiments: Path
) -> None:
    # About 60 s: what it tests is a whole local Ray started by the server and stopped
    # with it, which no module cluster can stand in for.
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    server = ServerProcess(root, extra_args=[
        "--AgentsWorkbenchApp.backend=ray", "--AgentsWorkbenchApp.ray_num_cpus=1",
        f"--AgentsWorkbenchApp.ray_replica_cpus={REPLICA_CPUS}"]).start()
    try:
        agent = server.deploy("cp", "cartpole-dqn", timeout=RAY_DEPLOY_TIMEOUT)
        with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
            action, _ = client.get_action(np.zeros(4, np.float32))
        assert int(action) in (0, 1)
        ray_processes = [p for p in psutil.Process(server.pid).children(recursive=True)
                         if p.name() in ("raylet", "gcs_server")]
        assert {p.name() for p in ray_processes} == {"raylet", "gcs_server"}
    finally:
        server.stop()
    # The server's own Ray went with it: nothing left running on this machine from it.
    _, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert alive == []


def test_wizard_backend_choice_reaches_the_agent_options(server: ServerProcess) -> None:
    from agents_widget import AgentsPanel
    from workbench_core.discovery import ServerInfo

    panel = AgentsPanel(ServerInfo(url=server.url, token=server.token), poll_interval=0.2)
    try:
        panel.wait_idle()
        wizard = panel.open_wizard()
        assert wizard is not None
        wizard.name.value = "from-wizard"
        wizard.source.value = "cartpole-dqn"
        assert wizard.backend.value == ""  # the server's default unless the user picks
        wizard.backend.value = "ray"
        wizard.next_button.click()
        wizard.create_button.click()
        panel.wait_idle()
        wait_until(lambda: panel.wizard is None, what="the wizard to close")
    finally:
        panel.close()
    made = server.api("GET", "agents/from-wizard").json()
    assert made["options"] == {"backend": "ray"}
    assert made["status"] == "Undeployed"
