"""Train the Classic RL demo agents with AgileRL into a workspace.

:func:`build_demo` writes experiments (framework ``"agilerl"``, project type ``"classic"``)
whose checkpoints are ``step_<N>.pt`` files saved by the agent's own ``save_checkpoint``.
``experiment.json`` names the AgileRL class under ``algorithm`` and the gymnasium id under
``environment``; ``extra`` records the hyperparameters, the training settings and what the
scores mean (see :mod:`server_extension.training.agilerl`): ``evaluation_score`` is the mean
greedy return over 5 seeded episodes, acting exactly as the workbench serves the agent.

Full mode trains the single-agent runs of the main job's workspace (which
:mod:`server_extension.demos.plan` schedules, one process per run):

``cartpole-dqn``      DQN on CartPole-v1; its best checkpoint balances the pole (a mean
                      greedy return of at least 195, checked by loading it back and playing).
``cartpole-rainbow``  Rainbow DQN on CartPole-v1.
``cartpole-ppo``      PPO on CartPole-v1.
``pendulum-ddpg``     DDPG on Pendulum-v1 (continuous actions).
``pendulum-td3``      TD3 on Pendulum-v1.

Each best checkpoint is loaded back, played on 20 fresh seeds and compared with uniformly
random actions on the same seeds (``extra["vs_random"]``).

Quick mode (seconds, for tests) trains tiny runs of all five supported families:
``cartpole-dqn``, ``cartpole-rainbow``, ``cartpole-ppo``, ``pendulum-ddpg``, ``pendulum-td3``.
Their scores mean little, but every checkpoint is a real AgileRL save.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench_core.store import ExperimentStore

CARTPOLE = "CartPole-v1"
PENDULUM = "Pendulum-v1"
CARTPOLE_BAR = 195.0
VERIFY_EPISODES = 20


@dataclass(frozen=True)
class DemoRun:
    """One demo experiment: the agent to build and how to train it."""

    name: str
    algorithm: str
    env_id: str
    description: str
    hyperparameters: dict[str, Any]
    net_config: dict[str, Any]
    training: dict[str, Any]
    seed: int = 0


def _mlp(hidden: list[int], head: list[int], *, layer_norm: bool = True) -> dict[str, Any]:
    # Only ever switched off: TD3 warns when asked for layer norm in its encoder.
    extra = {} if layer_norm else {"layer_norm": False}
    return {"encoder_config": {"hidden_size": hidden, **extra},
            "head_config": {"hidden_size": head, **extra}}


# Tuned on this machine class (2 CPU cores). DQN: a wide network, a fast-moving target
# network (tau 0.1), a high learning rate and one update per two steps reach a greedy return
# of 500 within 6k-24k steps on every seed tried; slower targets (tau 0.005) plateaued
# near 200 with the cart drifting off the track. TD3 reaches about -150 by 10k steps.
# Layer norm is off: on these tiny inputs it only slowed learning.
FULL_RUNS: tuple[DemoRun, ...] = (
    DemoRun(
        name="cartpole-dqn", algorithm="DQN", env_id=CARTPOLE,
        description="DQN balancing a pole on a cart (discrete actions: push left or right).",
        hyperparameters={"lr": 2.3e-3, "batch_size": 64, "learn_step": 2, "gamma": 0.99,
                         "tau": 0.1, "double": True},
        net_config=_mlp([256], [256], layer_norm=False),
        training={"total_steps": 30_000, "checkpoint_every": 3_000, "num_envs": 4,
                  "learning_starts": 1_000, "exploration_steps": 5_000, "epsilon_end": 0.04,
                  "memory_size": 100_000, "eval_episodes": 5},
    ),
    DemoRun(
        name="pendulum-td3", algorithm="TD3", env_id=PENDULUM,
        description="TD3 swinging a pendulum upright (continuous torque in [-2, 2]).",
        hyperparameters={"lr_actor": 3e-4, "lr_critic": 1e-3, "batch_size": 128,
                         "learn_step": 1, "gamma": 0.98, "tau": 0.005, "policy_freq": 2,
                         "O_U_noise": False, "expl_noise": 0.1},
        net_config=_mlp([64], [64], layer_norm=False),
        training={"total_steps": 10_000, "checkpoint_every": 1_250, "num_envs": 2,
                  "learning_starts": 1_000, "memory_size": 50_000, "eval_episodes": 5},
    ),
)

# The other single-agent families of the main job's workspace, on small budgets: each only
# has to beat a random policy clearly (recorded in extra["vs_random"]), not to solve its task.
MORE_RUNS: tuple[DemoRun, ...] = (
    DemoRun(
        name="cartpole-rainbow", algorithm="RainbowDQN", env_id=CARTPOLE,
        description="Rainbow DQN (distributional, noisy nets, n-step, prioritised replay) "
                    "balancing a pole on a cart.",
        hyperparameters={"lr": 1e-3, "batch_size": 64, "learn_step": 2, "gamma": 0.99,
                         "tau": 0.05, "num_atoms": 51, "v_min": 0.0, "v_max": 500.0},
        net_config=_mlp([128], [128], layer_norm=False),
        training={"total_steps": 8_000, "checkpoint_every": 2_000, "num_envs": 4,
                  "learning_starts": 1_000, "memory_size": 50_000, "eval_episodes": 5},
    ),
    DemoRun(
        name="cartpole-ppo", algorithm="PPO", env_id=CARTPOLE,
        description="PPO (on-policy, clipped updates) balancing a pole on a cart.",
        hyperparameters={"lr": 1e-3, "batch_size": 128, "learn_step": 1024, "update_epochs": 4,
                         "gamma": 0.99, "gae_lambda": 0.95, "ent_coef": 0.0,
                         "share_encoders": False},
        net_config=_mlp([64], [64], layer_norm=False),
        training={"total_steps": 16_384, "checkpoint_every": 4_096, "num_envs": 8,
                  "eval_episodes": 5},
    ),
    DemoRun(
        name="pendulum-ddpg", algorithm="DDPG", env_id=PENDULUM,
        description="DDPG swinging a pendulum upright (continuous torque in [-2, 2]).",
        hyperparameters={"lr_actor": 3e-4, "lr_critic": 1e-3, "batch_size": 128,
                         "learn_step": 1, "gamma": 0.98, "tau": 0.005, "O_U_noise": False,
                         "expl_noise": 0.1},
        net_config=_mlp([64], [64], layer_norm=False),
        training={"total_steps": 8_000, "checkpoint_every": 1_000, "num_envs": 2,
                  "learning_starts": 1_000, "memory_size": 50_000, "eval_episodes": 5},
    ),
)

_QUICK_OFF_POLICY = {"total_steps": 400, "checkpoint_every": 200, "num_envs": 1,
                     "learning_starts": 100, "exploration_steps": 300, "memory_size": 1_000,
                     "eval_episodes": 2}

QUICK_RUNS: tuple[DemoRun, ...] = (
    DemoRun(
        name="cartpole-dqn", algorithm="DQN", env_id=CARTPOLE,
        description="DQN on CartPole-v1 (quick test run).",
        hyperparameters={"lr": 1e-3, "batch_size": 32, "learn_step": 4},
        net_config=_mlp([32], [32]),
        # Three checkpoints whose best (by evaluation) is neither the first nor the last
        # (with these seeds), so tests can tell "best", "final" and a specific step apart.
        training={**_QUICK_OFF_POLICY, "total_steps": 600},
    ),
    DemoRun(
        name="cartpole-rainbow", algorithm="RainbowDQN", env_id=CARTPOLE,
        description="Rainbow DQN on CartPole-v1 (quick test run).",
        hyperparameters={"lr": 1e-3, "batch_size": 32, "learn_step": 4, "num_atoms": 21,
                         "v_min": 0.0, "v_max": 200.0},
        net_config=_mlp([32], [32]), training=dict(_QUICK_OFF_POLICY),
    ),
    DemoRun(
        name="cartpole-ppo", algorithm="PPO", env_id=CARTPOLE,
        description="PPO on CartPole-v1 (quick test run).",
        # Separate encoders: sharing one makes tensordict warn about parameter replacement.
        hyperparameters={"lr": 1e-3, "batch_size": 64, "learn_step": 128, "update_epochs": 2,
                         "share_encoders": False},
        net_config=_mlp([32], [32]),
        training={"total_steps": 256, "checkpoint_every": 128, "eval_episodes": 2},
    ),
    DemoRun(
        name="pendulum-ddpg", algorithm="DDPG", env_id=PENDULUM,
        description="DDPG on Pendulum-v1 (quick test run).",
        hyperparameters={"lr_actor": 1e-3, "lr_critic": 1e-3, "batch_size": 32,
                         "learn_step": 4},
        net_config=_mlp([32], [32]),
        training={**_QUICK_OFF_POLICY, "eval_episodes": 1},
    ),
    DemoRun(
        name="pendulum-td3", algorithm="TD3", env_id=PENDULUM,
        description="TD3 on Pendulum-v1 (quick test run).",
        hyperparameters={"lr_actor": 1e-3, "lr_critic": 1e-3, "batch_size": 32,
                         "learn_step": 4},
        net_config=_mlp([32], [32]),
        training={**_QUICK_OFF_POLICY, "eval_episodes": 1},
    ),
)


@contextmanager
def isolated_torch() -> Iterator[None]:
    """One torch thread (tiny networks: threads only add overhead) and the caller's random
    state (torch and numpy) restored afterwards, so building the demo leaves no trace."""
    import torch

    threads = torch.get_num_threads()
    numpy_state = np.random.get_state()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(numpy_state)


def train_run(root: Path, run: DemoRun, *, quick: bool, say: Callable[[str], None]) -> None:
    """Train one demo run into ``<root>/experiments/<run.name>`` (replacing it)."""
    from server_extension.training.agilerl import create_agent, train
    from workbench_core.tracking import start_experiment

    writer = start_experiment(
        run.name, project_type="classic", algorithm=run.algorithm, framework="agilerl",
        environment=run.env_id, root=root, overwrite=True,
        extra={"description": run.description, "hyperparameters": run.hyperparameters,
               "net_config": run.net_config, "quick": quick},
    )
    settings = dict(run.training)
    agent = create_agent(run.algorithm, run.env_id, seed=run.seed,
                         net_config=_copy(run.net_config), num_envs=settings.get("num_envs", 1),
                         **run.hyperparameters)
    if run.algorithm == "PPO":
        settings.pop("num_envs", None)  # PPO takes it from the agent
    result = train(agent, writer, env_id=run.env_id, seed=run.seed, progress=say, **settings)
    say(f"{run.name}: {len(result.steps)} checkpoints in {result.seconds:.1f} s; best "
        f"evaluation score {result.best_evaluation:.1f} at step {result.best_step}")


def _copy(config: dict[str, Any]) -> dict[str, Any]:
    # AgileRL edits net_config in place (it fills in defaults), so each agent gets its own.
    import copy

    return copy.deepcopy(config)


def _play(runtime: Any, env_id: str, seeds: range) -> list[float]:
    """Greedy returns of a deployed runtime, one episode per seed."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            total, done = 0.0, False
            while not done:
                action, _ = runtime.get_action(np.asarray(obs, np.float32)[None])
                step_action = int(action[0]) if action.dtype.kind == "i" else action[0]
                obs, reward, terminated, truncated, _ = env.step(step_action)
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
    finally:
        env.close()
    return returns


def verify_best(root: Path, name: str) -> dict[str, Any]:
    """Load ``name``'s best checkpoint as the server would and play it.

    Returns (and records under ``extra["verification"]``) the mean greedy return on the
    evaluation seeds (the logged evaluation score, recomputed) and on 20 fresh seeds, and
    under ``extra["vs_random"]`` the same 20 seeds played by uniformly random actions.
    """
    from server_extension.serving.runtimes import load_runtime
    from server_extension.training.agilerl import EVAL_SEED
    from workbench_core.environments import env_spec
    from workbench_core.episodes import play_episode
    from workbench_core.tracking import resume_experiment

    experiment = ExperimentStore(root).get(name)
    best = experiment.checkpoint(experiment.best_step())
    runtime = load_runtime(experiment, best)
    try:
        runtime.probe()
        episodes = int(experiment.info.extra.get("training", {}).get("eval_episodes", 5))
        on_eval_seeds = _play(runtime, experiment.info.environment or "",
                              range(EVAL_SEED, EVAL_SEED + episodes))
        fresh = _play(runtime, experiment.info.environment or "", range(VERIFY_EPISODES))
    finally:
        runtime.close()
    spec = env_spec(experiment.info.environment, experiment.info.extra)
    random_returns = [play_episode(spec, None, seed=seed).total for seed in range(VERIFY_EPISODES)]
    report = {
        "step": best.step,
        "evaluation_seeds_mean": round(float(np.mean(on_eval_seeds)), 2),
        "fresh_seeds_mean": round(float(np.mean(fresh)), 2),
        "fresh_seeds_min": round(float(np.min(fresh)), 2),
        "fresh_episodes": VERIFY_EPISODES,
    }
    vs_random = {"step": best.step, "episodes": VERIFY_EPISODES,
                 "policy_mean_return": report["fresh_seeds_mean"],
                 "random_mean_return": round(float(np.mean(random_returns)), 2)}
    writer = resume_experiment(name, root=root)
    writer.update_info(extra={**writer.info.extra, "verification": report,
                              "vs_random": vs_random})
    return report


def build_demo(
    root: Path, *, quick: bool = False, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Train the single-agent demo runs into ``<root>/experiments`` (replacing them).

    Full mode trains DQN, Rainbow DQN, PPO, DDPG and TD3 (a few minutes on 2 CPU cores),
    each best checkpoint loaded back, played and compared with random actions
    (``extra["vs_random"]``); it warns through ``progress`` when CartPole's DQN averages
    below 195. ``quick`` takes seconds and trains the five families just enough to
    checkpoint twice. The main job's whole workspace (multi-agent, recurrent and Advanced
    Training too) is :mod:`server_extension.demos.plan`'s. The caller's torch thread count
    and random state are left as they were. Returns the experiment names.
    """
    say = progress or (lambda _msg: None)
    root = Path(root).expanduser()
    runs = QUICK_RUNS if quick else FULL_RUNS + MORE_RUNS
    started = time.perf_counter()
    with isolated_torch():
        for run in runs:
            say(f"training {run.name}: {run.algorithm} on {run.env_id}")
            train_run(root, run, quick=quick, say=say)
            if not quick:
                report = verify_best(root, run.name)
                say(f"{run.name}: best checkpoint (step {report['step']}) loaded back scores "
                    f"{report['evaluation_seeds_mean']:.1f} on the evaluation seeds and "
                    f"{report['fresh_seeds_mean']:.1f} over {VERIFY_EPISODES} fresh episodes")
                if run.name == "cartpole-dqn" and report["evaluation_seeds_mean"] < CARTPOLE_BAR:
                    say(f"warning: cartpole-dqn's best checkpoint averages "
                        f"{report['evaluation_seeds_mean']:.1f}, below {CARTPOLE_BAR:.0f}")
    say(f"demo built in {time.perf_counter() - started:.1f} s")
    return [run.name for run in runs]
