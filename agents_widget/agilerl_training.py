"""Train a single-agent AgileRL algorithm on a gymnasium environment, logging to the workbench.

This is where notebooks import it from; the code lives in
:mod:`server_extension.training.agilerl`, next to the runtimes whose greedy policy scores
every checkpoint, because the server's demo trainers use it too. Example::

    from agents_widget.agilerl_training import create_agent, train
    from agents_widget.tracking import start_experiment

    env_id = "CartPole-v1"
    agent = create_agent("DQN", env_id, lr=1e-3, batch_size=64)
    run = start_experiment("my-dqn", project_type="classic", algorithm="DQN",
                           framework="agilerl", environment=env_id)
    result = train(agent, run, env_id=env_id, total_steps=20_000, checkpoint_every=2_000,
                   progress=print)
"""

from __future__ import annotations

# The names and their list come from the real module, so the two cannot drift apart.
from server_extension.training.agilerl import *  # noqa: F403
from server_extension.training.agilerl import __all__  # noqa: F401 - re-exported: the star import above uses it
