"""Train a single-agent AgileRL algorithm on a gymnasium environment, logging to the workbench.

Every ``checkpoint_every`` environment steps the agent is saved with its own
``save_checkpoint`` into the experiment (see :mod:`agents_widget.tracking`) and two scores
are logged:

``training_score``
    mean return of the last ``score_window`` training episodes (exploration on);
``evaluation_score``
    mean return of ``eval_episodes`` greedy episodes on environments seeded
    ``eval_seed, eval_seed + 1, ...``, acting exactly as the workbench serves the checkpoint
    (:class:`server_extension.serving.runtimes.agilerl.GreedyPolicy`), so the best-scoring
    checkpoint is the one that plays best once deployed.

Off-policy algorithms (DQN, RainbowDQN, DDPG, TD3) learn from a replay buffer; PPO learns
from rollouts collected with AgileRL's own ``collect_rollouts``. Example::

    env_id = "CartPole-v1"
    agent = create_agent("DQN", env_id, lr=1e-3, batch_size=64)
    run = start_experiment("my-dqn", project_type="classic", algorithm="DQN",
                           framework="agilerl", environment=env_id)
    result = train(agent, run, env_id=env_id, total_steps=20_000, checkpoint_every=2_000,
                   progress=print)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench_core.store import ExperimentWriter
from workbench_core.tracking import save_checkpoint

if TYPE_CHECKING:
    import gymnasium as gym

    from server_extension.serving.runtimes.agilerl import GreedyPolicy

ProgressFn = Callable[[str], None]

OFF_POLICY: tuple[str, ...] = ("DQN", "RainbowDQN", "DDPG", "TD3")
ON_POLICY: tuple[str, ...] = ("PPO",)
EVAL_SEED = 1000

__all__ = [
    "EVAL_SEED",
    "OFF_POLICY",
    "ON_POLICY",
    "TrainingResult",
    "create_agent",
    "evaluate",
    "make_vector_env",
    "train",
    "train_off_policy",
    "train_on_policy",
]


@dataclass
class TrainingResult:
    """What a training run logged: one entry per checkpoint, in step order."""

    steps: list[int] = field(default_factory=list)
    training_scores: list[float | None] = field(default_factory=list)
    evaluation_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best_step(self) -> int:
        """The checkpoint step with the highest evaluation score (ties: the later one)."""
        if not self.steps:
            raise ValueError("No checkpoint was saved; train for at least checkpoint_every steps.")
        best = max(range(len(self.steps)), key=lambda i: (self.evaluation_scores[i], i))
        return self.steps[best]

    @property
    def best_evaluation(self) -> float:
        """The highest evaluation score logged."""
        return self.evaluation_scores[self.steps.index(self.best_step)]


def _algorithm_name(agent: Any) -> str:
    name = type(agent).__name__
    if name not in OFF_POLICY + ON_POLICY:
        raise TypeError(
            f"{name} is not supported here; pass an AgileRL {', '.join(OFF_POLICY + ON_POLICY)} "
            "agent (single-agent, non-recurrent)."
        )
    return name


def make_vector_env(
    env_id: str, *, num_envs: int = 1, env_kwargs: dict[str, Any] | None = None
) -> gym.vector.SyncVectorEnv:
    """``num_envs`` copies of ``gym.make(env_id, **env_kwargs)`` stepped in this process.

    Episodes reset in the same step that ends them; the last observation of the finished
    episode is in ``info["final_obs"]``, so replay transitions stay correct.
    """
    import gymnasium as gym

    kwargs = dict(env_kwargs or {})
    return gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, **kwargs) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def create_agent(
    algorithm: str,
    env_id: str,
    *,
    env_kwargs: dict[str, Any] | None = None,
    net_config: dict[str, Any] | None = None,
    num_envs: int = 1,
    seed: int | None = None,
    device: str = "cpu",
    **hyperparameters: Any,
) -> Any:
    """A fresh AgileRL ``algorithm`` agent sized for ``env_id``'s spaces.

    ``algorithm`` is an AgileRL class name: DQN, RainbowDQN, PPO, DDPG or TD3.
    ``hyperparameters`` go to the algorithm's constructor unchanged (``lr``, ``batch_size``,
    ``learn_step``...). ``seed`` reseeds torch's global generator first, so the initial
    weights are reproducible. ``num_envs`` must match the training run's: PPO sizes its
    rollout buffer by it, DDPG and TD3 keep one exploration-noise row per environment.
    """
    import gymnasium as gym
    import torch

    from server_extension.serving.runtimes.agilerl import (
        RuntimeLoadError,
        algorithm_class_name,
        algorithm_classes,
    )

    try:
        name = algorithm_class_name(algorithm)
    except RuntimeLoadError:
        raise ValueError(
            f"create_agent builds {', '.join(OFF_POLICY + ON_POLICY)} agents, not "
            f"{algorithm!r}; build other AgileRL agents yourself and pass them to train()."
        ) from None
    cls = algorithm_classes()[name]
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if name in ON_POLICY:
        hyperparameters.setdefault("num_envs", num_envs)
    elif name in ("DDPG", "TD3"):
        # One exploration-noise row per environment, so each resets when its episode ends.
        hyperparameters.setdefault("vect_noise_dim", num_envs)
    if seed is not None:
        torch.manual_seed(seed)
    return cls(observation_space, action_space, net_config=net_config, device=device,
               **hyperparameters)


def evaluate(
    agent: Any,
    env_id: str,
    *,
    episodes: int = 5,
    seed: int = EVAL_SEED,
    env_kwargs: dict[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> float:
    """Mean return of ``episodes`` greedy episodes, env seeds ``seed, seed + 1, ...``.

    Acts as the workbench serves the agent (deterministic, no exploration noise); the
    agent's networks are put in eval mode for the episodes and restored afterwards.
    """
    from server_extension.serving.runtimes.agilerl import GreedyPolicy

    _algorithm_name(agent)
    networks = agent.evolvable_attributes(networks_only=True)
    modes = {name: net.training for name, net in networks.items()}
    for net in networks.values():
        net.eval()
    try:
        return _greedy_returns(GreedyPolicy(agent), env_id, episodes=episodes, seed=seed,
                               env_kwargs=env_kwargs, max_episode_steps=max_episode_steps)
    finally:
        for name, net in networks.items():
            net.train(modes[name])


def _greedy_returns(
    policy: GreedyPolicy,
    env_id: str,
    *,
    episodes: int,
    seed: int,
    env_kwargs: dict[str, Any] | None,
    max_episode_steps: int | None,
) -> float:
    import gymnasium as gym

    returns = []
    env = gym.make(env_id, **(env_kwargs or {}))
    try:
        for episode in range(episodes):
            obs, info = env.reset(seed=seed + episode)
            total, steps, done = 0.0, 0, False
            while not done:
                mask = info.get("action_mask")
                action = policy(np.asarray(obs)[None], None if mask is None else mask[None])[0]
                obs, reward, terminated, truncated, info = env.step(
                    int(action) if policy.discrete else action
                )
                total += float(reward)
                steps += 1
                done = bool(terminated or truncated) or (
                    max_episode_steps is not None and steps >= max_episode_steps
                )
            returns.append(total)
    finally:
        env.close()
    return float(np.mean(returns))


class _Checkpointer:
    """Saves, evaluates and logs at each checkpoint; reports progress."""

    def __init__(
        self,
        agent: Any,
        writer: ExperimentWriter,
        *,
        env_id: str,
        env_kwargs: dict[str, Any] | None,
        checkpoint_every: int,
        eval_episodes: int,
        eval_seed: int,
        score_window: int,
        progress: ProgressFn | None,
        settings: dict[str, Any],
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1 environment step.")
        if not isinstance(env_id, str) or not env_id:
            raise ValueError("env_id must be a gymnasium environment id such as 'CartPole-v1'.")
        if eval_episodes < 1:
            raise ValueError("eval_episodes must be at least 1.")
        self.agent = agent
        self.writer = writer
        self.env_id = env_id
        self.env_kwargs = env_kwargs
        self.every = checkpoint_every
        self.eval_episodes = eval_episodes
        self.eval_seed = eval_seed
        self.recent: deque[float] = deque(maxlen=max(1, score_window))
        self.say = progress or (lambda _msg: None)
        self.result = TrainingResult()
        self.started = time.perf_counter()
        self.next_at = checkpoint_every
        self.last_saved = -1
        # AgileRL's own bookkeeping (agent.steps, agent.scores) follows its training loops:
        # one block per checkpoint interval, so a saved agent knows how far it trained.
        self.unreported: list[float] = []
        self.reported_steps = 0
        agent.init_training_step()
        # Recorded before training starts, so a run that stops early still says what its
        # scores mean.
        last_seed = eval_seed + eval_episodes - 1
        writer.update_info(extra={
            **writer.info.extra,
            "env_id": env_id,
            "env_kwargs": dict(env_kwargs or {}),
            "training": settings,
            "training_score": (f"mean return of the last {self.recent.maxlen} training "
                               "episodes (with exploration)"),
            "evaluation_score": (f"mean greedy return over {eval_episodes} episodes, "
                                 f"env seeds {eval_seed} to {last_seed}"),
        })

    def episode_done(self, score: float) -> None:
        self.recent.append(float(score))
        self.unreported.append(float(score))

    def maybe_save(self, steps: int, *, final: bool = False) -> None:
        if steps >= self.next_at or (final and steps != self.last_saved):
            self.save(steps)
            while self.next_at <= steps:
                self.next_at += self.every

    def save(self, steps: int) -> None:
        self.agent.add_scores(self.unreported)
        self.agent.finalize_training_step(steps - self.reported_steps)
        self.unreported, self.reported_steps = [], steps
        training = float(np.mean(self.recent)) if self.recent else None
        evaluation = evaluate(self.agent, self.env_id, episodes=self.eval_episodes,
                              seed=self.eval_seed, env_kwargs=self.env_kwargs)
        save_checkpoint(self.writer, steps, self.agent.save_checkpoint,
                        training_score=training, evaluation_score=evaluation)
        # Its numpy form beside it, so a fresh server serves it without importing torch.
        from server_extension.serving.runtimes.numpy_export import export_saved

        export_saved(self.writer, steps)
        self.last_saved = steps
        self.agent.init_training_step()
        self.result.steps.append(steps)
        self.result.training_scores.append(training)
        self.result.evaluation_scores.append(evaluation)
        self.result.seconds = time.perf_counter() - self.started
        shown = "n/a" if training is None else f"{training:.1f}"
        self.say(f"{self.writer.info.name} step {steps}: training score {shown}, "
                 f"evaluation score {evaluation:.1f} ({self.result.seconds:.0f} s)")

    def finish(self) -> TrainingResult:
        self.result.seconds = time.perf_counter() - self.started
        self.writer.update_info(extra={**self.writer.info.extra,
                                       "train_seconds": round(self.result.seconds, 2)})
        return self.result


def _seed_everything(seed: int | None) -> None:
    # AgileRL draws exploration from torch (epsilon-greedy, sampling) and numpy (DDPG/TD3
    # noise) global generators, so both are reseeded for a reproducible run.
    if seed is None:
        return
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)


def _explore(
    agent: Any, obs: np.ndarray, info: dict[str, Any], *, epsilon: float,
    random_warmup: bool, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The exploring action to store in the buffer, and the one to send to the environment."""
    import torch
    from agilerl.networks.actors import DeterministicActor

    name = type(agent).__name__
    mask = info.get("action_mask")
    if name == "DQN":
        action = agent.get_action(obs, epsilon=epsilon, action_mask=mask)
        return action, action
    if name == "RainbowDQN":
        action = agent.get_action(obs, action_mask=mask)
        return action, action
    if random_warmup:
        action = rng.uniform(-1.0, 1.0, (len(obs), agent.action_dim)).astype(np.float32)
    else:
        action = agent.get_action(obs)
    # DDPG/TD3 networks act in [-1, 1]; the environment wants its own bounds.
    env_action = DeterministicActor.rescale_action(
        action=torch.as_tensor(action, dtype=torch.float32),
        low=agent.action_low, high=agent.action_high,
        output_activation=agent.actor.output_activation,
    ).numpy()
    return action, env_action


def _transition(
    obs: np.ndarray, action: np.ndarray, *, reward: np.ndarray, next_obs: np.ndarray,
    terminated: np.ndarray, ended: np.ndarray, info: dict[str, Any],
) -> Any:
    """One vector step as the replay buffer stores it."""
    import torch
    from tensordict import TensorDict

    stored_next = np.array(next_obs, copy=True)
    for i in np.flatnonzero(ended):
        # Same-step autoreset: next_obs already starts the new episode; the finished
        # episode's last observation is in final_obs.
        stored_next[i] = info["final_obs"][i]
    return TensorDict({
        "obs": torch.as_tensor(np.asarray(obs), dtype=torch.float32),
        "action": torch.as_tensor(np.asarray(action)),
        "reward": torch.as_tensor(np.asarray(reward), dtype=torch.float32),
        "next_obs": torch.as_tensor(stored_next, dtype=torch.float32),
        # Truncation is not a terminal state: the learner still bootstraps there.
        "done": torch.as_tensor(np.asarray(terminated), dtype=torch.float32),
    }, batch_size=[len(obs)])


def train_off_policy(
    agent: Any,
    writer: ExperimentWriter,
    *,
    env_id: str,
    total_steps: int,
    checkpoint_every: int,
    num_envs: int = 1,
    env_kwargs: dict[str, Any] | None = None,
    memory_size: int = 100_000,
    learning_starts: int = 1_000,
    epsilon_start: float = 1.0,
    epsilon_end: float = 0.05,
    exploration_steps: int = 10_000,
    eval_episodes: int = 5,
    eval_seed: int = EVAL_SEED,
    score_window: int = 20,
    seed: int | None = 0,
    progress: ProgressFn | None = None,
) -> TrainingResult:
    """Train a DQN, RainbowDQN, DDPG or TD3 agent for ``total_steps`` environment steps.

    The agent learns ``agent.batch_size`` samples every ``agent.learn_step`` steps once
    ``learning_starts`` steps are in the replay buffer. DQN explores epsilon-greedily
    (linear from ``epsilon_start`` to ``epsilon_end`` over ``exploration_steps``),
    RainbowDQN with its noisy layers, DDPG/TD3 with the agent's action noise after
    ``learning_starts`` uniformly random steps. ``seed`` reseeds torch, numpy and the
    environments (``None`` leaves them alone).
    """
    from agilerl.components import ReplayBuffer

    name = _algorithm_name(agent)
    if name not in OFF_POLICY:
        raise TypeError(f"{name} learns on-policy; use train_on_policy (or train).")
    if num_envs < 1 or total_steps < 1:
        raise ValueError("num_envs and total_steps must both be at least 1.")
    box = name in ("DDPG", "TD3")
    if box and int(getattr(agent, "vect_noise_dim", num_envs)) != num_envs:
        raise ValueError(
            f"This {name} agent keeps exploration noise for {agent.vect_noise_dim} "
            f"environment(s) but num_envs={num_envs}; build it with vect_noise_dim={num_envs} "
            f"(create_agent(..., num_envs={num_envs}) does that)."
        )
    settings = {
        "algorithm": name, "total_steps": total_steps, "checkpoint_every": checkpoint_every,
        "num_envs": num_envs, "memory_size": memory_size, "learning_starts": learning_starts,
        "epsilon_start": epsilon_start, "epsilon_end": epsilon_end,
        "exploration_steps": exploration_steps, "eval_episodes": eval_episodes,
        "eval_seed": eval_seed, "seed": seed,
    }
    tracker = _Checkpointer(agent, writer, env_id=env_id, env_kwargs=env_kwargs,
                            checkpoint_every=checkpoint_every, eval_episodes=eval_episodes,
                            eval_seed=eval_seed, score_window=score_window, progress=progress,
                            settings=settings)
    _seed_everything(seed)
    env = make_vector_env(env_id, num_envs=num_envs, env_kwargs=env_kwargs)
    rng = np.random.default_rng(seed)
    memory = ReplayBuffer(max_size=memory_size)
    learn_every = max(1, agent.learn_step // num_envs)
    learns_per_step = max(1, num_envs // agent.learn_step)
    scores = np.zeros(num_envs)
    steps, vector_step, epsilon = 0, 0, epsilon_start
    agent.set_training_mode(True)
    try:
        obs, info = env.reset(seed=seed)
        while steps < total_steps:
            if name == "DQN":
                fraction = min(1.0, steps / max(1, exploration_steps))
                epsilon = epsilon_start + fraction * (epsilon_end - epsilon_start)
            random_warmup = box and steps < learning_starts
            action, env_action = _explore(agent, obs, info, epsilon=epsilon,
                                          random_warmup=random_warmup, rng=rng)
            next_obs, reward, terminated, truncated, info = env.step(env_action)
            ended = np.logical_or(terminated, truncated)
            memory.add(_transition(obs, action, reward=reward, next_obs=next_obs,
                                   terminated=terminated, ended=ended, info=info))
            scores += reward
            for i in np.flatnonzero(ended):
                tracker.episode_done(scores[i])
                scores[i] = 0.0
            if box and ended.any():
                agent.reset_action_noise(np.flatnonzero(ended).tolist())
            obs = next_obs
            steps += num_envs
            vector_step += 1
            if (steps >= learning_starts and len(memory) >= agent.batch_size
                    and vector_step % learn_every == 0):
                for _ in range(learns_per_step):
                    agent.learn(memory.sample(agent.batch_size))
            tracker.maybe_save(steps)
        tracker.maybe_save(steps, final=True)
    finally:
        env.close()
    return tracker.finish()


def train_on_policy(
    agent: Any,
    writer: ExperimentWriter,
    *,
    env_id: str,
    total_steps: int,
    checkpoint_every: int,
    env_kwargs: dict[str, Any] | None = None,
    eval_episodes: int = 5,
    eval_seed: int = EVAL_SEED,
    score_window: int = 20,
    seed: int | None = 0,
    progress: ProgressFn | None = None,
) -> TrainingResult:
    """Train a PPO agent for ``total_steps`` environment steps.

    Each iteration collects ``agent.learn_step`` steps across ``agent.num_envs``
    environments with AgileRL's ``collect_rollouts`` and learns from them; a checkpoint is
    saved after the first iteration that reaches each multiple of ``checkpoint_every``.
    ``seed`` reseeds torch, numpy and the environments (``None`` leaves them alone).
    """
    from agilerl.rollouts.on_policy import collect_rollouts

    name = _algorithm_name(agent)
    if name not in ON_POLICY:
        raise TypeError(f"{name} learns off-policy; use train_off_policy (or train).")
    if getattr(agent, "recurrent", False):
        raise TypeError(
            "Recurrent PPO is not supported here; build the agent with recurrent=False."
        )
    if total_steps < 1:
        raise ValueError("total_steps must be at least 1.")
    num_envs = int(agent.num_envs)
    settings = {
        "algorithm": name, "total_steps": total_steps, "checkpoint_every": checkpoint_every,
        "num_envs": num_envs, "eval_episodes": eval_episodes, "eval_seed": eval_seed, "seed": seed,
    }
    tracker = _Checkpointer(agent, writer, env_id=env_id, env_kwargs=env_kwargs,
                            checkpoint_every=checkpoint_every, eval_episodes=eval_episodes,
                            eval_seed=eval_seed, score_window=score_window, progress=progress,
                            settings=settings)
    _seed_everything(seed)
    env = make_vector_env(env_id, num_envs=num_envs, env_kwargs=env_kwargs)
    n_steps = -(agent.learn_step // -num_envs)
    steps = 0
    agent.set_training_mode(True)
    try:
        env.reset(seed=seed)
        last: dict[str, Any] = {}
        while steps < total_steps:
            episode_scores, *state = collect_rollouts(agent, env, n_steps=n_steps, **last)
            last = dict(zip(("last_obs", "last_done", "last_scores", "last_info"), state,
                            strict=True))
            agent.learn()
            steps += n_steps * num_envs
            for score in episode_scores:
                tracker.episode_done(score)
            tracker.maybe_save(steps)
        tracker.maybe_save(steps, final=True)
    finally:
        env.close()
    return tracker.finish()


def train(agent: Any, writer: ExperimentWriter, **settings: Any) -> TrainingResult:
    """:func:`train_off_policy` or :func:`train_on_policy`, whichever fits ``agent``."""
    if _algorithm_name(agent) in ON_POLICY:
        return train_on_policy(agent, writer, **settings)
    return train_off_policy(agent, writer, **settings)
