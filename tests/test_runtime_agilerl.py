"""The AgileRL runtime against AgileRL itself, on checkpoints of real (quick) training runs.

``demo_experiments`` (conftest, session-scoped) quick-trains all five families once. Each
test here loads from it read-only; tests that break files work on a copy in ``tmp_path``.
"""

from __future__ import annotations

import shutil
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.agilerl import AgileRLRuntime, algorithm_classes
from workbench_core.store import ExperimentStore

FAMILIES = {
    "cartpole-dqn": "DQN",
    "cartpole-rainbow": "RainbowDQN",
    "cartpole-ppo": "PPO",
    "pendulum-ddpg": "DDPG",
    "pendulum-td3": "TD3",
}
DISCRETE = ("cartpole-dqn", "cartpole-rainbow", "cartpole-ppo")
CONTINUOUS = ("pendulum-ddpg", "pendulum-td3")
N_OBS = 512


def runtime_for(experiments: Path, name: str, rule: str | int = "best") -> AgileRLRuntime:
    experiment = ExperimentStore(experiments.parent).get(name)
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.resolve(rule)))
    assert isinstance(runtime, AgileRLRuntime)
    return runtime


def reference_agent(experiments: Path, name: str, rule: str | int = "best") -> Any:
    """The same checkpoint loaded by AgileRL itself, in evaluation mode."""
    experiment = ExperimentStore(experiments.parent).get(name)
    path = experiment.checkpoint(experiment.resolve(rule)).path
    cls = algorithm_classes()[FAMILIES[name]]
    with warnings.catch_warnings():
        # PPO's load always says its (never saved) rollout buffer is missing.
        warnings.filterwarnings("ignore", message="Attribute rollout_buffer not found")
        agent = cls.load(str(path), device="cpu")
    agent.set_training_mode(False)
    return agent


def observations(name: str, n: int = N_OBS, seed: int = 0) -> np.ndarray:
    """Observations spread over (and beyond) what the environment produces."""
    rng = np.random.default_rng(seed)
    if name.startswith("cartpole"):
        scale = np.array([2.4, 3.0, 0.21, 3.5], np.float32)
        return (rng.uniform(-1.5, 1.5, (n, 4)) * scale).astype(np.float32)
    angle = rng.uniform(-np.pi, np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle), rng.uniform(-8, 8, n)], 1).astype(np.float32)


def random_masks(n: int, n_actions: int = 2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 2, (n, n_actions)).astype(np.int8)
    masks[np.arange(n), rng.integers(0, n_actions, n)] = 1  # at least one legal action
    return masks


SHARPEN = 1e6
NEAR_TIE = 1e-4


def sharpened_ppo(agent: Any) -> Any:
    """PPO's get_action always samples; scaling its logits by 1e6 makes the sample the mode
    (the argmax is unchanged, the other action's probability is below e^-100 unless the two
    logits were within 1e-4: see :func:`clear_rows`)."""
    output = agent.actor.head_net.wrapped.get_output_dense()
    with torch.no_grad():
        output.weight.mul_(SHARPEN)
        output.bias.mul_(SHARPEN)
    return agent


def clear_rows(agent: Any, obs: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Rows whose best legal logit beats the next by more than NEAR_TIE (before sharpening),
    where a sampled action is the mode with certainty. Call on the unsharpened agent."""
    with torch.no_grad():
        latent = agent.actor.extract_features(agent.preprocess_observation(obs))
        logits = agent.actor.head_net.wrapped(latent).numpy()
    if mask is not None:
        logits = np.where(mask.astype(bool), logits, -np.inf)
    top2 = np.sort(logits, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    clear: np.ndarray = gap > NEAR_TIE
    assert clear.mean() > 0.97, "too many near-ties for the comparison to mean much"
    return clear


def agilerl_actions(agent: Any, name: str, obs: np.ndarray,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """What AgileRL's own evaluation-mode get_action answers."""
    algo = FAMILIES[name]
    if algo == "DQN":
        return np.asarray(agent.get_action(obs, epsilon=0.0, action_mask=mask))
    if algo == "RainbowDQN":
        return np.asarray(agent.get_action(obs, training=False, action_mask=mask))
    if algo == "PPO":
        return np.asarray(agent.get_action(obs, action_mask=mask)[0])
    return np.asarray(agent.get_action(obs, training=False))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_actions_equal_agilerl_get_action(demo_experiments: Path, name: str) -> None:
    runtime = runtime_for(demo_experiments, name)
    assert runtime.kind.algo == FAMILIES[name]
    agent = reference_agent(demo_experiments, name)
    obs = observations(name)
    rows = np.ones(len(obs), bool)
    if name == "cartpole-ppo":
        rows = clear_rows(agent, obs)
        agent = sharpened_ppo(agent)
    ours, hidden = runtime.get_action(obs)
    assert hidden is None
    theirs = agilerl_actions(agent, name, obs)
    if name in DISCRETE:
        assert ours.dtype == np.int64
        assert ours.shape == (N_OBS,)
        np.testing.assert_array_equal(ours[rows], theirs.reshape(-1)[rows])
        # A policy that always picks one action would make the comparison hollow.
        assert len(np.unique(ours)) == 2
    else:
        assert ours.dtype == np.float32
        assert ours.shape == (N_OBS, 1)
        np.testing.assert_array_equal(ours, theirs)
        assert (np.abs(ours) <= 2.0).all()


@pytest.mark.parametrize("name", DISCRETE)
def test_masked_actions_equal_agilerl_and_are_legal(demo_experiments: Path, name: str) -> None:
    runtime = runtime_for(demo_experiments, name)
    agent = reference_agent(demo_experiments, name)
    obs = observations(name, seed=3)
    mask = random_masks(len(obs))
    rows = np.ones(len(obs), bool)
    if name == "cartpole-ppo":
        rows = clear_rows(agent, obs, mask)
        agent = sharpened_ppo(agent)
    ours, _ = runtime.get_action(obs, action_mask=mask)
    assert mask[np.arange(len(obs)), ours].all()
    theirs = agilerl_actions(agent, name, obs, mask).reshape(-1)
    np.testing.assert_array_equal(ours[rows], theirs[rows])
    forced, _ = runtime.get_action(obs[:4], action_mask=np.array(
        [[1, 0], [0, 1], [1, 0], [0, 1]], dtype=bool))
    assert forced.tolist() == [0, 1, 0, 1]


def test_final_checkpoint_differs_from_first(demo_experiments: Path) -> None:
    """Loading honours the step asked for (not always the same file)."""
    experiment = ExperimentStore(demo_experiments.parent).get("pendulum-td3")
    steps = [c.step for c in experiment.checkpoints()]
    first = runtime_for(demo_experiments, "pendulum-td3", steps[0])
    last = runtime_for(demo_experiments, "pendulum-td3", steps[-1])
    obs = observations("pendulum-td3", 32)
    assert not np.array_equal(first.get_action(obs)[0], last.get_action(obs)[0])


@pytest.mark.parametrize("name", ["cartpole-rainbow", "pendulum-ddpg"])
def test_batched_equals_one_at_a_time(demo_experiments: Path, name: str) -> None:
    runtime = runtime_for(demo_experiments, name)
    obs = observations(name, 64, seed=5)
    batched, _ = runtime.get_action(obs)
    singles = np.concatenate([runtime.get_action(row[None])[0] for row in obs])
    np.testing.assert_allclose(batched, singles, rtol=0, atol=1e-6)


def test_ppo_continuous_mean_equals_agilerl(tmp_path: Path) -> None:
    """Continuous PPO (clipped and squashed) serves the Gaussian mean, as AgileRL's
    evaluation-mode get_action does once the standard deviation is negligible."""
    import gymnasium as gym

    from agents_widget.tracking import save_checkpoint, start_experiment

    env = gym.make("Pendulum-v1")
    obs = observations("pendulum", 256)
    for squash in (False, True):
        name = f"ppo-box-{int(squash)}"
        torch.manual_seed(0)
        agent = algorithm_classes()["PPO"](
            env.observation_space, env.action_space, share_encoders=False,
            net_config={"squash_output": squash, "head_config": {"hidden_size": [16]}})
        with torch.no_grad():
            # Spread the means over (and beyond) the bounds so clipping is exercised.
            agent.actor.head_net.wrapped.get_output_dense().weight.mul_(100.0)
        writer = start_experiment(name, project_type="classic", algorithm="PPO",
                                  framework="agilerl", environment="Pendulum-v1", root=tmp_path)
        save_checkpoint(writer, 1, agent.save_checkpoint)
        runtime = runtime_for(tmp_path / "experiments", name, 1)
        ours, _ = runtime.get_action(obs)
        with torch.no_grad():
            agent.actor.head_net.log_std.fill_(-40.0)
        agent.set_training_mode(False)
        theirs = agent.get_action(obs)[0]
        assert ours.shape == (256, 1)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
        assert (np.abs(ours) <= 2.0).all()
        if not squash:
            assert (np.abs(ours) == 2.0).any()  # some means were clipped to the bounds


def test_concurrent_calls_match_sequential(demo_experiments: Path) -> None:
    runtime = runtime_for(demo_experiments, "cartpole-dqn")
    batches = [observations("cartpole", 16, seed=s) for s in range(40)]
    expected = [runtime.get_action(b)[0] for b in batches]
    start = threading.Barrier(4)

    def work(offset: int) -> dict[int, np.ndarray]:
        start.wait()  # all threads call at once
        out: dict[int, np.ndarray] = {}
        for _ in range(5):
            for i in range(offset, len(batches), 4):
                out[i] = runtime.get_action(batches[i])[0]
                runtime.probe()
        return out

    with ThreadPoolExecutor(max_workers=4) as pool:
        results: dict[int, np.ndarray] = {}
        for part in pool.map(work, range(4)):  # re-raises any thread's exception here
            results.update(part)
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_probe_answers_on_the_fast_path(demo_experiments: Path, name: str) -> None:
    runtime = runtime_for(demo_experiments, name)
    runtime.probe()
    # Plain MLP policies are served layer by layer (the equality tests above hold for it).
    assert runtime.policy.flattened


BAD_OBS = [
    ("wrong width", np.zeros((1, 5), np.float32), "shape"),
    ("wrong rank", np.zeros((1, 2, 4), np.float32), "shape"),
    ("no batch axis", np.zeros(4, np.float32), "axes"),
    ("scalar", np.float32(1.0), "array"),
    ("empty batch", np.zeros((0, 4), np.float32), "empty"),
    ("NaN", np.array([[np.nan, 0, 0, 0]], np.float32), "NaN"),
    ("inf", np.array([[0, np.inf, 0, 0]], np.float64), "infinity"),
    ("overflows float32", np.array([[1e300, 0, 0, 0]]), "infinity"),
    ("text", np.array([["a", "b", "c", "d"]]), "dtype"),
    ("complex", np.zeros((1, 4), np.complex64), "dtype"),
    ("list", [[0.0, 0.0, 0.0, 0.0]], "array"),
    ("dict", {"obs": np.zeros((1, 4))}, "array"),
]


@pytest.mark.parametrize(("case", "obs", "needle"), BAD_OBS, ids=[c[0] for c in BAD_OBS])
def test_bad_observations_are_request_errors(demo_experiments: Path, case: str, obs: Any,
                                             needle: str) -> None:
    runtime = runtime_for(demo_experiments, "cartpole-dqn")
    with pytest.raises(RequestError, match=needle):
        runtime.get_action(obs)


BAD_EXTRAS = [
    ("mask width", {"action_mask": np.ones((2, 3), np.int8)}, "mask"),
    ("mask rows", {"action_mask": np.ones((3, 2), np.int8)}, "mask"),
    ("mask rank", {"action_mask": np.ones(2, np.int8)}, "mask"),
    ("mask values", {"action_mask": np.full((2, 2), 0.5)}, "0"),
    ("mask NaN", {"action_mask": np.full((2, 2), np.nan)}, "NaN"),
    ("mask no legal action", {"action_mask": np.array([[1, 0], [0, 0]])}, "no action"),
    ("mask text", {"action_mask": np.array([["1", "0"], ["0", "1"]])}, "dtype"),
    ("hidden state", {"hidden_state": np.zeros((1, 2))}, "not recurrent"),
    ("env defined actions", {"env_defined_actions": np.zeros((2, 1))}, "multi-agent"),
]


@pytest.mark.parametrize(("case", "kwargs", "needle"), BAD_EXTRAS,
                         ids=[c[0] for c in BAD_EXTRAS])
def test_bad_masks_and_extras_are_request_errors(demo_experiments: Path, case: str,
                                                 kwargs: dict[str, Any], needle: str) -> None:
    runtime = runtime_for(demo_experiments, "cartpole-ppo")
    with pytest.raises(RequestError, match=needle):
        runtime.get_action(np.zeros((2, 4), np.float32), **kwargs)


def test_mask_on_continuous_agent_is_refused(demo_experiments: Path) -> None:
    runtime = runtime_for(demo_experiments, "pendulum-td3")
    with pytest.raises(RequestError, match="continuous"):
        runtime.get_action(np.zeros((1, 3), np.float32), action_mask=np.ones((1, 1)))
    with pytest.raises(RequestError, match=r"\(batch, 3\)"):
        runtime.get_action(np.zeros((1, 4), np.float32))


# -- broken checkpoints ----------------------------------------------------------------------


@pytest.fixture
def workspace_copy(tmp_path: Path, demo_experiments: Path) -> Path:
    """A writable copy of the quick demo's experiments (the root folder)."""
    shutil.copytree(demo_experiments, tmp_path / "experiments")
    return tmp_path


def final_checkpoint(root: Path, name: str) -> Path:
    experiment = ExperimentStore(root).get(name)
    return experiment.checkpoint(experiment.final_step()).path


def load_final(root: Path, name: str) -> AgileRLRuntime:
    return runtime_for(root / "experiments", name, "final")


@pytest.mark.parametrize("fault", ["truncated", "garbage", "empty", "a plain tensor",
                                   "a folder"])
def test_unreadable_checkpoint_is_a_load_error(workspace_copy: Path, fault: str) -> None:
    path = final_checkpoint(workspace_copy, "cartpole-dqn")
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif fault == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 100)
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "a plain tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(RuntimeLoadError) as info:
        load_final(workspace_copy, "cartpole-dqn")
    message = str(info.value)
    assert path.name in message or str(path) in message
    assert "Traceback" not in message
    assert len(message) < 1000
    # A damaged or foreign file is fixed by saving it again; experiment.json is not the cause.
    assert "'algorithm'" not in message
    if fault in ("truncated", "garbage"):
        # The advice on the first line (what the panel shows), the library's words below it.
        advice, _, library = message.partition("\n")
        assert "truncated, corrupt" in advice
        assert "save_checkpoint" in advice
        assert "Error" in library
    if fault != "a folder":
        assert "save_checkpoint" in message


@pytest.mark.parametrize(("victim", "donor", "donor_algo"), [
    ("cartpole-dqn", "pendulum-td3", "TD3"),        # AgileRL refuses: different spaces
    ("cartpole-rainbow", "cartpole-dqn", "DQN"),    # AgileRL would load it silently
    ("cartpole-ppo", "cartpole-dqn", "DQN"),
    ("pendulum-td3", "pendulum-ddpg", "DDPG"),
])
def test_checkpoint_of_another_algorithm_is_a_load_error(workspace_copy: Path, victim: str,
                                                         donor: str, donor_algo: str) -> None:
    shutil.copyfile(final_checkpoint(workspace_copy, donor),
                    final_checkpoint(workspace_copy, victim))
    with pytest.raises(RuntimeLoadError) as info:
        load_final(workspace_copy, victim)
    message = str(info.value)
    assert donor_algo in message
    assert FAMILIES[victim] in message
    assert "'algorithm' in experiment.json" in message  # here the fix may be the metadata


def test_unknown_algorithm_is_a_load_error(workspace_copy: Path) -> None:
    from agents_widget.tracking import resume_experiment

    resume_experiment("cartpole-dqn", root=workspace_copy).update_info(algorithm="SAC")
    with pytest.raises(RuntimeLoadError, match="RainbowDQN"):
        load_final(workspace_copy, "cartpole-dqn")
