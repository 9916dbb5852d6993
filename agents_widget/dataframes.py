"""The workspace as pandas DataFrames: experiments, checkpoints, metrics, agents and traffic.

Each function finds the workbench server as the panel does (the server that started this
kernel, or ``AGENTS_WORKBENCH_URL``/``AGENTS_WORKBENCH_TOKEN``) unless handed a ``client``,
and returns a DataFrame with typed columns: nullable integers and floats, booleans, and
timezone-aware (UTC) datetimes. Example::

    import agents_widget as aw

    aw.experiments()                          # one row per experiment
    aw.metrics("cartpole-dqn").plot(x="step")  # training and evaluation score by step
    aw.requests("cartpole", limit=100)        # the request log, newest first

No frame ever holds a deployment key or a token: :func:`agents` has no key column, and the
request log keeps neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .client import AgentInfo, ExperimentInfo, WorkbenchClient

__all__ = ["agents", "checkpoints", "experiments", "metrics", "requests", "resolve_client",
           "traffic"]

EXPERIMENT_COLUMNS: dict[str, str] = {
    "name": "string", "tab": "string", "algorithm": "string", "framework": "string",
    "environment": "string", "dataset": "string", "multi_agent": "bool", "recurrent": "bool",
    "checkpoints": "Int64", "best_step": "Int64", "best_score": "Float64",
    "last_step": "Int64", "status": "string", "error": "string",
}
CHECKPOINT_COLUMNS: dict[str, str] = {
    "step": "Int64", "training_score": "Float64", "evaluation_score": "Float64",
    "size_mb": "Float64",
}
METRIC_COLUMNS: dict[str, str] = {
    "step": "Int64", "training_score": "Float64", "evaluation_score": "Float64",
}
AGENT_COLUMNS: dict[str, str] = {
    "name": "string", "tab": "string", "experiment": "string", "status": "string",
    "connected": "bool", "checkpoint_rule": "string", "checkpoint_step": "Int64",
    "algorithm": "string", "base_model": "string", "backend": "string", "endpoint": "string",
    "description": "string", "error": "string", "created_at": "datetime64[ns, UTC]",
    "deployed_at": "datetime64[ns, UTC]",
}
REQUEST_COLUMNS: dict[str, str] = {
    "time": "datetime64[ns, UTC]", "route": "string", "status": "Int64",
    "latency_ms": "Float64", "batch_size": "Int64", "error": "bool",
}
TRAFFIC_COLUMNS: dict[str, str] = {
    "minute": "datetime64[ns, UTC]", "requests": "Int64", "errors": "Int64",
    "p50_ms": "Float64", "p95_ms": "Float64",
}


def resolve_client(client: WorkbenchClient | None = None) -> WorkbenchClient:
    """``client``, or a client of the server this kernel belongs to (as the panel finds it)."""
    return client if client is not None else WorkbenchClient.discover()


def _frame(rows: Iterable[Mapping[str, Any]], columns: Mapping[str, str]) -> pd.DataFrame:
    """A frame with exactly ``columns``, each cast to its dtype (empty frames keep them)."""
    data = pd.DataFrame(list(rows), columns=list(columns))
    for name, dtype in columns.items():
        if dtype.startswith("datetime64"):
            data[name] = pd.to_datetime(data[name].astype("float64"), unit="s",
                                        utc=True).dt.as_unit("ns")
        elif dtype == "bool":
            data[name] = data[name].fillna(False).astype(bool)
        else:
            data[name] = data[name].astype(dtype)
    return data


def _status(experiment: ExperimentInfo) -> str:
    training = experiment.training
    if training:
        return str(training.get("state") or "training")
    return "ready" if experiment.checkpoints else "empty"


def experiments(*, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """One row per experiment.

    Columns: name, tab, algorithm, framework, environment, dataset, multi_agent, recurrent,
    checkpoints (how many), best_step and best_score (highest evaluation score), last_step,
    status (``ready``, ``empty``, the training mark: queued, training, failed, interrupted;
    or ``broken`` for a folder that cannot be read as an experiment) and error (why).
    """
    rows: list[dict[str, Any]] = []
    listed, broken = resolve_client(client).experiment_listing()
    for exp in listed:
        scored = [c for c in exp.checkpoints if c.evaluation_score is not None]
        best = max(scored, key=lambda c: (c.evaluation_score, c.step)) if scored else None
        rows.append({
            "name": exp.name, "tab": exp.tab, "algorithm": exp.algorithm,
            "framework": exp.framework, "environment": exp.environment or exp.source,
            "dataset": exp.dataset, "multi_agent": exp.multi_agent, "recurrent": exp.recurrent,
            "checkpoints": len(exp.checkpoints),
            "best_step": best.step if best else None,
            "best_score": best.evaluation_score if best else None,
            "last_step": max((c.step for c in exp.checkpoints), default=None),
            "status": _status(exp),
            "error": (exp.training or {}).get("error"),
        })
    rows += [{"name": b.get("name"), "status": "broken", "error": b.get("error"),
              "checkpoints": 0} for b in broken]
    return _frame(rows, EXPERIMENT_COLUMNS)


def find_experiment(client: WorkbenchClient, name: str) -> ExperimentInfo:
    """The experiment called ``name``; ``KeyError`` naming the ones there are otherwise."""
    known = client.experiments()
    for exp in known:
        if exp.name == name:
            return exp
    raise KeyError(f"No experiment called {name!r}; there are: "
                   f"{', '.join(sorted(e.name for e in known)) or 'none'}.")


def checkpoints(experiment: str, *, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """The experiment's saved steps: step, training_score, evaluation_score, size_mb."""
    exp = find_experiment(resolve_client(client), experiment)
    rows = [{"step": c.step, "training_score": c.training_score,
             "evaluation_score": c.evaluation_score, "size_mb": c.size_mb}
            for c in sorted(exp.checkpoints, key=lambda c: c.step)]
    return _frame(rows, CHECKPOINT_COLUMNS)


def metrics(experiment: str, *, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """The experiment's logged scores by step, indexed by ``step`` (ready for ``.plot()``)."""
    exp = find_experiment(resolve_client(client), experiment)
    rows = [{"step": m.step, "training_score": m.training_score,
             "evaluation_score": m.evaluation_score}
            for m in sorted(exp.metrics, key=lambda m: m.step)]
    return _frame(rows, METRIC_COLUMNS).set_index("step")


def _agent_row(agent: AgentInfo) -> dict[str, Any]:
    # Built field by field, never from the whole object: nothing new on AgentInfo can reach
    # a frame unless it is named here.
    return {
        "name": agent.name, "tab": agent.tab, "experiment": agent.experiment,
        "status": agent.status, "connected": agent.connected,
        "checkpoint_rule": agent.checkpoint_rule, "checkpoint_step": agent.checkpoint_step,
        "algorithm": agent.algo, "base_model": agent.base_model,
        "backend": str(agent.options.get("backend") or "local"),
        "endpoint": agent.endpoint, "description": agent.description, "error": agent.error,
        "created_at": agent.created_at or None, "deployed_at": agent.deployed_at,
    }


def agents(*, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """One row per agent (both tabs): status, checkpoint, endpoint, backend; never a key."""
    return _frame((_agent_row(a) for a in resolve_client(client).agents()), AGENT_COLUMNS)


def requests(agent: str, limit: int | None = 1000, *,
             client: WorkbenchClient | None = None) -> pd.DataFrame:
    """The agent's request log, newest first: time (UTC), route, status, latency_ms,
    batch_size, error (status 400 or above). ``limit=None`` reads all the server keeps."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more (or None for all), got {limit}.")
    log = resolve_client(client).request_log(agent, limit=limit)
    rows = [{**{k: r.get(k) for k in ("time", "route", "status", "latency_ms", "batch_size")},
             "error": int(r.get("status") or 0) >= 400} for r in log]
    return _frame(rows, REQUEST_COLUMNS)


def traffic(agent: str, *, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """Per-minute traffic from the request log: minute (UTC), requests, errors, p50_ms, p95_ms.

    Oldest minute first; minutes without requests are left out.
    """
    log = requests(agent, limit=None, client=client)
    if log.empty:
        return _frame([], TRAFFIC_COLUMNS)
    grouped = log.assign(minute=log["time"].dt.floor("min")).groupby("minute", sort=True)
    rows = [{"minute": minute.timestamp(), "requests": len(group),
             "errors": int(group["error"].sum()),
             "p50_ms": float(np.percentile(group["latency_ms"].astype(float), 50)),
             "p95_ms": float(np.percentile(group["latency_ms"].astype(float), 95))}
            for minute, group in grouped]
    return _frame(rows, TRAFFIC_COLUMNS)
