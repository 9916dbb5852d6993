"""Multi-agent checkpoints imported as users have them: MADDPG and IPPO on mpe2's
``simple_spread_v3`` with its default 3 agents, through the API, served and compared with
AgileRL's own answers through the Arena client."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agilerl.arena.inference import Agent

from tests import import_support
from tests.servers import ServerProcess, wait_until
from tests.test_import import IMPORT_TIMEOUT, post_import

pytestmark = pytest.mark.slow
AGENTS = ["agent_0", "agent_1", "agent_2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server over an empty workspace."""
    with import_support.empty_workspace_server(tmp_path_factory.mktemp("import-multi")) as served:
        yield served


def _reference(path: Path, algo: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl import algorithms

        reference = getattr(algorithms, algo).load(str(path))
    reference.set_training_mode(False)  # no exploration noise
    return reference


def _obs(seed: int, rows: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {a: rng.normal(size=(rows, 18)).astype(np.float32) for a in AGENTS}


# Two imports (each a worker loading AgileRL) and a deploy: about 100 s on a busy machine.
def test_maddpg_on_three_agent_spread(server: ServerProcess, tmp_path: Path) -> None:
    path = import_support.save_multi(tmp_path / "spread_maddpg.pt", "MADDPG",
                                     continuous_actions=True)
    # The short name is the demo's 2-agent recipe: refused at import, naming the agents.
    refused = post_import(server, {"path": str(path), "env": "simple_spread_v3"})
    assert refused.status_code == 400
    assert "agent_2" in refused.json()["message"]
    done = post_import(server, {"path": str(path), "env": "mpe2.simple_spread_v3",
                                "env_kwargs": {"continuous_actions": True}})
    assert done.status_code == 201, done.text
    experiment = done.json()
    assert (experiment["algorithm"], experiment["multi_agent"]) == ("MADDPG", True)
    assert experiment["extra"]["env"]["kind"] == "parallel"
    agent = server.deploy("spread", experiment["name"], timeout=IMPORT_TIMEOUT)
    obs = _obs(0)
    theirs, _ = _reference(path, "MADDPG").get_action(obs)
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        ours, _ = client.get_action(obs, batched=True)
    for aid in AGENTS:
        np.testing.assert_allclose(np.asarray(ours[aid]), theirs[aid], atol=1e-5)


def test_ippo_on_three_agent_spread(server: ServerProcess, tmp_path: Path) -> None:
    path = import_support.save_multi(tmp_path / "spread_ippo.pt", "IPPO")
    done = post_import(server, {"path": str(path), "env": "mpe2.simple_spread_v3"})
    assert done.status_code == 201, done.text
    experiment = done.json()
    assert (experiment["algorithm"], experiment["multi_agent"]) == ("IPPO", True)
    agent = server.deploy("spread-ippo", experiment["name"], timeout=IMPORT_TIMEOUT)
    reference = _reference(path, "IPPO")
    obs = _obs(1)
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        ours, _ = client.get_action(obs, batched=True)
    for aid in AGENTS:
        reference.get_action({aid: obs[aid]})  # samples; its distribution stays behind
        logits = reference.actors[reference.get_network_id(aid)].head_net.dist.logits
        np.testing.assert_array_equal(np.asarray(ours[aid]), logits.argmax(-1).numpy())


def test_tictactoe_agent_takes_the_environments_own_observation(
        server: ServerProcess, tmp_path: Path) -> None:
    from pettingzoo.classic import tictactoe_v3

    path = import_support.save_tictactoe_ippo(tmp_path / "ttt_ippo.pt")
    done = post_import(server, {"path": str(path), "env": "pettingzoo.classic.tictactoe_v3",
                                "evaluate": 2})
    assert done.status_code == 201, done.text
    recipe = done.json()["extra"]["env"]
    assert recipe["kind"] == "turn_based"
    assert recipe["observation"] == {"flatten_key": "observation"}  # recorded preprocessing
    agent = server.deploy("ttt", done.json()["name"], timeout=IMPORT_TIMEOUT)
    env = tictactoe_v3.env()
    env.reset(seed=0)
    env.step(4)  # player_1 takes the centre; player_2 to move, square 4 now illegal
    raw = env.last()[0]
    assert raw["observation"].shape == (3, 3, 2)
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        board_action, _ = client.get_action({"player_2": raw["observation"]},
                                            info={"action_mask": {"player_2": raw["action_mask"]}})
        flat_action, _ = client.get_action({"player_2": raw["observation"].reshape(18)},
                                           info={"action_mask": {"player_2": raw["action_mask"]}})
    assert int(np.asarray(board_action["player_2"])) == int(np.asarray(flat_action["player_2"]))
    assert raw["action_mask"][int(np.asarray(board_action["player_2"]))] == 1
    # Scored in the background as a turn-based game: the win rate against random moves.
    name = done.json()["name"]

    def evaluated() -> dict[str, Any] | None:
        listing = server.api("GET", "experiments").json()["experiments"]
        experiment = next(e for e in listing if e["name"] == name)
        return experiment if experiment["evaluation"]["state"] == "done" else None

    experiment = wait_until(evaluated, IMPORT_TIMEOUT, "the tic-tac-toe evaluation")
    assert experiment["evaluation"]["failed"] == {}
    assert 0.0 <= experiment["checkpoints"][0]["evaluation_score"] <= 1.0
