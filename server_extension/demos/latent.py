"""Train the LatentPPO demo: a PPO policy that designs flowers through the Iris classifier.

The decoder is a saved Advanced Training model picked from the workspace, as the platform's
pipelines chain a prior stage into a LatentPPO stage: by default the best checkpoint of
``iris-classifier`` (trained first when the workspace has none). Its four input columns
(sepal and petal sizes, in cm) are the latent.

The task (:class:`DecoderTargetEnv`), one step per episode: the policy observes which species
is wanted (a one-hot row over the decoder's classes), outputs a latent (four measurements,
bounded to the decoder's training range, mean +- 2 std per column), the decoder classifies
it, and the reward is the probability it gives the wanted species. A policy that ignores its
input cannot score more than about 1/3 on average; one that has learnt scores near 1.

:func:`build_latent_demo` writes ``iris-latent-ppo`` (framework ``"latent_ppo"``). It checkpoints
the untrained policy at step 0, so the first row of the charts is the score before training.
``training_score`` is the mean reward of the latest rollout (sampled actions);
``evaluation_score`` the mean wanted-species probability of the deterministic policy, one
episode per species, computed exactly as the workbench serves the agent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from server_extension.demos.llm import one_torch_thread
from server_extension.serving.runtimes.latent import to_latent
from workbench_core.store import Experiment, ExperimentStore, ExperimentWriter, StoreError

EXPERIMENT = "iris-latent-ppo"
LATENT_SPREAD = 2.0  # the latent box: decoder mean +- this many std per input column

# Measured on 2 shared CPU cores: full mode scores 1.0 (from 0.33) by step 2048, about 5 s in.
FULL: dict[str, int] = {"total_steps": 6_144, "checkpoint_every": 1_024}
QUICK: dict[str, int] = {"total_steps": 1_536, "checkpoint_every": 512}
HYPERPARAMETERS: dict[str, Any] = {
    "lr": 3e-3, "batch_size": 128, "learn_step": 256, "num_envs": 8, "update_epochs": 4,
    "gamma": 0.0, "gae_lambda": 0.0, "ent_coef": 0.0, "action_std_init": 0.5,
    "share_encoders": False,
}
NET_CONFIG: dict[str, Any] = {"encoder_config": {"hidden_size": [32]},
                              "head_config": {"hidden_size": [32]},
                              "squash_output": True}


class DecoderTargetEnv(gym.Env):
    """Observe a wanted class (one-hot); act with a latent; earn the decoder's probability of it.

    ``decoder`` is any callable mapping latents (B, latent) to class probabilities (B, n):
    a loaded :class:`server_extension.serving.runtimes.supervised.SupervisedRuntime`'s ``predict``.
    """

    def __init__(self, decoder: Callable[[np.ndarray], np.ndarray], n_classes: int,
                 low: np.ndarray, high: np.ndarray) -> None:
        from gymnasium import spaces

        super().__init__()
        self.decoder = decoder
        self.n_classes = n_classes
        self.observation_space = spaces.Box(0.0, 1.0, (n_classes,), np.float32)
        # AgileRL's PPO acts in [-1, 1]; the action is mapped onto the latent box [low, high].
        self.action_space = spaces.Box(-1.0, 1.0, (len(low),), np.float32)
        self.low, self.high = low.astype(np.float32), high.astype(np.float32)
        self.target = 0

    def observation(self, target: int) -> np.ndarray:
        """The one-hot row asking for class ``target``."""
        obs = np.zeros(self.n_classes, np.float32)
        obs[target] = 1.0
        return obs

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.target = int(self.np_random.integers(self.n_classes))
        return self.observation(self.target), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        latent = to_latent(np.asarray(action, np.float32).reshape(1, -1), self.low, self.high)
        reward = float(self.decoder(latent)[0, self.target])
        # One decision per episode: the next observation only closes the transition.
        return self.observation(self.target), reward, True, False, {}


def greedy_score(act: Callable[[np.ndarray], np.ndarray],
                 decoder: Callable[[np.ndarray], np.ndarray], n_classes: int) -> float:
    """Mean probability the decoder gives the wanted class, one deterministic try per class.

    ``act`` maps observations to latents (the policy's action already put on the latent box).
    """
    wanted = np.eye(n_classes, dtype=np.float32)
    probs = decoder(act(wanted))
    return float(np.mean(probs[np.arange(n_classes), np.arange(n_classes)]))


def _pick_decoder(root: Path, decoder: str | dict[str, Any] | None, *, quick: bool,
                  say: Callable[[str], None]) -> tuple[list[str], Experiment, int, Any]:
    """The saved model to decode through (trained first when the default is missing):
    ``(experiments written, its experiment, its step, its loaded runtime)``."""
    from server_extension.demos.supervised import EXPERIMENT as IRIS
    from server_extension.demos.supervised import build_supervised_demo
    from server_extension.serving.runtimes import load_runtime
    from server_extension.serving.runtimes.latent import parse_decoder
    from server_extension.serving.runtimes.supervised import SupervisedRuntime

    store = ExperimentStore(root)
    written: list[str] = []
    if decoder is None:
        try:
            store.get(IRIS)
        except StoreError:
            say(f"no saved {IRIS} to decode through: training it first")
            written += build_supervised_demo(root, quick=quick, progress=say)
        decoder = IRIS
    name, rule = parse_decoder(decoder)
    experiment = store.get(name)
    step = experiment.resolve(rule)
    runtime = load_runtime(experiment, experiment.checkpoint(step))
    if not isinstance(runtime, SupervisedRuntime):
        raise StoreError(f"{name!r} is not a saved model that can decode a latent.")
    return written, experiment, step, runtime


def _train(writer: ExperimentWriter, decode: Callable[[np.ndarray], np.ndarray],
           n_classes: int, settings: dict[str, int],
           say: Callable[[str], None]) -> tuple[float, float, int]:
    """Train PPO on :class:`DecoderTargetEnv`, checkpointing; ``(score before, after, steps)``."""
    import torch
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from server_extension.serving.runtimes.agilerl import GreedyPolicy, algorithm_classes
    from workbench_core.tracking import save_checkpoint

    # Through algorithm_classes first: it imports AgileRL with its import-time warning muted.
    ppo_class = algorithm_classes()["PPO"]
    from agilerl.rollouts.on_policy import collect_rollouts

    # The latent box the policy acts in is the recorded (rounded) one, so serving matches.
    low = np.asarray(writer.info.extra["latent_low"], np.float32)
    high = np.asarray(writer.info.extra["latent_high"], np.float32)
    num_envs = int(HYPERPARAMETERS["num_envs"])

    def make_env() -> DecoderTargetEnv:
        return DecoderTargetEnv(decode, n_classes, low, high)

    started = time.perf_counter()
    with one_torch_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe_env = make_env()
        agent = ppo_class(probe_env.observation_space, probe_env.action_space,
                          net_config=dict(NET_CONFIG), **HYPERPARAMETERS)

        def checkpoint(steps: int, training: float | None) -> float:
            networks = agent.evolvable_attributes(networks_only=True).values()
            for net in networks:
                net.eval()  # scored exactly as the workbench serves it
            try:
                policy = GreedyPolicy(agent)
                score = greedy_score(lambda obs: to_latent(policy(obs), low, high), decode,
                                     n_classes)
            finally:
                for net in networks:
                    net.train()
            save_checkpoint(writer, steps, agent.save_checkpoint, training_score=training,
                            evaluation_score=score)
            say(f"{EXPERIMENT} step {steps}: training score "
                f"{'n/a' if training is None else f'{training:.3f}'}, evaluation score "
                f"{score:.3f} ({time.perf_counter() - started:.0f} s)")
            return score

        # Step 0 is the untrained policy, so the charts start from the score before training.
        before = after = checkpoint(0, None)
        n_steps = -(int(HYPERPARAMETERS["learn_step"]) // -num_envs)
        steps, next_at = 0, settings["checkpoint_every"]
        env = SyncVectorEnv([make_env for _ in range(num_envs)],
                            autoreset_mode=AutoresetMode.SAME_STEP)
        agent.set_training_mode(True)
        try:
            env.reset(seed=0)
            last: dict[str, Any] = {}
            while steps < settings["total_steps"]:
                scores, *state = collect_rollouts(agent, env, n_steps=n_steps, **last)
                last = dict(zip(("last_obs", "last_done", "last_scores", "last_info"), state,
                                strict=True))
                agent.learn()
                steps += n_steps * num_envs
                if steps >= next_at or steps >= settings["total_steps"]:
                    after = checkpoint(steps, float(np.mean(scores)) if scores else None)
                    next_at += settings["checkpoint_every"]
        finally:
            env.close()
    return before, after, steps


def build_latent_demo(
    root: Path, *, quick: bool = False, progress: Callable[[str], None] | None = None,
    decoder: str | dict[str, Any] | None = None,
) -> list[str]:
    """Train ``iris-latent-ppo`` into ``<root>/experiments`` (replacing it).

    Returns the names of the experiments written: ``iris-latent-ppo``, after
    ``iris-classifier`` when the decoder had to be trained first.

    ``decoder`` names the saved model to decode through (an experiment name, or
    ``{"experiment": name, "checkpoint": "best" | "final" | step}``); by default the best
    ``iris-classifier`` checkpoint, which is trained first if the workspace lacks it.
    Full mode takes 10-30 s on 2 shared CPU cores, ``quick`` a few seconds.
    """
    from server_extension.serving.runtimes.latent import ALGORITHM, FRAMEWORK
    from workbench_core.tracking import start_experiment

    say = progress or (lambda _msg: None)
    root = Path(root).expanduser()
    written, decoder_experiment, step, runtime = _pick_decoder(root, decoder, quick=quick,
                                                               say=say)
    extra = decoder_experiment.info.extra
    columns = [str(c) for c in extra["feature_columns"]]
    classes = [str(c) for c in extra["class_names"]]
    mean = np.asarray(extra.get("mean", [0.0] * len(columns)), np.float32)
    std = np.asarray(extra.get("std", [1.0] * len(columns)), np.float32)
    settings = QUICK if quick else FULL
    writer = start_experiment(
        EXPERIMENT, project_type="advanced", algorithm=ALGORITHM, framework=FRAMEWORK,
        dataset=decoder_experiment.info.dataset, root=root, overwrite=True,
        extra={
            "description": ("PPO policy that picks flower measurements (the latent) the "
                            f"{decoder_experiment.name} decoder classifies as the wanted "
                            "species."),
            "decoder": {"experiment": decoder_experiment.name, "step": step},
            "latent_size": len(columns),
            "latent_columns": columns,
            "latent_low": [round(float(v), 6) for v in mean - LATENT_SPREAD * std],
            "latent_high": [round(float(v), 6) for v in mean + LATENT_SPREAD * std],
            "observation_columns": [f"want_{c}" for c in classes],
            "output_columns": classes,
            "hyperparameters": HYPERPARAMETERS,
            "net_config": NET_CONFIG,
            "training": dict(settings),
            "training_score": "mean reward (wanted-species probability) of the latest rollout",
            "evaluation_score": ("mean wanted-species probability of the deterministic policy, "
                                 f"one episode per species ({len(classes)})"),
            "quick": quick,
        },
    )
    started = time.perf_counter()
    try:
        before, after, steps = _train(writer, runtime.predict, len(classes), settings, say)
    finally:
        runtime.close()
    seconds = round(time.perf_counter() - started, 2)
    writer.update_info(extra={**writer.info.extra, "train_seconds": seconds,
                              "score_before": round(before, 4), "score_after": round(after, 4)})
    say(f"{EXPERIMENT}: evaluation score {before:.3f} before training, {after:.3f} after "
        f"{steps} steps ({seconds:.1f} s)")
    return [*written, EXPERIMENT]
