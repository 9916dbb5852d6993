"""The multi-agent runtime (MADDPG, MATD3, IPPO) in-process, against AgileRL itself."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server_extension.demos.classic_multi_recurrent import SPEAKER_LISTENER, SPREAD, TICTACTOE
from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.agilerl_multi import MultiAgentRuntime
from workbench_core.store import Checkpoint, Experiment, ExperimentStore

pytest_plugins = ["tests.classic_fixtures"]
pytestmark = [
    pytest.mark.slow,
    # AgileRL's own noise when the reference agent is loaded with its plain ``load``.
    pytest.mark.filterwarnings(r"ignore:Attribute \w+ not found in checkpoint:UserWarning"),
]


def _best(root: Path, name: str) -> tuple[Experiment, Checkpoint]:
    experiment = ExperimentStore(root).get(name)
    return experiment, experiment.checkpoint(experiment.best_step())


def _load(root: Path, name: str) -> tuple[MultiAgentRuntime, Any]:
    """The served runtime and, separately, AgileRL's own agent from the same file."""
    from agilerl import algorithms

    experiment, checkpoint = _best(root, name)
    runtime = load_runtime(experiment, checkpoint)
    assert isinstance(runtime, MultiAgentRuntime)
    reference = getattr(algorithms, experiment.info.algorithm).load(str(checkpoint.path))
    reference.set_training_mode(False)  # AgileRL adds no exploration noise when not training
    return runtime, reference


def _obs(runtime: MultiAgentRuntime, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for agent_id, space in runtime.obs_spaces.items():
        out[agent_id] = rng.normal(size=(batch, *space.shape)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def spread(classic_root: Path) -> tuple[MultiAgentRuntime, Any]:
    return _load(classic_root, SPREAD)


@pytest.fixture(scope="module")
def speaker(classic_root: Path) -> tuple[MultiAgentRuntime, Any]:
    return _load(classic_root, SPEAKER_LISTENER)


@pytest.fixture(scope="module")
def ttt(classic_root: Path) -> tuple[MultiAgentRuntime, Any]:
    return _load(classic_root, TICTACTOE)


def _ttt_obs(batch: int, seed: int = 0) -> np.ndarray:
    # Real boards: each square empty, mine or theirs.
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 3, size=(batch, 9))
    planes = np.stack([cells == 1, cells == 2], axis=-1).astype(np.float32)  # (B, 9, 2)
    return planes.reshape(batch, 3, 3, 2).reshape(batch, 18)


# -- the quick demo ---------------------------------------------------------------------------

def test_quick_demo_writes_every_family(classic_root: Path) -> None:
    expected = {
        TICTACTOE: ("IPPO", "tictactoe_v3", True, False),
        SPREAD: ("MADDPG", "simple_spread_v3", True, False),
        SPEAKER_LISTENER: ("MATD3", "simple_speaker_listener_v4", True, False),
        "cartpole-memory-ppo": ("PPO", "CartPole-v1", False, True),
    }
    experiments = {e.name: e for e in ExperimentStore(classic_root).list()}
    assert set(experiments) == set(expected)
    for name, (algorithm, environment, multi, recurrent) in expected.items():
        info = experiments[name].info
        assert (info.framework, info.project_type, info.algorithm, info.environment,
                info.multi_agent, info.recurrent) == (
            "agilerl", "classic", algorithm, environment, multi, recurrent)
        assert info.extra["env"]["kind"] in ("turn_based", "parallel", "gymnasium")
        assert "vs_random" in info.extra
        assert info.extra["quick"] is True
        checkpoints = experiments[name].checkpoints()
        assert len(checkpoints) >= 2, name
        assert all(c.evaluation_score is not None for c in checkpoints), name
        # One metrics row per checkpoint: scored before it was saved.
        assert [row["step"] for row in experiments[name].metrics()] == [
            c.step for c in checkpoints]
    assert not list(classic_root.glob("experiments/*/.staged*"))


# -- kinds and loading ----------------------------------------------------------------------

def test_kinds(spread: Any, speaker: Any, ttt: Any) -> None:
    assert spread[0].kind.to_json() == {"algo": "MADDPG", "multi_agent": True, "llm": False,
                                        "recurrent": False, "supervised": False}
    assert speaker[0].kind.algo == "MATD3"
    assert ttt[0].kind.algo == "IPPO"
    for runtime, _ in (spread, speaker, ttt):
        runtime.probe()


def test_corrupt_truncated_and_wrong_algorithm_files(classic_root: Path, tmp_path: Path) -> None:
    experiment, checkpoint = _best(classic_root, SPREAD)
    data = checkpoint.path.read_bytes()
    truncated = tmp_path / "step_1.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeLoadError, match=r"truncated or corrupt"):
        load_runtime(experiment, Checkpoint(1, truncated))
    garbage = tmp_path / "step_2.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(RuntimeLoadError, match=r"could not be read"):
        load_runtime(experiment, Checkpoint(2, garbage))

    # An IPPO checkpoint filed under an experiment that says MADDPG.
    _, ippo_checkpoint = _best(classic_root, TICTACTOE)
    wrong = tmp_path / "step_3.pt"
    shutil.copy(ippo_checkpoint.path, wrong)
    with pytest.raises(RuntimeLoadError, match=r"holds a IPPO agent.*serves MADDPG"):
        load_runtime(experiment, Checkpoint(3, wrong))


# -- equality with AgileRL --------------------------------------------------------------------

def test_maddpg_continuous_equals_agilerl(spread: Any) -> None:
    runtime, reference = spread
    obs = _obs(runtime, 16)
    ours, hidden = runtime.get_action(obs)
    theirs, _ = reference.get_action(obs)
    assert hidden is None
    assert set(ours) == set(theirs) == {"agent_0", "agent_1"}
    for agent_id in ours:
        assert ours[agent_id].shape == (16, 5)
        np.testing.assert_allclose(ours[agent_id], theirs[agent_id], rtol=0, atol=1e-6)


def test_maddpg_env_defined_actions_equal_agilerl(spread: Any) -> None:
    runtime, reference = spread
    obs = _obs(runtime, 4, seed=1)
    given = np.full((4, 5), np.nan)
    given[1] = [0.0, 1.0, 0.0, 1.0, 0.0]          # a whole row decided by the environment
    given[2, 3] = 0.25                            # one element of a row
    ours, _ = runtime.get_action(obs, env_defined_actions={"agent_0": given, "agent_1": None})
    theirs, _ = reference.get_action(
        obs, infos={"agent_0": {"env_defined_actions": given}, "agent_1": {}})
    np.testing.assert_allclose(ours["agent_0"], theirs["agent_0"], atol=1e-6)
    np.testing.assert_allclose(ours["agent_1"], theirs["agent_1"], atol=1e-6)
    np.testing.assert_array_equal(ours["agent_0"][1], given[1])
    assert ours["agent_0"][2, 3] == np.float32(0.25)
    free, _ = runtime.get_action(obs)
    np.testing.assert_array_equal(ours["agent_0"][[0, 3]], free["agent_0"][[0, 3]])


def _gumbel_inputs(reference: Any) -> tuple[list[torch.Tensor], list[Any]]:
    """Capture the logits AgileRL feeds its Gumbel-Softmax (its mode is their argmax)."""
    from agilerl.modules.custom_components import GumbelSoftmax

    seen: list[torch.Tensor] = []
    hooks = [module.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
             for actor in reference.actors.values() for module in actor.modules()
             if isinstance(module, GumbelSoftmax)]
    return seen, hooks


def test_matd3_discrete_is_the_mode_of_agilerl(speaker: Any) -> None:
    runtime, reference = speaker
    obs = _obs(runtime, 32, seed=2)
    seen, hooks = _gumbel_inputs(reference)
    try:
        sampled, _ = reference.get_action(obs)   # Gumbel-Softmax: AgileRL samples
    finally:
        for hook in hooks:
            hook.remove()
    ours, _ = runtime.get_action(obs)
    # Heterogeneous agents: one actor each, called in obs order.
    for agent_id, logits in zip(obs, seen, strict=True):
        assert sampled[agent_id].shape == ours[agent_id].shape == (32,)
        np.testing.assert_array_equal(ours[agent_id], logits.argmax(-1).numpy())
        assert ours[agent_id].dtype == np.int64


def test_ippo_is_the_mode_of_agilerl(ttt: Any) -> None:
    runtime, reference = ttt
    boards = _ttt_obs(24, seed=3)
    reference.get_action({"player_1": boards})   # samples, leaving its distribution behind
    logits = reference.actors["player"].head_net.dist.logits
    ours, _ = runtime.get_action({"player_1": boards})
    np.testing.assert_array_equal(ours["player_1"], logits.argmax(-1).numpy())


def test_ippo_masked_mode_equals_agilerl_masked_logits(ttt: Any) -> None:
    runtime, reference = ttt
    boards = _ttt_obs(24, seed=4)
    rng = np.random.default_rng(4)
    mask = (rng.random((24, 9)) < 0.4).astype(np.int8)
    mask[np.arange(24), rng.integers(0, 9, 24)] = 1          # at least one legal square
    # IPPO.get_action cannot take masks in AgileRL 2.58 (``None in [array]`` raises), so the
    # reference is its actor called with the mask, as get_action would call it.
    actor = reference.actors["player"]
    with torch.no_grad():
        actor(torch.as_tensor(boards), action_mask=torch.as_tensor(mask))
    reference_mode = actor.head_net.dist.logits.argmax(-1).numpy()
    ours, _ = runtime.get_action({"player_1": boards}, action_mask={"player_1": mask})
    np.testing.assert_array_equal(ours["player_1"], reference_mode)
    assert mask[np.arange(24), ours["player_1"]].all()


# -- masks, environment-defined actions, missing agents -------------------------------------

@pytest.mark.parametrize("legal", [0, 4, 8])
def test_mask_leaving_one_action_gets_it(ttt: Any, speaker: Any, legal: int) -> None:
    runtime, _ = ttt
    mask = np.zeros((5, 9), np.int8)
    mask[:, legal] = 1
    for player in ("player_1", "player_2"):
        actions, _ = runtime.get_action({player: _ttt_obs(5)}, action_mask={player: mask})
        assert actions[player].tolist() == [legal] * 5

    runtime, _ = speaker
    obs = _obs(runtime, 5)
    listener = np.zeros((5, 5), bool)
    listener[:, legal % 5] = True
    actions, _ = runtime.get_action(obs, action_mask={"listener_0": listener})
    assert actions["listener_0"].tolist() == [legal % 5] * 5


def test_masks_apply_per_row(ttt: Any) -> None:
    runtime, _ = ttt
    mask = np.eye(9, dtype=np.int8)
    actions, _ = runtime.get_action({"player_2": _ttt_obs(9)}, action_mask={"player_2": mask})
    assert actions["player_2"].tolist() == list(range(9))


def test_env_defined_discrete_override_per_row(ttt: Any) -> None:
    runtime, _ = ttt
    boards = _ttt_obs(4)
    free, _ = runtime.get_action({"player_1": boards})
    given = np.array([np.nan, 7, np.nan, 0])
    actions, _ = runtime.get_action({"player_1": boards},
                                    env_defined_actions={"player_1": given})
    assert actions["player_1"].tolist() == [free["player_1"][0], 7, free["player_1"][2], 0]
    # (B, 1) works as well as (B,); the env's word beats the mask.
    mask = np.zeros((4, 9), np.int8)
    mask[:, 3] = 1
    actions, _ = runtime.get_action({"player_1": boards}, action_mask={"player_1": mask},
                                    env_defined_actions={"player_1": given[:, None]})
    assert actions["player_1"].tolist() == [3, 7, 3, 0]


def test_missing_agents_get_no_action(spread: Any, speaker: Any) -> None:
    runtime, _ = spread
    obs = _obs(runtime, 2)
    actions, _ = runtime.get_action({"agent_1": obs["agent_1"]},
                                    env_defined_actions={"agent_0": np.zeros((2, 5))})
    assert list(actions) == ["agent_1"]
    both, _ = runtime.get_action(obs)
    np.testing.assert_allclose(actions["agent_1"], both["agent_1"], atol=1e-6)

    runtime, _ = speaker
    obs = _obs(runtime, 1)
    actions, _ = runtime.get_action({"speaker_0": obs["speaker_0"]},
                                    action_mask={"listener_0": np.ones((1, 5))})
    assert list(actions) == ["speaker_0"]


def test_concurrent_calls_agree(spread: Any) -> None:
    runtime, _ = spread
    obs = _obs(runtime, 8, seed=5)
    expected, _ = runtime.get_action(obs)
    results: list[dict[str, np.ndarray]] = []

    def call() -> None:
        for _ in range(20):
            results.append(runtime.get_action(obs)[0])

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 80
    for result in results:
        for agent_id, action in expected.items():
            np.testing.assert_array_equal(result[agent_id], action)


# -- bad requests -----------------------------------------------------------------------------

def test_bad_requests_say_what_is_wrong(ttt: Any, spread: Any) -> None:
    runtime, _ = ttt
    boards = _ttt_obs(2)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"obs": boards}, r"obs must be a dict \{agent_id: batched observation\}"),
        ({"obs": {}}, r"obs has no agents"),
        ({"obs": {"player_3": boards}}, r"unknown agent\(s\) \['player_3'\].*player_1, player_2"),
        ({"obs": {"player_1": boards[:, :9]}}, r"obs\['player_1'\] has shape \(2, 9\); "
                                              r"expected \(batch, 18\)"),
        ({"obs": {"player_1": boards[0]}}, r"expected \(batch, 18\)"),
        ({"obs": {"player_1": boards}, "action_mask": {"player_1": np.ones((2, 8))}},
         r"action_mask\['player_1'\] has shape \(2, 8\); expected \(2, 9\)"),
        ({"obs": {"player_1": boards}, "action_mask": {"player_1": np.zeros((2, 9))}},
         r"allows no action in batch row\(s\) \[0, 1\]"),
        ({"obs": {"player_1": boards}, "action_mask": np.ones((2, 9))},
         r"action_mask must be a dict"),
        ({"obs": {"player_1": boards}, "action_mask": {"nobody": np.ones((2, 9))}},
         r"action_mask names unknown agent"),
        ({"obs": {"player_1": boards}, "env_defined_actions": {"player_1": np.array([9, 1])}},
         r"outside 0\.\.8"),
        ({"obs": {"player_1": boards}, "env_defined_actions": {"player_1": np.array([1.5, 1])}},
         r"whole action numbers"),
        ({"obs": {"player_1": boards},
          "env_defined_actions": {"player_1": np.array([1, 2, 3])}}, r"expected \(2, 1\)"),
        ({"obs": {"player_1": np.full((2, 18), np.nan)}}, r"NaN or infinity"),
    ]
    for request, message in cases:
        kwargs = {k: v for k, v in request.items() if k != "obs"}
        with pytest.raises(RequestError, match=message):
            runtime.get_action(request["obs"], **kwargs)

    runtime, _ = spread
    obs = _obs(runtime, 2)
    with pytest.raises(RequestError, match=r"not discrete; action masks apply"):
        runtime.get_action(obs, action_mask={"agent_0": np.ones((2, 5))})
    with pytest.raises(RequestError, match=r"expected \(2, 5\)"):
        runtime.get_action(obs, env_defined_actions={"agent_0": np.ones((2, 4))})
