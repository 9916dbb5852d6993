"""The recurrent PPO runtime in-process: hidden state threaded like AgileRL does it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server_extension.demos.classic_multi_recurrent import MEMORY, TICTACTOE
from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.agilerl_recurrent import RecurrentPPORuntime
from workbench_core.environments import MEMORY_ENV, env_spec, make_env, policy_observation
from workbench_core.store import Checkpoint, ExperimentStore, ExperimentWriter

pytest_plugins = ["tests.classic_fixtures"]
pytestmark = [
    pytest.mark.slow,
    # AgileRL's own noise when the reference agent is loaded with its plain ``load``.
    pytest.mark.filterwarnings(r"ignore:Attribute \w+ not found in checkpoint:UserWarning"),
    pytest.mark.filterwarnings(r"ignore:TensorDict\.to_module\(\):FutureWarning"),
]


@pytest.fixture(scope="module")
def loaded(classic_root: Path) -> tuple[RecurrentPPORuntime, Any]:
    """The served runtime and AgileRL's own PPO loaded from the same checkpoint."""
    from agilerl.algorithms import PPO

    experiment = ExperimentStore(classic_root).get(MEMORY)
    checkpoint = experiment.checkpoint(experiment.best_step())
    runtime = load_runtime(experiment, checkpoint)
    assert isinstance(runtime, RecurrentPPORuntime)
    reference = PPO.load(str(checkpoint.path))
    reference.set_training_mode(False)
    return runtime, reference


def test_kind_and_state_shapes(loaded: Any) -> None:
    runtime, reference = loaded
    assert runtime.kind.to_json() == {"algo": "PPO", "multi_agent": False, "llm": False,
                                      "recurrent": True, "supervised": False}
    initial = reference.get_initial_hidden_state(1)
    assert set(runtime.state_shapes) == set(initial)
    for key, (layers, size) in runtime.state_shapes.items():
        assert initial[key].shape == (layers, 1, size)
    runtime.probe()


def test_episode_threaded_equals_agilerl(loaded: Any) -> None:
    """Step by step: same action as AgileRL's mode, same next hidden state, threaded."""
    runtime, reference = loaded
    spec = env_spec("CartPole-v1", {"env": MEMORY_ENV})
    env = make_env(spec)
    raw, _ = env.reset(seed=7)
    ours_state, their_state = None, reference.get_initial_hidden_state(1)
    done, steps = False, 0
    while not done and steps < 200:
        obs = policy_observation(spec, raw)[None]
        action, ours_state = runtime.get_action(obs, hidden_state=ours_state)
        *_, their_next = reference.get_action(obs, hidden_state=their_state)
        their_mode = reference.actor.head_net.dist.logits.argmax(-1).numpy()
        np.testing.assert_array_equal(action, their_mode)
        assert action.dtype == np.int64
        assert action.shape == (1,)
        for key, value in their_next.items():
            np.testing.assert_allclose(ours_state[key], value.numpy().transpose(1, 0, 2),
                                       rtol=0, atol=1e-6)
        their_state = their_next
        raw, _, terminated, truncated, _ = env.step(int(action[0]))
        done = bool(terminated or truncated)
        steps += 1
    env.close()
    assert steps > 5


def test_batched_rows_are_independent(loaded: Any) -> None:
    runtime, _ = loaded
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 2)).astype(np.float32) * 0.1
    first, state = runtime.get_action(obs)                       # None: zeros for every row
    zeros = runtime.initial_state(3)
    again, state_again = runtime.get_action(obs, hidden_state=zeros)
    np.testing.assert_array_equal(first, again)
    second, _ = runtime.get_action(obs, hidden_state=state)
    for row in range(3):
        one, one_state = runtime.get_action(obs[row:row + 1])
        np.testing.assert_array_equal(one, first[row:row + 1])
        two, _ = runtime.get_action(obs[row:row + 1], hidden_state=one_state)
        np.testing.assert_array_equal(two, second[row:row + 1])
        for key in state:
            np.testing.assert_allclose(one_state[key][0], state_again[key][row], atol=1e-6)


def test_mask_and_env_defined_action(loaded: Any) -> None:
    runtime, _ = loaded
    obs = np.zeros((2, 2), np.float32)
    mask = np.array([[1, 0], [0, 1]], np.int8)
    action, _ = runtime.get_action(obs, action_mask=mask)
    assert action.tolist() == [0, 1]
    action, _ = runtime.get_action(obs, action_mask=mask,
                                   env_defined_actions=np.array([1.0, np.nan]))
    assert action.tolist() == [1, 1]


def test_bad_requests_say_what_is_wrong(loaded: Any) -> None:
    runtime, _ = loaded
    obs = np.zeros((2, 2), np.float32)
    _, state = runtime.get_action(obs)
    key = next(iter(state))
    layers, size = runtime.state_shapes[key]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"hidden_state": {**state, key: state[key][:1]}},
         rf"hidden_state\['{key}'\] has shape \(1, {layers}, {size}\); "
         rf"expected \(2, {layers}, {size}\)"),
        ({"hidden_state": {**state, key: state[key].transpose(1, 0, 2)}}, r"expected \(2, "),
        ({"hidden_state": {key: state[key]}}, r"hidden_state has keys .*; expected"),
        ({"hidden_state": state[key]}, r"hidden_state must be a dict of arrays"),
        ({"hidden_state": {**state, key: np.full_like(state[key], np.nan)}}, r"NaN"),
        ({"action_mask": np.ones((2, 3))}, r"action_mask has shape \(2, 3\); expected \(2, 2\)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(RequestError, match=message):
            runtime.get_action(obs, **kwargs)
    with pytest.raises(RequestError, match=r"obs has shape \(2, 4\); expected \(batch, 2\)"):
        runtime.get_action(np.zeros((2, 4), np.float32))
    with pytest.raises(RequestError, match=r"not a dict"):
        runtime.get_action({"agent_0": obs})


def test_loader_refuses_what_it_cannot_serve(classic_root: Path, tmp_path: Path) -> None:
    from agilerl.algorithms import PPO
    from gymnasium import spaces

    experiment = ExperimentStore(classic_root).get(MEMORY)
    plain = PPO(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2), share_encoders=False,
                net_config={"encoder_config": {"hidden_size": [8]}})
    path = tmp_path / "step_1.pt"
    plain.save_checkpoint(str(path))
    with pytest.raises(RuntimeLoadError, match=r"without recurrent=True"):
        load_runtime(experiment, Checkpoint(1, path))

    other = ExperimentStore(classic_root).get(TICTACTOE)
    with pytest.raises(RuntimeLoadError, match=r"holds a IPPO agent"):
        load_runtime(experiment, other.checkpoint(other.final_step()))

    truncated = tmp_path / "step_2.pt"
    truncated.write_bytes(experiment.checkpoint(experiment.final_step()).path.read_bytes()[:500])
    with pytest.raises(RuntimeLoadError, match=r"truncated or corrupt"):
        load_runtime(experiment, Checkpoint(2, truncated))


def test_separate_encoders_thread_the_actor_state_only(tmp_path: Path) -> None:
    """With share_encoders=False only the actor's LSTM state travels; actions still match."""
    from agilerl.algorithms.recurrent_ppo import RecurrentPPO
    from gymnasium import spaces

    torch.manual_seed(0)
    agent: Any = RecurrentPPO(spaces.Box(-1, 1, (3,), np.float32), spaces.Discrete(4),
                         share_encoders=False,
                         net_config={"encoder_config": {"hidden_state_size": 8}})
    writer = ExperimentWriter.create(tmp_path, "separate", project_type="classic",
                                     algorithm="RecurrentPPO", framework="agilerl",
                                     environment="custom", recurrent=True)
    path = writer.checkpoint_path(1)
    agent.save_checkpoint(str(path))
    runtime = load_runtime(ExperimentStore(tmp_path).get("separate"), Checkpoint(1, path))
    assert isinstance(runtime, RecurrentPPORuntime)
    assert set(runtime.state_shapes) == {"actor_encoder_h", "actor_encoder_c"}
    agent.set_training_mode(False)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(5, 1, 3)).astype(np.float32)
    state, theirs = None, agent.get_initial_hidden_state(1)
    for step in obs:
        action, state = runtime.get_action(step, hidden_state=state)
        *_, theirs = agent.get_action(step, hidden_state=theirs)
        np.testing.assert_array_equal(action, agent.actor.head_net.dist.logits.argmax(-1).numpy())
        np.testing.assert_allclose(state["actor_encoder_h"],
                                   theirs["actor_encoder_h"].numpy().transpose(1, 0, 2),
                                   atol=1e-6)
