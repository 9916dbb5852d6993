"""Log an experiment from any training loop, so the workbench can list and serve it.

This is where notebooks import it from; the code lives in :mod:`workbench_core.tracking`,
below both the panel and the server, because the server's demo trainers log experiments the
same way. Example::

    from agents_widget.tracking import start_experiment, save_checkpoint

    run = start_experiment("cartpole-dqn", project_type="classic", algorithm="DQN",
                           framework="agilerl", environment="CartPole-v1")
    for step in range(...):
        ...  # train
        if step % 5000 == 0:
            save_checkpoint(run, step, agent.save_checkpoint,
                            training_score=train_return, evaluation_score=eval_return)
"""

from __future__ import annotations

# The names and their list come from the real module, so the two cannot drift apart.
from workbench_core.tracking import *  # noqa: F403
from workbench_core.tracking import __all__  # noqa: F401 - re-exported: the star import above uses it
