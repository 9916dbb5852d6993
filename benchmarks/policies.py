"""The benchmark workspace: the demo CartPole agent plus two larger policies for batching.

``cartpole-dqn`` comes from :func:`server_extension.demos.classic.build_demo` (quick mode unless the
workspace already holds a full demo). The larger policies are real AgileRL DQN agents saved
with ``save_checkpoint`` but not trained: what a forward costs does not depend on what the
weights learned, and training a CNN to competence would take longer than the benchmark.

``bench-mlp256``  DQN on CartPole's spaces, encoder 256x256 and head 256 (an MLP of the
                  size the issue names)
``bench-cnn``     DQN on 4x84x84 uint8 frames (an Atari-style stack), AgileRL's CNN encoder
                  (32/64/64 channels, kernels 8/4/3, strides 4/2/1) and a 256 head
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEMO = "cartpole-dqn"
MLP = "bench-mlp256"
CNN = "bench-cnn"
CNN_SHAPE = (4, 84, 84)


def _save(root: Path, name: str, observation_space: Any, action_space: Any,
          net_config: dict[str, Any]) -> None:
    import torch
    from agilerl.algorithms import DQN

    from agents_widget.tracking import save_checkpoint, start_experiment

    torch.manual_seed(0)
    agent = DQN(observation_space, action_space, net_config=net_config)
    writer = start_experiment(name, project_type="classic", algorithm="DQN", framework="agilerl",
                              environment="CartPole-v1", root=root, overwrite=True,
                              extra={"description": "benchmark policy (untrained weights)"})
    save_checkpoint(writer, 1, agent.save_checkpoint, training_score=0.0, evaluation_score=0.0)


def ensure_workspace(root: Path, say: Any = print) -> Path:
    """Make ``root`` hold the demo CartPole agent and the two larger policies; reuse what is
    there already. Returns ``root``."""
    from gymnasium import spaces

    from server_extension.serving.runtimes.agilerl import algorithm_classes
    from workbench_core.store import ExperimentStore

    algorithm_classes()  # imports AgileRL with its import-time warning muted
    root.mkdir(parents=True, exist_ok=True)
    have = {e.name for e in ExperimentStore(root).list()}
    if DEMO not in have:
        from server_extension.demos.classic import build_demo

        say("building the quick demo workspace (AgileRL training, under a minute)")
        build_demo(root, quick=True)
    cartpole = (spaces.Box(-np.inf, np.inf, (4,), np.float32), spaces.Discrete(2))
    if MLP not in have:
        _save(root, MLP, *cartpole, {"encoder_config": {"hidden_size": [256, 256]},
                                     "head_config": {"hidden_size": [256]}})
    if CNN not in have:
        frames = spaces.Box(0, 255, CNN_SHAPE, np.uint8)
        _save(root, CNN, frames, spaces.Discrete(6), {
            "encoder_config": {"channel_size": [32, 64, 64], "kernel_size": [8, 4, 3],
                               "stride_size": [4, 2, 1]},
            "head_config": {"hidden_size": [256]}})
    return root


def sample_obs(name: str) -> np.ndarray:
    """One observation with its batch axis, as a client sends it, for ``name``."""
    if name == CNN:
        return np.random.default_rng(0).integers(0, 256, (1, *CNN_SHAPE), dtype=np.uint8)
    return np.array([[0.01, -0.02, 0.03, 0.04]], np.float32)


def body_for(name: str) -> str:
    """The JSON body the Arena client sends for one observation of ``name``."""
    import json

    from server_extension.serving.serde import encode_tree

    return json.dumps({"obs": encode_tree(sample_obs(name)), "batch_size": 1})
