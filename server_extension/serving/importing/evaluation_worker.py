"""The evaluation's worker process: score an experiment's checkpoints over seeded episodes.

Run as ``python -m server_extension.serving.importing.evaluation_worker REQUEST.json OUT.jsonl``
by :mod:`.evaluation`, never inside the server: a checkpoint is a pickle. It loads each
checkpoint as the server would serve it (``load_runtime``) and plays it with the episode
player every scorer of the workbench uses (``workbench_core.episodes.play_episode``, as the
demo trainers and the notebook's ``evaluate`` do), on env seeds ``seed, seed + 1, ...``.

For each step it appends ``{"step": N, "started": true}`` and then ``{"step": N, "score": x}``
or ``{"step": N, "error": "..."}`` to OUT, one JSON object a line, flushed: the parent reads
the file as it grows, so each score lands in the experiment as soon as it is known, and a
worker that dies part-way is known to have died on the step it last started.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


def score(spec: Mapping[str, Any], act: Any, *, episodes: int, seed: int) -> float:
    """The mean of the notebook ``evaluate``'s per-episode score: the return (the mean over
    agents for a multi-agent environment); in a turn-based game, 1 for a win against random
    moves, else 0, each seed played once per side."""
    import numpy as np

    from workbench_core.environments import make_env
    from workbench_core.episodes import play_episode

    values: list[float] = []
    if spec.get("kind") == "turn_based":
        env = make_env(spec)
        sides = list(env.possible_agents)
        env.close()
        for side in sides:
            for i in range(episodes):
                episode = play_episode(spec, act, seed=seed + i, opponent="random",
                                       agent_side=side)
                values.append(1.0 if episode.returns[side] > 0 else 0.0)
    else:
        values = [play_episode(spec, act, seed=seed + i).total for i in range(episodes)]
    return float(np.mean(values))


def _line(out: IO[str], **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def run(request: dict[str, Any], out: IO[str]) -> None:
    """Score each step of ``request["steps"]``; a step that fails is reported, not fatal."""
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.environments import env_spec
    from workbench_core.episodes import runtime_act
    from workbench_core.store import ExperimentStore

    folder = Path(request["folder"])
    experiment = ExperimentStore(folder.parent.parent).get(folder.name)
    spec = env_spec(experiment.info.environment, experiment.info.extra)
    for step in request["steps"]:
        _line(out, step=step, started=True)
        runtime = None
        try:
            runtime = load_runtime(experiment, experiment.checkpoint(int(step)))
            value = score(spec, runtime_act(runtime), episodes=int(request["episodes"]),
                          seed=int(request["seed"]))
        except Exception as exc:  # noqa: BLE001 - the user's checkpoint may raise anything
            traceback.print_exc()
            _line(out, step=step, error=f"{type(exc).__name__}: {str(exc)[:500]}")
            continue
        finally:
            close = getattr(runtime, "close", None)
            if callable(close):
                close()
        _line(out, step=step, score=value)


def _exit_with_parent() -> None:
    """End this process when the server that started it is gone (killed, not stopped): a
    restarted server starts its own worker for the same steps, and two must not write one
    results file."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    """Read the request, cap memory, score; exit status 0 unless the request is unreadable."""
    from server_extension.serving.importing.worker import _limit_memory

    _exit_with_parent()
    request = json.loads(Path(argv[1]).read_text("utf-8"))
    level = int(request.get("nice") or 0)
    if level > os.getpriority(os.PRIO_PROCESS, 0):
        # Background work: it yields the CPU to the agents' workers and the server.
        os.setpriority(os.PRIO_PROCESS, 0, min(level, 19))
    _limit_memory(float(request.get("memory_mb") or 0))
    import torch

    torch.set_num_threads(1)
    with open(argv[2], "a", encoding="utf-8") as out:
        run(request, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
