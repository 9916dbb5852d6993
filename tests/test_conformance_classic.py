"""Multi-agent and recurrent agents through a real server and the Arena client.

Every test runs on both serving backends, ``local`` and ``ray`` (tests/ray_fixtures.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agilerl.arena.exceptions import ArenaInferenceError
from agilerl.arena.inference import Agent

from server_extension.demos.classic_multi_recurrent import MEMORY, TICTACTOE
from server_extension.serving.runtimes import load_runtime
from tests.servers import ServerProcess, copy_workspace, running_server
from workbench_core.environments import MEMORY_ENV, env_spec, make_env, policy_observation
from workbench_core.episodes import client_act, play_episode
from workbench_core.store import ExperimentStore

pytest_plugins = ["tests.classic_fixtures", "tests.ray_fixtures"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classic_server(tmp_path_factory: pytest.TempPathFactory, classic_experiments: Path,
                   backend_args: list[str]) -> Iterator[ServerProcess]:
    """This module's server over a copy of the classic workspace, one per backend."""
    root = copy_workspace(tmp_path_factory.mktemp("classic-conformance"), classic_experiments)
    with running_server(root, extra_args=backend_args) as server:
        yield server


@pytest.fixture(scope="module")
def classic_agents(classic_server: ServerProcess,
                   deploy_timeout: float) -> dict[str, dict[str, Any]]:
    """Every classic demo experiment deployed once on this module's server."""
    # 25 s locally, about 2 min on Ray in CI (each family's first Serve replica imports its
    # framework): paid once per backend, by the first test that asks for it.
    # Imported here: a plugin module imported before pytest registers it escapes rewriting.
    from tests.classic_fixtures import CLASSIC_AGENTS

    return {short: classic_server.deploy(short, experiment, timeout=deploy_timeout)
            for short, experiment in CLASSIC_AGENTS.items()}


def _client(agent: dict[str, Any]) -> Any:
    # Typed Any: the client's answers are a wide union (arrays, dicts, tuples, None).
    return Agent(agent["endpoint"], api_key=agent["api_key"])


def _board(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 3, size=9)
    return np.stack([cells == 1, cells == 2], axis=-1).astype(np.float32).reshape(18)


def test_status_reports_kinds(classic_agents: dict[str, dict[str, Any]]) -> None:
    expected = {"ttt": ("IPPO", True, False), "spread": ("MADDPG", True, False),
                "speaker": ("MATD3", True, False), "memory": ("PPO", False, True)}
    for short, (algo, multi, recurrent) in expected.items():
        with _client(classic_agents[short]) as client:
            assert client.metadata is not None
            info = client.metadata.agent
            assert info is not None
            assert (info.algo, info.multi_agent, info.recurrent, info.llm) == (
                algo, multi, recurrent, False)


@pytest.mark.parametrize("legal", [0, 5, 8])
def test_mask_all_but_one_action_gets_that_action(
    classic_agents: dict[str, dict[str, Any]], legal: int
) -> None:
    mask = np.zeros(9, np.int8)
    mask[legal] = 1
    with _client(classic_agents["ttt"]) as client:
        actions, hidden = client.get_action({"player_2": _board(legal)},
                                            info={"action_mask": {"player_2": mask}})
    assert hidden is None
    assert set(actions) == {"player_2"}
    assert int(actions["player_2"]) == legal


def test_env_defined_actions_override(classic_agents: dict[str, dict[str, Any]]) -> None:
    rng = np.random.default_rng(1)
    obs = {"agent_0": rng.normal(size=12).astype(np.float32),
           "agent_1": rng.normal(size=12).astype(np.float32)}
    given = np.array([np.nan, 0.0, 1.0, np.nan, np.nan])
    with _client(classic_agents["spread"]) as client:
        free, _ = client.get_action(obs)
        actions, _ = client.get_action(obs, env_defined_actions={"agent_0": given,
                                                                 "agent_1": None})
        # The Arena client also takes them from info, as AgileRL environments report them.
        via_info, _ = client.get_action(obs, info={"env_defined_actions": {"agent_0": given}})
    assert actions["agent_0"].shape == (5,)
    np.testing.assert_array_equal(actions["agent_0"][[1, 2]], [0.0, 1.0])
    np.testing.assert_allclose(actions["agent_0"][[0, 3, 4]], free["agent_0"][[0, 3, 4]],
                               atol=1e-6)
    np.testing.assert_allclose(actions["agent_1"], free["agent_1"], atol=1e-6)
    np.testing.assert_allclose(via_info["agent_0"], actions["agent_0"], atol=1e-6)

    with _client(classic_agents["ttt"]) as client:
        decided, _ = client.get_action({"player_1": _board()},
                                       env_defined_actions={"player_1": np.array(4.0)})
    assert int(decided["player_1"]) == 4


def test_batched_multi_agent_call_and_missing_agents(
    classic_agents: dict[str, dict[str, Any]]
) -> None:
    rng = np.random.default_rng(2)
    obs = {"speaker_0": rng.normal(size=(6, 3)).astype(np.float32),
           "listener_0": rng.normal(size=(6, 11)).astype(np.float32)}
    listener_mask = np.zeros((6, 5), np.int8)
    listener_mask[np.arange(6), np.arange(6) % 5] = 1
    with _client(classic_agents["speaker"]) as client:
        actions, _ = client.get_action(obs, batched=True,
                                       info={"action_mask": {"listener_0": listener_mask}})
        only_speaker, _ = client.get_action({"speaker_0": obs["speaker_0"]}, batched=True,
                                            info={"action_mask": {"listener_0": listener_mask}})
    assert actions["speaker_0"].shape == (6,)
    assert set(np.unique(actions["speaker_0"])) <= {0, 1, 2}
    assert actions["listener_0"].tolist() == [0, 1, 2, 3, 4, 0]
    assert list(only_speaker) == ["speaker_0"]
    np.testing.assert_array_equal(only_speaker["speaker_0"], actions["speaker_0"])


def test_whole_tictactoe_game_is_legal(classic_agents: dict[str, dict[str, Any]]) -> None:
    spec = env_spec("tictactoe_v3")
    with _client(classic_agents["ttt"]) as client:
        for seed in range(3):
            episode = play_episode(spec, client_act(client), seed=seed, opponent="self")
            # An illegal move would end the game at once with -1 for the mover.
            assert episode.length >= 5
            assert sorted(episode.returns.values()) in ([-1.0, 1.0], [0.0, 0.0])


def test_recurrent_episode_equals_in_process(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess
) -> None:
    """Hidden state threaded by the client gives the in-process runtime's actions."""
    experiment = ExperimentStore(classic_server.root).get(MEMORY)
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.best_step()))
    spec = env_spec("CartPole-v1", {"env": MEMORY_ENV})
    env = make_env(spec)
    raw, _ = env.reset(seed=3)
    remote_state, local_state = None, None
    done, steps = False, 0
    with _client(classic_agents["memory"]) as client:
        while not done:
            obs = policy_observation(spec, raw)
            action, remote_state = client.get_action(obs, hidden_state=remote_state)
            local, local_state = runtime.get_action(obs[None], hidden_state=(
                None if local_state is None else local_state))
            assert np.asarray(action).shape == ()
            assert int(action) == int(local[0])
            assert isinstance(remote_state, dict)
            for key, value in local_state.items():
                assert remote_state[key].shape == value.shape[1:]
                np.testing.assert_allclose(remote_state[key], value[0], atol=1e-6)
            raw, _, terminated, truncated, _ = env.step(int(action))
            done = bool(terminated or truncated)
            steps += 1
    env.close()
    assert steps >= 8


def test_recurrent_batched_call(classic_agents: dict[str, dict[str, Any]]) -> None:
    obs = np.zeros((4, 2), np.float32)
    with _client(classic_agents["memory"]) as client:
        actions, state = client.get_action(obs, batched=True)
        again, state2 = client.get_action(obs, batched=True, hidden_state=state)
    assert np.asarray(actions).shape == (4,)
    assert np.asarray(again).shape == (4,)
    assert isinstance(state, dict)
    assert isinstance(state2, dict)
    assert all(v.shape[0] == 4 for v in state.values())


def _error(client: Agent, payload: dict[str, Any]) -> ArenaInferenceError:
    with pytest.raises(ArenaInferenceError) as info:
        client._request_json("POST", "/get_action", json_body=payload)
    return info.value


def test_bad_payloads_are_400_saying_what_is_wrong(
    classic_agents: dict[str, dict[str, Any]]
) -> None:
    board = _board()[None]
    with _client(classic_agents["ttt"]) as client:
        unknown = _error(client, {"obs": Agent.serialize({"player_9": board}, batched=True)})
        empty = _error(client, {"obs": {}})
        flat = _error(client, {"obs": Agent.serialize(board, batched=True)})
        short_mask = _error(client, {
            "obs": Agent.serialize({"player_1": board}, batched=True),
            "action_mask": Agent.serialize({"player_1": np.ones((1, 7), np.int8)},
                                           batched=True)})
        wrong_shape = _error(client, {"obs": Agent.serialize({"player_1": board[:, :4]},
                                                             batched=True)})
    for error in (unknown, empty, flat, short_mask, wrong_shape):
        assert error.status_code == 400
    assert "player_9" in str(unknown)
    assert "player_1, player_2" in str(unknown)
    assert "no agents" in str(empty) or "obs is required" in str(empty)
    assert "must be a dict" in str(flat)
    assert "(1, 7); expected (1, 9)" in str(short_mask)
    assert "(1, 4); expected (batch, 18)" in str(wrong_shape)

    with _client(classic_agents["memory"]) as client:
        _, state = client.get_action(np.zeros(2, np.float32))
        assert isinstance(state, dict)
        key = next(iter(state))
        bad = {**state, key: state[key][:, :3]}
        with pytest.raises(ArenaInferenceError) as info:
            client.get_action(np.zeros(2, np.float32), hidden_state=bad)
    assert info.value.status_code == 400
    assert f"hidden_state['{key}'] has shape (1, {state[key].shape[0]}, 3)" in str(info.value)


def test_workspace_experiments_are_listed(classic_server: ServerProcess,
                                          classic_root: Path) -> None:
    listed = {e["name"]: e for e in classic_server.api("GET", "experiments").json()["experiments"]}
    assert listed[TICTACTOE]["multi_agent"] is True
    assert listed[MEMORY]["recurrent"] is True
    assert (classic_root / "experiments" / TICTACTOE).is_dir()


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_example_notebooks_run_against_the_server(classic_server: ServerProcess) -> None:
    """Both classic notebooks, top to bottom under nbval, with this server as theirs."""
    # 50-130 s in CI, the most on Ray: two kernels run every cell of two notebooks, each
    # cell a real call; splitting the notebooks would only start the kernels twice.
    env = {**os.environ, "AGENTS_WORKBENCH_URL": classic_server.url,
           "AGENTS_WORKBENCH_TOKEN": classic_server.token,
           "AGENTS_WORKBENCH_ROOT": str(classic_server.root)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:randomly",
         str(NOTEBOOKS / "classic_multi_agent.ipynb"), str(NOTEBOOKS / "classic_recurrent.ipynb")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
        cwd=NOTEBOOKS.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
