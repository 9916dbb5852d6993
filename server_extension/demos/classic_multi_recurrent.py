"""Train the multi-agent and recurrent Classic RL demos with AgileRL, and play their episodes.

:func:`build_classic_demo` writes experiments (framework ``"agilerl"``, project type
``"classic"``) whose checkpoints are AgileRL ``save_checkpoint`` files:

``tictactoe-ippo``          IPPO self-play on PettingZoo's tic-tac-toe. One policy plays both
                            sides (``player_1``, ``player_2`` share the network ``player``)
                            and only ever picks legal squares: the action mask matters.
``spread-maddpg``           MADDPG on mpe2's cooperative ``simple_spread_v3`` (2 agents,
                            continuous forces): cover both landmarks, avoid collisions.
``cartpole-memory-ppo``     recurrent PPO (an LSTM) on CartPole with the velocities hidden:
                            only positions are observed, so the policy must remember.
``speaker-listener-matd3``  MATD3 on mpe2's ``simple_speaker_listener_v4`` with discrete
                            actions (two different agents).

Every checkpoint is scored by loading it back exactly as the server does and playing
seeded episodes (``evaluation_score``); the best checkpoint's comparison against a
uniformly random policy on the same seeds is written to ``extra["vs_random"]``.

Full mode, measured on 2 shared CPU cores (about 2.5 minutes in all, each run seeded):

    tictactoe-ippo        28 s   wins 98.5% as first player, 81.5% as second
                                 (random play: 62% and 25.5%), 200 games a side
    spread-maddpg         61 s   mean return per agent -15.8 (random -20.2, standing
                                 still -19.3), 50 episodes; better on 84% of the seeds
    cartpole-memory-ppo   50 s   mean return 500 (the cap; random 21.3), 50 episodes
``extra["env"]`` records how to rebuild the environment
(:mod:`workbench_core.environments`); the same episode player
(:mod:`workbench_core.episodes`) scores the checkpoints here and plays them in the panel.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from workbench_core.environments import (
    MEMORY_ENV,
    env_spec,
    make_env,
    policy_observation,
    policy_observation_space,
)
from workbench_core.episodes import ActFn, play_episode, runtime_act
from workbench_core.store import ExperimentStore, ExperimentWriter

ProgressFn = Callable[[str], None]

TICTACTOE = "tictactoe-ippo"
SPREAD = "spread-maddpg"
MEMORY = "cartpole-memory-ppo"
SPEAKER_LISTENER = "speaker-listener-matd3"
EVAL_SEED = 1000


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Sizes of one training run (full or quick) and the seed it starts from."""

    steps: int
    checkpoint_every: int
    eval_episodes: int
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


# Recurrent PPO settings after the RL Zoo's CartPoleNoVel recipe (short rollouts from 8
# envs, many epochs, no entropy bonus): measured to reach the 500 cap from several seeds.
_MEMORY_SETTINGS: dict[str, Any] = {
    "num_envs": 8, "learn_step": 256, "batch_size": 8, "max_seq_len": 32, "lr": 1e-3,
    "gamma": 0.98, "gae_lambda": 0.8, "ent_coef": 0.0, "update_epochs": 20, "hidden": 64,
}
FULL_PLANS: dict[str, Plan] = {
    TICTACTOE: Plan(steps=24_000, checkpoint_every=4_000, eval_episodes=100,
                    settings={"learn_step": 1024, "batch_size": 128, "lr": 1e-3}),
    SPREAD: Plan(steps=16_000, checkpoint_every=4_000, eval_episodes=20,
                 settings={"batch_size": 128, "learn_step": 5, "learning_starts": 500,
                           "lr_actor": 1e-3, "lr_critic": 1e-3}),
    MEMORY: Plan(steps=32_768, checkpoint_every=4_096, eval_episodes=10,
                 settings=_MEMORY_SETTINGS),
    SPEAKER_LISTENER: Plan(steps=6_000, checkpoint_every=2_000, eval_episodes=20,
                           settings={"batch_size": 128, "learn_step": 5, "learning_starts": 500,
                                     "lr_actor": 1e-3, "lr_critic": 1e-3}),
}
QUICK_PLANS: dict[str, Plan] = {
    TICTACTOE: Plan(steps=128, checkpoint_every=64, eval_episodes=4,
                    settings={"learn_step": 64, "batch_size": 32, "lr": 1e-3}),
    SPREAD: Plan(steps=200, checkpoint_every=100, eval_episodes=1,
                 settings={"batch_size": 32, "learn_step": 5, "learning_starts": 64,
                           "lr_actor": 1e-3, "lr_critic": 1e-3}),
    SPEAKER_LISTENER: Plan(steps=200, checkpoint_every=100, eval_episodes=1,
                           settings={"batch_size": 32, "learn_step": 5, "learning_starts": 64,
                                     "lr_actor": 1e-3, "lr_critic": 1e-3}),
    MEMORY: Plan(steps=128, checkpoint_every=64, eval_episodes=2,
                 settings={**_MEMORY_SETTINGS, "num_envs": 2, "learn_step": 64,
                           "max_seq_len": 16, "update_epochs": 2, "hidden": 16}),
}
NET_CONFIG: dict[str, Any] = {
    "latent_dim": 64, "encoder_config": {"hidden_size": [64]}, "head_config": {"hidden_size": [64]},
}
QUICK_NET_CONFIG: dict[str, Any] = {
    "latent_dim": 16, "encoder_config": {"hidden_size": [16]}, "head_config": {"hidden_size": [16]},
}

# Third-party noise while training and loading, silenced only around our own calls.
_QUIET: tuple[tuple[Literal["ignore"], str, type[Warning]], ...] = (
    ("ignore", r"MakeEvolvable will be deprecated", DeprecationWarning),
    ("ignore", r"`torch\.jit\.script_method` is deprecated", DeprecationWarning),
    ("ignore", r"TensorDict\.to_module\(\)", FutureWarning),
    ("ignore", r"Batch size \d+ is larger than the number of sequences", UserWarning),
    ("ignore", r"Attribute \w+ not found in checkpoint", UserWarning),
)


@contextmanager
def _quiet_isolated_torch() -> Iterator[None]:
    """One torch thread, the caller's random state restored, and known warnings silenced."""
    import torch

    threads = torch.get_num_threads()
    numpy_state = np.random.get_state()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            for action, message, category in _QUIET:
                warnings.filterwarnings(action, message=message, category=category)
            yield
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(numpy_state)


def _net(quick: bool) -> dict[str, Any]:
    return copy.deepcopy(QUICK_NET_CONFIG if quick else NET_CONFIG)


def _load_runtime(root: Path, name: str, step: int) -> Any:
    """The runtime the server would build for ``name``'s checkpoint at ``step``."""
    from server_extension.serving.runtimes import load_runtime

    experiment = ExperimentStore(root).get(name)
    return load_runtime(experiment, experiment.checkpoint(step))


def _mean_returns(spec: Mapping[str, Any], act: ActFn | None, episodes: int) -> float:
    return float(np.mean([play_episode(spec, act, seed=EVAL_SEED + i).total
                          for i in range(episodes)]))


def _tictactoe_record(spec: Mapping[str, Any], act: ActFn | None, games: int
                      ) -> dict[str, dict[str, float]]:
    """Win/draw/loss rates of ``act`` (``None``: random) on each side against random play."""
    record = {}
    for side in ("player_1", "player_2"):
        wins = draws = 0
        for i in range(games):
            episode = play_episode(spec, act, seed=EVAL_SEED + i, opponent="random",
                                   agent_side=side)
            mine = episode.returns[side]
            wins += mine > 0
            draws += mine == 0
        record[side] = {"win": wins / games, "draw": draws / games,
                        "loss": (games - wins - draws) / games}
    return record


@dataclass(frozen=True)
class _Run:
    """What ``experiment.json`` says about one demo run."""

    name: str
    algorithm: str
    environment: str
    description: str
    scores: dict[str, str]
    multi_agent: bool = False
    recurrent: bool = False


def _start(root: Path, run: _Run, spec: dict[str, Any], plan: Plan,
           quick: bool) -> ExperimentWriter:
    from workbench_core.tracking import start_experiment

    return start_experiment(
        run.name, project_type="classic", algorithm=run.algorithm, framework="agilerl",
        environment=run.environment, root=root, overwrite=True, multi_agent=run.multi_agent,
        recurrent=run.recurrent,
        extra={"description": run.description, "env": spec, "quick": quick, "seed": plan.seed,
               "training": {"steps": plan.steps, "checkpoint_every": plan.checkpoint_every,
                            "eval_episodes": plan.eval_episodes, "eval_seed": EVAL_SEED,
                            **plan.settings},
               **run.scores},
    )


def _save(writer: ExperimentWriter, step: int, agent: Any, training: float | None,
          evaluate: Callable[[Any], float]) -> float:
    """Score the agent as the server would serve it, then save the checkpoint with its scores.

    The agent is saved to a hidden file first and loaded back through the workbench's
    loader, so the evaluation score is that of the checkpoint exactly as deployed.
    """
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import Checkpoint
    from workbench_core.tracking import save_checkpoint

    staged = writer.folder / f".staged_step_{step}.pt"
    agent.save_checkpoint(str(staged))
    try:
        experiment = ExperimentStore(writer.folder.parent.parent).get(writer.info.name)
        score = evaluate(load_runtime(experiment, Checkpoint(step, staged)))
        save_checkpoint(writer, step, staged.replace,
                        training_score=training, evaluation_score=score)
    finally:
        staged.unlink(missing_ok=True)
    from server_extension.serving.runtimes.numpy_export import export_saved

    export_saved(writer, step)  # the numpy form, where the policy has one (not recurrent)
    return score


def _record_vs_random(writer: ExperimentWriter, report: dict[str, Any]) -> dict[str, Any]:
    writer.update_info(extra={**writer.info.extra, "vs_random": report})
    return report


TICTACTOE_RUN = _Run(
    TICTACTOE, "IPPO", "tictactoe_v3",
    "IPPO self-play on tic-tac-toe: one policy for both players, legal moves only (the "
    "action mask is part of every request).",
    {"training_score": "player_1's mean self-play result (+1 win, -1 loss) since the last "
                       "checkpoint",
     "evaluation_score": "mean win rate against random moves, over both sides"},
    multi_agent=True,
)


class _SelfPlay:
    """Plays tic-tac-toe games of one shared IPPO policy against itself, sampling legal moves.

    Each player's moves form its own episode whose last move earns the result; the turns of
    both go into one stream for ``IPPO.learn``, keyed by one player id because both share
    the ``player`` network.
    """

    def __init__(self, agent: Any, spec: Mapping[str, Any]) -> None:
        self.agent, self.spec = agent, spec
        self.env = make_env(spec)
        self.ids = list(self.env.possible_agents)
        self.actor = agent.actors[agent.get_network_id(self.ids[0])]
        self.critic = agent.critics[agent.get_network_id(self.ids[0])]
        self.games = 0

    def _move(self, raw: Any, turns: list[tuple[np.ndarray, ...]]) -> int:
        import torch

        obs = policy_observation(self.spec, raw)[None]
        x = torch.as_tensor(obs)
        with torch.no_grad():
            logits = self.actor.head_net.wrapped(self.actor.extract_features(x))[0]
            legal = torch.as_tensor(np.asarray(raw["action_mask"]).astype(bool))
            choice = int(torch.distributions.Categorical(
                logits=logits.masked_fill(~legal, -1e9)).sample())
            # IPPO.learn re-scores actions without the mask, so store the unmasked
            # log-prob to keep the PPO ratio honest.
            log_prob = torch.log_softmax(logits, -1)[choice].reshape(1).numpy()
            value = self.critic(x).reshape(1).numpy()
        turns.append((obs, np.array([choice]), log_prob, value))
        return choice

    def game(self) -> tuple[dict[str, list[tuple[np.ndarray, ...]]], dict[str, float]]:
        """One game: every player's turns (obs, move, log-prob, value) and results."""
        self.env.reset(seed=self.games)
        self.games += 1
        turns: dict[str, list[tuple[np.ndarray, ...]]] = {a: [] for a in self.ids}
        result = dict.fromkeys(self.ids, 0.0)
        for agent_id in self.env.agent_iter():
            raw, reward, terminated, truncated, _ = self.env.last()
            result[agent_id] += float(reward)
            self.env.step(None if terminated or truncated else self._move(raw, turns[agent_id]))
        return turns, result

    def learn(self, min_moves: int) -> tuple[int, list[float]]:
        """Play until ``min_moves`` moves are collected, learn from them once."""
        columns: list[list[np.ndarray]] = [[] for _ in range(6)]
        first_player = []
        while len(columns[0]) < min_moves:
            turns, result = self.game()
            first_player.append(result[self.ids[0]])
            for agent_id in self.ids:
                for k, (obs, action, log_prob, value) in enumerate(turns[agent_id]):
                    last = k == len(turns[agent_id]) - 1
                    earned = np.array([result[agent_id] if last else 0.0], np.float32)
                    first = np.array([1.0 if k == 0 else 0.0], np.float32)
                    for column, item in zip(columns, (obs, action, log_prob, value, earned,
                                                      first), strict=True):
                        column.append(item)
        states, actions, log_probs, values, rewards, starts = columns
        key = self.ids[0]
        self.agent.learn(({key: states}, {key: actions}, {key: log_probs}, {key: rewards},
                          {key: starts}, {key: values}, {key: states[-1]}, {key: np.ones(1)}))
        return len(states), first_player


def train_tictactoe(root: Path, plan: Plan, quick: bool, say: ProgressFn) -> dict[str, Any]:
    """IPPO self-play on tic-tac-toe; one shared policy, legal moves only."""
    from agilerl.algorithms import IPPO
    from gymnasium import spaces

    spec = env_spec("tictactoe_v3")
    probe = make_env(spec)
    ids = list(probe.possible_agents)
    agent = IPPO(
        spaces.Dict({a: policy_observation_space(spec, probe.observation_space(a)) for a in ids}),
        spaces.Dict({a: probe.action_space(a) for a in ids}),
        net_config=_net(quick), batch_size=plan.settings["batch_size"], lr=plan.settings["lr"],
        learn_step=plan.settings["learn_step"], gamma=0.99, gae_lambda=0.95, ent_coef=0.01,
        update_epochs=4)
    probe.close()
    writer = _start(root, TICTACTOE_RUN, spec, plan, quick)

    def evaluate(runtime: Any) -> float:
        record = _tictactoe_record(spec, runtime_act(runtime), plan.eval_episodes)
        return float(np.mean([record[side]["win"] for side in record]))

    play = _SelfPlay(agent, spec)
    steps, next_checkpoint, results, best = 0, plan.checkpoint_every, [], (-1.0, 0)
    while steps < plan.steps:
        moves, first_player = play.learn(agent.learn_step)
        steps += moves
        results += first_player
        if steps >= next_checkpoint or steps >= plan.steps:
            next_checkpoint += plan.checkpoint_every
            score = _save(writer, steps, agent, float(np.mean(results)), evaluate)
            results = []
            say(f"{TICTACTOE}: {steps} moves ({play.games} games), win rate vs random "
                f"{score:.2f}")
            best = max(best, (score, steps))
    play.env.close()

    games = max(plan.eval_episodes, 4 if quick else 200)
    runtime = _load_runtime(root, TICTACTOE, best[1])
    return _record_vs_random(writer, {
        "step": best[1], "games_per_side": games,
        "policy": _tictactoe_record(spec, runtime_act(runtime), games),
        "random": _tictactoe_record(spec, None, games),
    })


def train_mpe(root: Path, run: _Run, plan: Plan, quick: bool, say: ProgressFn) -> dict[str, Any]:
    """MADDPG or MATD3 on an mpe2 environment, learning from AgileRL's replay buffer."""
    import torch
    from agilerl import algorithms
    from agilerl.components.data import MultiAgentTransition, transition_to_tensordict
    from agilerl.components.replay_buffer import ReplayBuffer
    from agilerl.vector import PzDummyVecEnv
    from gymnasium import spaces

    spec = env_spec(run.environment)
    env = PzDummyVecEnv(make_env(spec))
    ids = list(env.possible_agents)
    settings = plan.settings
    agent = getattr(algorithms, run.algorithm)(
        spaces.Dict({a: env.single_observation_space(a) for a in ids}),
        spaces.Dict({a: env.single_action_space(a) for a in ids}),
        net_config=_net(quick), batch_size=settings["batch_size"],
        lr_actor=settings["lr_actor"], lr_critic=settings["lr_critic"],
        learn_step=settings["learn_step"], gamma=0.95, tau=0.01, O_U_noise=False,
        expl_noise=0.1)
    writer = _start(root, run, spec, plan, quick)

    def evaluate(runtime: Any) -> float:
        return _mean_returns(spec, runtime_act(runtime), plan.eval_episodes)

    memory = ReplayBuffer(max_size=100_000)
    obs: Any
    obs, info = env.reset(seed=plan.seed)
    agent.set_training_mode(True)
    score, finished, best = np.zeros(len(ids)), [], (-np.inf, 0)
    for step in range(1, plan.steps + 1):
        action, raw_action = agent.get_action(obs=obs, infos=info)
        next_obs, reward, terminated, truncated, info = env.step(action)
        transition = transition_to_tensordict(MultiAgentTransition(
            obs=obs, action=raw_action, reward=reward, next_obs=next_obs, done=terminated))
        transition.batch_size = torch.Size([1])
        memory.add(transition)
        score += np.array([float(np.nan_to_num(reward[a]).sum()) for a in ids])
        if step % agent.learn_step == 0 and len(memory) >= max(agent.batch_size,
                                                               settings["learning_starts"]):
            agent.learn(memory.sample(agent.batch_size))
        obs = next_obs
        if all(bool(np.any(terminated[a]) or np.any(truncated[a])) for a in ids):
            finished.append(float(score.mean()))
            score[:] = 0
            obs, info = env.reset()
        if step % plan.checkpoint_every == 0:
            training = float(np.mean(finished)) if finished else None
            finished = []
            result = _save(writer, step, agent, training, evaluate)
            say(f"{run.name}: {step} steps, mean evaluation return {result:.2f}")
            best = max(best, (result, step))
    env.close()

    episodes = max(plan.eval_episodes, 2 if quick else 50)
    runtime = _load_runtime(root, run.name, int(best[1]))
    return _record_vs_random(writer, {
        "step": int(best[1]), "episodes": episodes,
        "policy_mean_return": round(_mean_returns(spec, runtime_act(runtime), episodes), 3),
        "random_mean_return": round(_mean_returns(spec, None, episodes), 3),
    })


SPREAD_RUN = _Run(
    SPREAD, "MADDPG", "simple_spread_v3",
    "MADDPG on simple_spread (2 agents, continuous forces): cover both landmarks without "
    "colliding.",
    {"training_score": "mean return per agent of the training episodes since the last "
                       "checkpoint (exploration noise on)",
     "evaluation_score": "mean return per agent over seeded greedy episodes"},
    multi_agent=True,
)
SPEAKER_LISTENER_RUN = _Run(
    SPEAKER_LISTENER, "MATD3", "simple_speaker_listener_v4",
    "MATD3 on simple_speaker_listener (discrete actions; a speaker and a listener with "
    "different observation and action spaces).",
    dict(SPREAD_RUN.scores), multi_agent=True,
)
MEMORY_RUN = _Run(
    MEMORY, "PPO", "CartPole-v1",
    "Recurrent PPO (LSTM) on CartPole with the velocities hidden: it sees only the cart "
    "position and pole angle, so it must remember how they change.",
    {"training_score": "mean return of the training episodes since the last checkpoint "
                       "(sampling actions)",
     "evaluation_score": "mean return over seeded greedy episodes, hidden state threaded"},
    recurrent=True,
)


def train_memory(root: Path, plan: Plan, quick: bool, say: ProgressFn) -> dict[str, Any]:
    """Recurrent PPO on CartPole without velocities, with AgileRL's recurrent rollouts."""
    import gymnasium as gym
    from agilerl.algorithms import PPO
    from agilerl.rollouts import collect_rollouts_recurrent

    spec = copy.deepcopy(MEMORY_ENV)
    settings = plan.settings
    probe = make_env(spec)
    observed = policy_observation_space(spec, probe.observation_space)
    probe.close()

    def make() -> gym.Env:
        return gym.wrappers.TransformObservation(
            make_env(spec), lambda o: policy_observation(spec, o), observed)

    venv = gym.vector.SyncVectorEnv([make for _ in range(settings["num_envs"])])
    size = settings["hidden"]
    agent = PPO(observed, venv.single_action_space, recurrent=True,
                num_envs=settings["num_envs"], learn_step=settings["learn_step"],
                batch_size=settings["batch_size"], lr=settings["lr"], gamma=settings["gamma"],
                gae_lambda=settings["gae_lambda"], ent_coef=settings["ent_coef"],
                update_epochs=settings["update_epochs"], max_seq_len=settings["max_seq_len"],
                net_config={"encoder_config": {"hidden_state_size": size},
                            "head_config": {"hidden_size": [size]}})
    writer = _start(root, MEMORY_RUN, spec, plan, quick)

    def evaluate(runtime: Any) -> float:
        return _mean_returns(spec, runtime_act(runtime), plan.eval_episodes)

    last: tuple[Any, ...] = (None, None, None, None)
    steps, finished = 0, []
    next_checkpoint, best = plan.checkpoint_every, (-np.inf, 0)
    venv.reset(seed=plan.seed)
    while steps < plan.steps:
        agent.set_training_mode(True)
        scores, *rest = collect_rollouts_recurrent(
            agent, venv, last_obs=last[0], last_done=last[1], last_scores=last[2],
            last_info=last[3])
        last = tuple(rest)
        agent.learn()
        steps += agent.learn_step
        finished += [float(s) for s in scores]
        if steps >= next_checkpoint:
            next_checkpoint += plan.checkpoint_every
            training = float(np.mean(finished)) if finished else None
            finished = []
            result = _save(writer, steps, agent, training, evaluate)
            say(f"{MEMORY}: {steps} steps, mean evaluation return {result:.1f}")
            best = max(best, (result, steps))
    venv.close()

    episodes = max(plan.eval_episodes, 2 if quick else 50)
    runtime = _load_runtime(root, MEMORY, int(best[1]))
    return _record_vs_random(writer, {
        "step": int(best[1]), "episodes": episodes,
        "policy_mean_return": round(_mean_returns(spec, runtime_act(runtime), episodes), 2),
        "random_mean_return": round(_mean_returns(spec, None, episodes), 2),
    })


def build_classic_demo(
    root: Path, *, quick: bool = False, progress: ProgressFn | None = None,
    only: Sequence[str] | None = None,
) -> list[str]:
    """Train the multi-agent and recurrent demos into ``<root>/experiments``; return names.

    Existing experiments of these names are replaced. Full mode takes a few minutes on two
    CPU cores; ``quick`` takes seconds (two checkpoints each, scores meaningless). ``only``
    trains just the runs it names. Results
    against random play are reported through ``progress`` and stored in ``extra``.
    The caller's torch thread count and random state are left as they were.
    """
    import torch

    from workbench_core.tracking import resume_experiment

    say = progress or (lambda _msg: None)
    root = Path(root).expanduser()
    plans = QUICK_PLANS if quick else FULL_PLANS
    if only is not None:
        unknown = sorted(set(only) - set(plans))
        if unknown:
            raise ValueError(f"No classic demo run named {unknown}; known: {sorted(plans)}.")
        plans = {name: plan for name, plan in plans.items() if name in only}
    trainers: dict[str, Callable[[Plan], dict[str, Any]]] = {
        TICTACTOE: lambda plan: train_tictactoe(root, plan, quick, say),
        SPREAD: lambda plan: train_mpe(root, SPREAD_RUN, plan, quick, say),
        SPEAKER_LISTENER: lambda plan: train_mpe(root, SPEAKER_LISTENER_RUN, plan, quick, say),
        MEMORY: lambda plan: train_memory(root, plan, quick, say),
    }
    started = time.perf_counter()
    with _quiet_isolated_torch():
        for name, plan in plans.items():
            begun = time.perf_counter()
            # Each run from its own seed, so one run's result does not hang on another's.
            torch.manual_seed(plan.seed)
            np.random.seed(plan.seed)
            say(f"training {name}")
            report = trainers[name](plan)
            seconds = round(time.perf_counter() - begun, 1)
            writer = resume_experiment(name, root=root)
            writer.update_info(extra={**writer.info.extra, "training_seconds": seconds})
            say(f"{name}: trained in {seconds} s; against random: {report}")
    say(f"classic demo built in {time.perf_counter() - started:.1f} s")
    return list(plans)
