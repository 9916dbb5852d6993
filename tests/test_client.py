"""The panel's REST client against a real workbench server (no mocks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from agents_widget.client import (
    AgentInfo,
    ApiError,
    ServerUnreachable,
    WorkbenchClient,
)
from tests.panel_support import start_server, wait_until
from tests.servers import ServerProcess, free_port
from workbench_core.discovery import ServerInfo, ServerNotFound


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         demo_experiments: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("client") / "ws", demo_experiments)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(live: ServerProcess) -> Iterator[WorkbenchClient]:
    made = WorkbenchClient(ServerInfo(url=live.url, token=live.token))
    try:
        yield made
    finally:
        made.close()


def test_experiments_are_typed_with_checkpoints_and_metrics(client: WorkbenchClient) -> None:
    experiments = {e.name: e for e in client.experiments()}
    dqn = experiments["cartpole-dqn"]
    assert dqn.tab == "classic"
    assert dqn.environment == "CartPole-v1"
    assert dqn.checkpoints
    assert all(c.step > 0 for c in dqn.checkpoints)
    assert dqn.metrics
    assert dqn.metrics[0].step > 0
    assert client.request_count == 1


def test_agent_lifecycle(client: WorkbenchClient, live: ServerProcess) -> None:
    created = client.create_agent("  life  ", experiment="cartpole-dqn", checkpoint="final",
                                  description="  a test  ")
    assert (created.name, created.status, created.description) == ("life", "Undeployed",
                                                                    "a test")
    assert created.checkpoint_rule == "final"
    assert created.endpoint is None
    assert created.api_key is None

    assert client.connect("life").status == "Pending"
    deployed = wait_until(lambda: (a := client.agent("life")).status == "Deployed" and a,
                          what="Deployed")
    assert deployed.endpoint.endswith("/agents/d/life")
    assert deployed.api_key
    # Printing an agent (a notebook's repr) never shows its key.
    assert deployed.api_key not in repr(deployed)

    rotated = client.rotate_key("life")
    assert rotated.api_key
    assert rotated.api_key != deployed.api_key
    old = requests.post(deployed.endpoint + "/get_action", timeout=10,
                        headers={"Authorization": f"Bearer {deployed.api_key}"})
    assert old.status_code == 401

    off = client.disconnect("life")
    assert (off.status, off.connected, off.api_key) == ("Undeployed", False, None)
    client.delete_agent("life")
    with pytest.raises(ApiError) as gone:
        client.agent("life")
    assert gone.value.status == 404
    assert "life" not in {a.name for a in client.agents()}


def test_server_errors_come_back_readable(client: WorkbenchClient) -> None:
    client.create_agent("dup", experiment="cartpole-dqn")
    with pytest.raises(ApiError) as dup:
        client.create_agent("dup", experiment="cartpole-dqn")
    assert dup.value.status == 409
    assert "already exists" in str(dup.value)
    with pytest.raises(ApiError) as bad:
        client.create_agent("bad name!", experiment="cartpole-dqn")
    assert bad.value.status == 400
    assert "%s" not in str(bad.value)


def test_wrong_token_says_what_to_do(live: ServerProcess) -> None:
    client = WorkbenchClient(ServerInfo(url=live.url, token="not-the-token"))
    try:
        with pytest.raises(ApiError) as refused:
            client.agents()
    finally:
        client.close()
    assert refused.value.status in (401, 403)
    assert "AGENTS_WORKBENCH_TOKEN" in str(refused.value)


def test_unreachable_server_is_a_clear_error() -> None:
    client = WorkbenchClient(ServerInfo(url=f"http://127.0.0.1:{free_port()}/", token="x"),
                             timeout=3)
    try:
        with pytest.raises(ServerUnreachable, match="agents-workbench run"):
            client.experiments()
    finally:
        client.close()


def test_submit_runs_calls_in_order_off_the_calling_thread(client: WorkbenchClient) -> None:
    threads: list[str] = []

    def record(tag: str) -> str:
        assert client.on_worker
        threads.append(threading.current_thread().name)
        return tag

    futures = [client.submit(record, str(i)) for i in range(5)]
    agents = client.submit(client.agents)
    assert [f.result(10) for f in futures] == ["0", "1", "2", "3", "4"]
    assert all(isinstance(a, AgentInfo) for a in agents.result(10))
    assert set(threads) == {"agents-workbench-client"}
    assert not client.on_worker


def test_discover_uses_the_environment_override(live: ServerProcess,
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTS_WORKBENCH_URL", live.url)
    monkeypatch.setenv("AGENTS_WORKBENCH_TOKEN", live.token)
    client = WorkbenchClient.discover()
    try:
        assert client.url == live.url
        assert client.experiments()
    finally:
        client.close()
    monkeypatch.delenv("AGENTS_WORKBENCH_URL")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(ServerNotFound, match="AGENTS_WORKBENCH_URL"):
        WorkbenchClient.discover()
