"""Arena projects, mapped onto a workspace's experiments.

The hosted Arena groups experiments into projects; a workspace has none of its own, so:

- an experiment belongs to the project named by ``extra.project`` in its ``experiment.json``
  when that is a usable name (``log_experiment(..., extra={"project": "robots"})``);
- otherwise to the project of its project type: ``classic`` (Classic RL) or ``advanced``
  (Advanced Training), the two tabs of the Agents panel.

A project is listed once at least one experiment is in it (the two type projects are always
listed, so ``arena projects set-default classic`` works on an empty workspace).

Example::

    project_of(store.get("cartpole-dqn").info)   # -> "classic"
    projects(store.list())                       # -> [{"name": "advanced", ...}, ...]
"""

from __future__ import annotations

from typing import Any

from workbench_core.store import Experiment, ExperimentInfo, StoreError, validate_name

TYPE_PROJECTS: dict[str, tuple[str, str]] = {
    "classic": ("Classic RL", "Classic RL experiments of this workspace (the panel's Classic "
                "RL tab)."),
    "advanced": ("Advanced Training", "Advanced Training experiments of this workspace (LLMs, "
                 "supervised models, LatentPPO; the panel's Advanced Training tab)."),
}


def project_of(info: ExperimentInfo) -> str:
    """The project an experiment is listed under."""
    named = info.extra.get("project")
    if isinstance(named, str):
        try:
            return validate_name(named, "project")
        except StoreError:
            pass  # an unusable name falls back to the type project rather than hiding it
    return info.project_type


def projects(experiments: list[Experiment]) -> list[dict[str, Any]]:
    """Project rows ``{name, type, description}`` (what ``arena projects list`` shows)."""
    rows: dict[str, dict[str, Any]] = {
        name: {"name": name, "type": kind, "description": text}
        for name, (kind, text) in TYPE_PROJECTS.items()
    }
    for experiment in experiments:
        name = project_of(experiment.info)
        if name not in rows:
            kind = TYPE_PROJECTS[experiment.info.project_type][0]
            rows[name] = {"name": name, "type": kind,
                          "description": f"Experiments whose experiment.json names project "
                          f"{name!r}."}
    return sorted(rows.values(), key=lambda row: row["name"])
