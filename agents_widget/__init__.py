"""The notebook side of agents-workbench: the Agents panel, experiment logging, and data.

``AgentsPanel()`` shows the Agents page for the workbench server this kernel belongs to;
``start_experiment(...)`` logs a training run so the panel can serve its checkpoints.
``experiments()``, ``checkpoints(name)``, ``metrics(name)``, ``agents()``, ``traffic(agent)``
and ``requests(agent)`` return pandas DataFrames; ``evaluate(agent)``, ``compare([...])``
and ``head_to_head(a, b)`` play deployed agents through their live endpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .tracking import start_experiment

if TYPE_CHECKING:
    from .dataframes import agents, checkpoints, experiments, metrics, requests, traffic
    from .evaluation import compare, evaluate, head_to_head
    from .panel import AgentsPanel

__all__ = ["AgentsPanel", "agents", "checkpoints", "compare", "evaluate", "experiments",
           "head_to_head", "metrics", "requests", "start_experiment", "traffic"]

# Loaded on first use: the panel pulls in ipywidgets and anywidget, the data functions
# pandas; training scripts that only log experiments should pay for neither.
_LAZY = {
    "AgentsPanel": "panel",
    **dict.fromkeys(("agents", "checkpoints", "experiments", "metrics", "requests", "traffic"),
                    "dataframes"),
    **dict.fromkeys(("compare", "evaluate", "head_to_head"), "evaluation"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agents_widget' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
