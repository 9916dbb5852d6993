"""Lifecycle across server restarts and crashes (real child-process servers)."""

from __future__ import annotations

import numpy as np
from agilerl.arena.inference import Agent

from tests.servers import ServerProcess


def test_agents_survive_restart_and_come_back_deployed(server: ServerProcess) -> None:
    deployed = server.deploy("cartpole", "cartpole-dqn")
    assert server.api("POST", "agents", json={"name": "idle", "experiment": "cartpole-dqn",
                                              "checkpoint": "final"}).status_code == 201
    server.stop()

    again = ServerProcess(server.root).start()
    try:
        names = {a["name"]: a for a in again.api("GET", "agents").json()["agents"]}
        assert set(names) == {"cartpole", "idle"}
        assert names["idle"]["status"] == "Undeployed"
        back = again.wait_status("cartpole")
        assert back["status"] == "Deployed"
        assert back["api_key"] == deployed["api_key"]
        with Agent(back["endpoint"], api_key=back["api_key"]) as agent:
            action, _ = agent.get_action(np.zeros(4, np.float32))
        assert int(action) in (0, 1)
    finally:
        again.stop()


def test_kill_9_keeps_registry_truthful(server: ServerProcess) -> None:
    server.deploy("cartpole", "cartpole-dqn")
    server.api("POST", "agents/cartpole/rotate-key")
    rotated = server.api("GET", "agents/cartpole").json()["api_key"]
    server.kill9()

    again = ServerProcess(server.root).start()
    try:
        back = again.wait_status("cartpole")
        assert back["status"] == "Deployed"
        assert back["api_key"] == rotated
    finally:
        again.stop()
