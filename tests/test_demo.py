"""The quick demo: five real AgileRL families, each with checkpoints and scores."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from server_extension.demos.classic import QUICK_RUNS, build_demo
from server_extension.serving.runtimes.agilerl import algorithm_classes
from workbench_core.store import ExperimentStore

EXPECTED = {
    "cartpole-dqn": ("DQN", "CartPole-v1"),
    "cartpole-rainbow": ("RainbowDQN", "CartPole-v1"),
    "cartpole-ppo": ("PPO", "CartPole-v1"),
    "pendulum-ddpg": ("DDPG", "Pendulum-v1"),
    "pendulum-td3": ("TD3", "Pendulum-v1"),
}


def test_quick_demo_writes_all_five_families(demo_experiments: Path) -> None:
    experiments = {e.name: e for e in ExperimentStore(demo_experiments.parent).list()}
    assert set(experiments) == set(EXPECTED)
    for name, (algorithm, env_id) in EXPECTED.items():
        exp = experiments[name]
        info = exp.info
        assert (info.framework, info.project_type, info.algorithm, info.environment) == (
            "agilerl", "classic", algorithm, env_id)
        assert info.extra["env_id"] == env_id
        assert info.extra["quick"] is True
        assert info.extra["training"]["algorithm"] == algorithm
        assert "greedy" in info.extra["evaluation_score"]
        ckpts = exp.checkpoints()
        assert len(ckpts) >= 2, name
        assert all(c.path.suffix == ".pt" and c.size_mb > 0 for c in ckpts)
        # Every checkpoint was evaluated; the last one also has training episodes behind it.
        assert all(c.evaluation_score is not None for c in ckpts), name
        assert ckpts[-1].training_score is not None, name
        assert [row["step"] for row in exp.metrics()] == [c.step for c in ckpts]
        best = exp.checkpoint(exp.best_step())
        assert best.evaluation_score == max(c.evaluation_score or -np.inf for c in ckpts)


def test_quick_cartpole_dqn_has_distinct_first_best_and_final(demo_experiments: Path) -> None:
    """Server tests deploy "best", "final" and a specific step side by side and break one
    file; that needs them to be different files."""
    exp = ExperimentStore(demo_experiments.parent).get("cartpole-dqn")
    steps = [c.step for c in exp.checkpoints()]
    assert len({steps[0], exp.best_step(), exp.final_step()}) == 3, exp.metrics()


@pytest.mark.parametrize("name", list(EXPECTED))
def test_checkpoints_are_real_agilerl_saves(demo_experiments: Path, name: str) -> None:
    algorithm, _ = EXPECTED[name]
    cls = algorithm_classes()[algorithm]
    for ckpt in ExperimentStore(demo_experiments.parent).get(name).checkpoints():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute rollout_buffer not found")
            agent = cls.load(str(ckpt.path))
        assert type(agent) is cls
        assert agent.steps == ckpt.step  # AgileRL's own step count was kept


def test_rebuild_is_reproducible_and_leaves_no_trace(tmp_path: Path,
                                                     demo_experiments: Path) -> None:
    """Same seeds, same scores; the caller's torch threads and random state are untouched."""
    threads = torch.get_num_threads()
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state(legacy=False)["state"]
    messages: list[str] = []
    names = build_demo(tmp_path, quick=True, progress=messages.append)
    assert names == [run.name for run in QUICK_RUNS]
    assert sorted(names) == sorted(EXPECTED)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    numpy_after = np.random.get_state(legacy=False)["state"]
    assert np.array_equal(numpy_after["key"], numpy_state["key"])
    assert numpy_after["pos"] == numpy_state["pos"]
    assert any("cartpole-ppo" in m for m in messages)
    assert messages[-1].startswith("demo built in")
    again = ExperimentStore(tmp_path)
    before = ExperimentStore(demo_experiments.parent)
    for name in names:
        assert again.get(name).metrics() == before.get(name).metrics(), name


@pytest.mark.parametrize("name", ["cartpole-dqn", "cartpole-rainbow", "pendulum-td3"])
def test_evaluation_score_is_what_the_deployed_agent_scores(demo_experiments: Path,
                                                            name: str) -> None:
    """Replaying every checkpoint as the server serves it, on the evaluation seeds, gives
    exactly the logged evaluation score."""
    import gymnasium as gym

    from agents_widget.agilerl_training import EVAL_SEED
    from server_extension.serving.runtimes import load_runtime

    exp = ExperimentStore(demo_experiments.parent).get(name)
    episodes = exp.info.extra["training"]["eval_episodes"]
    env = gym.make(exp.info.environment or "")
    for ckpt in exp.checkpoints():
        runtime = load_runtime(exp, ckpt)
        returns = []
        for seed in range(EVAL_SEED, EVAL_SEED + episodes):
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                action = runtime.get_action(np.asarray(obs, np.float32)[None])[0][0]
                obs, reward, terminated, truncated, _ = env.step(
                    int(action) if action.dtype.kind == "i" else action)
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
        assert float(np.mean(returns)) == ckpt.evaluation_score, (name, ckpt.step)
    env.close()


def test_training_api_refuses_mismatches_clearly(tmp_path: Path) -> None:
    from agents_widget.agilerl_training import (
        create_agent,
        train_off_policy,
        train_on_policy,
    )
    from agents_widget.tracking import start_experiment

    writer = start_experiment("t", project_type="classic", algorithm="TD3",
                              framework="agilerl", root=tmp_path)
    with pytest.raises(ValueError, match="RainbowDQN"):
        create_agent("SAC", "Pendulum-v1")
    td3 = create_agent("TD3", "Pendulum-v1", num_envs=1)
    with pytest.raises(ValueError, match="vect_noise_dim=2"):
        train_off_policy(td3, writer, env_id="Pendulum-v1", total_steps=10,
                         checkpoint_every=5, num_envs=2)
    with pytest.raises(TypeError, match="train_off_policy"):
        train_on_policy(td3, writer, env_id="Pendulum-v1", total_steps=10, checkpoint_every=5)
    ppo = create_agent("PPO", "CartPole-v1", share_encoders=False, learn_step=8)
    with pytest.raises(TypeError, match="train_on_policy"):
        train_off_policy(ppo, writer, env_id="CartPole-v1", total_steps=10, checkpoint_every=5)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_on_policy(ppo, writer, env_id="CartPole-v1", total_steps=10, checkpoint_every=0)
    # Nothing was saved by the refused runs.
    assert ExperimentStore(tmp_path).get("t").checkpoints() == []
