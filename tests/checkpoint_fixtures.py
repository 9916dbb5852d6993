"""Experiments whose checkpoints answer differently, for the checkpoint-change tests.

``flip-dqn`` holds real AgileRL DQN checkpoints for CartPole: step 1 is a freshly initialised
agent, step 2 the same agent with its Q-network's output layer negated, so for every
observation its greedy action is the other one (two actions). An answer therefore names the
checkpoint that gave it, row by row: a batch mixing the two shows at once. Step 3 is a file
that is not a checkpoint at all (a failing change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLIP = "flip-dqn"
OLD_STEP, NEW_STEP, BROKEN_STEP = 1, 2, 3
# One fixed batch; each checkpoint's answer to it is computed in-process by the library.
OBS = np.random.default_rng(7).normal(0, 0.5, size=(32, 4)).astype(np.float32)


def write_flip_experiment(root: Path) -> None:
    """Write ``flip-dqn`` (steps 1, 2 and the broken 3) into ``<root>/experiments``."""
    import torch

    from server_extension.training.agilerl import create_agent
    from workbench_core.tracking import save_checkpoint, start_experiment

    writer = start_experiment(FLIP, project_type="classic", algorithm="DQN",
                              framework="agilerl", environment="CartPole-v1", root=root,
                              overwrite=True)
    agent = create_agent("DQN", "CartPole-v1", seed=0,
                         net_config={"encoder_config": {"hidden_size": [16]}})
    save_checkpoint(writer, OLD_STEP, agent.save_checkpoint, training_score=1.0,
                    evaluation_score=1.0)
    with torch.no_grad():
        last = [m for m in agent.actor.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.neg_()
        last.bias.neg_()
    save_checkpoint(writer, NEW_STEP, agent.save_checkpoint, training_score=2.0,
                    evaluation_score=2.0)
    save_checkpoint(writer, BROKEN_STEP,
                    lambda p: Path(p).write_bytes(b"this is not a checkpoint"),
                    training_score=0.0, evaluation_score=0.0)


def expected_actions(root: Path) -> dict[int, list[int]]:
    """Each good step's greedy actions for :data:`OBS`, from the library in this process."""
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    experiment = ExperimentStore(root).get(FLIP)
    answers = {}
    for step in (OLD_STEP, NEW_STEP):
        runtime = load_runtime(experiment, experiment.checkpoint(step))
        action, _ = runtime.get_action(OBS)
        answers[step] = [int(a) for a in np.asarray(action).reshape(-1)]
        runtime.close()
    return answers
