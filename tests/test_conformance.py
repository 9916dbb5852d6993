"""The platform's own client, ``agilerl.arena.inference.Agent``, against a real server.

Every test runs on both serving backends: ``local`` (models in the server) and ``ray`` (each
agent a Ray Serve application on a local cluster, reached through the same endpoint).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from agilerl.arena.exceptions import ArenaAuthError, ArenaInferenceError
from agilerl.arena.inference import Agent

from tests.servers import ServerProcess, copy_workspace, running_server

pytest_plugins = ["tests.ray_fixtures"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path,
           backend_args: list[str]) -> Iterator[ServerProcess]:
    """One server per backend for this module (the tests only read from it)."""
    root = copy_workspace(tmp_path_factory.mktemp("conformance"), demo_experiments)
    with running_server(root, extra_args=backend_args) as server:
        yield server


@pytest.fixture(scope="module")
def cartpole(served: ServerProcess, deploy_timeout: float) -> dict[str, Any]:
    """The demo CartPole DQN agent, deployed."""
    return served.deploy("cartpole", "cartpole-dqn", timeout=deploy_timeout)


def test_full_cartpole_episode(cartpole: dict[str, Any]) -> None:
    env = gym.make("CartPole-v1")
    with Agent(cartpole["endpoint"], api_key=cartpole["api_key"]) as agent:
        assert agent.metadata is not None
        assert agent.metadata.agent is not None
        assert agent.metadata.agent.algo == "DQN"
        obs, _ = env.reset(seed=0)
        done, steps = False, 0
        while not done:
            action, hidden = agent.get_action(obs)
            assert hidden is None
            assert np.asarray(action).shape == ()
            obs, _, terminated, truncated, _ = env.step(int(action))
            done = terminated or truncated
            steps += 1
    assert steps >= 8


def test_batched_call(cartpole: dict[str, Any]) -> None:
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with Agent(cartpole["endpoint"], api_key=cartpole["api_key"]) as agent:
        actions, _ = agent.get_action(obs, batched=True)
    assert np.asarray(actions).shape == (16,)
    assert set(np.unique(actions)) <= {0, 1}


def test_action_mask_is_honoured(cartpole: dict[str, Any]) -> None:
    obs = np.zeros((4, 4), np.float32)
    mask = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.int8)
    with Agent(cartpole["endpoint"], api_key=cartpole["api_key"]) as agent:
        actions, _ = agent.get_action(obs, batched=True, info={"action_mask": mask})
    assert list(actions) == [0, 1, 0, 1]


def test_wrong_key_is_refused(cartpole: dict[str, Any]) -> None:
    with Agent(cartpole["endpoint"], api_key="awb_not-the-key") as agent, \
            pytest.raises(ArenaAuthError):
        agent.get_action(np.zeros(4, np.float32))


def test_wrong_route_is_400(cartpole: dict[str, Any]) -> None:
    # probe_on_init=False: the client then cannot refuse locally and the server must answer.
    with Agent(cartpole["endpoint"], api_key=cartpole["api_key"], probe_on_init=False) as agent:
        agent.metadata = None
        with pytest.raises(ArenaInferenceError) as info:
            agent._request_json("POST", "/predict", json_body={"inputs": None})
    assert info.value.status_code == 400
    assert "get_action" in str(info.value)


def test_continuous_td3(served: ServerProcess, deploy_timeout: float) -> None:
    agent_json = served.deploy("pendulum", "pendulum-td3", timeout=deploy_timeout)
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=1)
    with Agent(agent_json["endpoint"], api_key=agent_json["api_key"]) as agent:
        for _ in range(20):
            action, _ = agent.get_action(obs)
            action = np.asarray(action, dtype=np.float32)
            assert action.shape == (1,)
            assert -2.0 <= float(action[0]) <= 2.0
            obs, *_ = env.step(action)
