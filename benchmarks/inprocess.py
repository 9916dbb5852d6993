"""Benchmarks without HTTP: the floor (runtime and bare forward), the wire codec, the panel.

All timings are per call, the median over several samples of many calls each, with one torch
thread (as the servers run).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .policies import sample_obs


def per_call_us(fn: Callable[[], object], *, calls: int = 200, samples: int = 15) -> float:
    """Median over ``samples`` of the mean time of ``calls`` calls, in microseconds."""
    fn()  # warm-up: first calls allocate and fill caches
    results = []
    for _ in range(samples):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter() - started) / calls * 1e6)
    return round(statistics.median(results), 2)


def _numpy_codec(obs: np.ndarray, action: np.ndarray) -> tuple[Callable[[], object], str]:
    """The codec as numpy alone does it (np.load / np.save), for comparison."""
    text = _npy(obs)

    def both() -> object:
        raw = base64.b64decode(text, validate=True)
        np.load(io.BytesIO(raw), allow_pickle=False)
        buf = io.BytesIO()
        np.save(buf, action, allow_pickle=False)
        return base64.b64encode(buf.getvalue()).decode("ascii")

    return both, text


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def floor(root: Path, name: str, *, calls: int, samples: int) -> dict[str, Any]:
    """Per-call cost of the runtime in-process, of the bare network forward, and of the codec.

    The bare forward is the AgileRL agent's own Q-network module called on a ready float
    tensor of one observation (no checks, no conversion, no argmax).
    """
    import torch
    from agilerl.algorithms import DQN

    from server_extension.serving.runtimes import load_runtime
    from server_extension.serving.serde import decode_tree, encode_tree
    from workbench_core.store import ExperimentStore

    torch.set_num_threads(1)
    experiment = ExperimentStore(root).get(name)
    checkpoint = experiment.checkpoint(experiment.resolve("best"))
    runtime = load_runtime(experiment, checkpoint)
    obs = sample_obs(name)
    action, _ = runtime.get_action(obs)
    agent = DQN.load(str(checkpoint.path))
    agent.actor.eval()
    tensor = torch.as_tensor(obs, dtype=torch.float32)

    def bare() -> object:
        with torch.inference_mode():
            return agent.actor(tensor)

    text = _npy(obs)
    numpy_both, _ = _numpy_codec(obs, action)
    out = {
        "runtime_us": per_call_us(lambda: runtime.get_action(obs), calls=calls, samples=samples),
        "forward_us": per_call_us(bare, calls=calls, samples=samples),
        "decode_us": per_call_us(lambda: decode_tree(text, "obs"), calls=calls, samples=samples),
        "encode_us": per_call_us(lambda: encode_tree(action), calls=calls, samples=samples),
        "numpy_codec_us": per_call_us(numpy_both, calls=calls, samples=samples),
    }
    out["codec_us"] = round(out["decode_us"] + out["encode_us"], 2)
    out["runtime_over_forward"] = round(out["runtime_us"] / out["forward_us"], 2)
    out["codec_over_forward"] = round(out["codec_us"] / out["forward_us"], 2)
    runtime.close()
    return out


def batch_costs(root: Path, name: str) -> dict[str, Any]:
    """What "auto" batching measures at load: get_action at batch 1 and 8, and its verdict."""
    import torch

    from server_extension.serving.batching import forward_costs, worth_batching
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    torch.set_num_threads(1)
    experiment = ExperimentStore(root).get(name)
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.resolve("best")))
    one, eight = forward_costs(runtime)
    verdict = worth_batching(runtime)
    runtime.close()
    return {"batch1_us": round(one * 1e6, 1), "batch8_us": round(eight * 1e6, 1),
            "batch8_over_8x1": round(eight / (8 * one), 2) if one else None,
            "auto_batches": verdict}


def panel(agents_json: list[dict[str, Any]], *, samples: int = 5) -> dict[str, Any]:
    """Kernel-side cost of the agents table fed real management-API JSON.

    ``build``: a fresh table syncing every agent (the first load); ``one_change``: the same
    table syncing the list again with one agent's status changed (a poll that saw a change);
    ``no_change``: a poll that saw nothing new. Widgets are real ipywidgets; with no kernel
    attached their messages go nowhere, so this is the Python side alone.
    """
    from agents_widget.client import AgentInfo, Status
    from agents_widget.table import AgentTable, RowActions

    agents = [AgentInfo.from_json(a) for a in agents_json]

    def ignore(_name: str) -> None:
        """Row buttons are not clicked here."""

    actions = RowActions(toggle=ignore, delete=ignore, expand=ignore, disconnect=ignore)
    builds, changes, still = [], [], []
    for i in range(samples):
        started = time.perf_counter()
        table = AgentTable("classic", actions)
        table.sync(agents)
        builds.append(time.perf_counter() - started)
        k = (i * 37) % len(agents)
        new_status: Status = "Pending" if agents[k].status != "Pending" else "Deployed"
        changed = [*agents[:k], dataclasses.replace(agents[k], status=new_status),
                   *agents[k + 1:]]
        started = time.perf_counter()
        table.sync(changed)
        changes.append(time.perf_counter() - started)
        started = time.perf_counter()
        table.sync(changed)
        still.append(time.perf_counter() - started)
        table.close()
    return {"agents": len(agents), "rows": len([a for a in agents if a.tab == "classic"]),
            "build_ms": round(statistics.median(builds) * 1000, 1),
            "one_change_ms": round(statistics.median(changes) * 1000, 2),
            "no_change_ms": round(statistics.median(still) * 1000, 2)}
