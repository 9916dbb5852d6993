"""The notebook side of agents-workbench: the Agents panel and experiment logging.

``AgentsPanel()`` shows the Agents page for the workbench server this kernel belongs to;
``start_experiment(...)`` logs a training run so the panel can serve its checkpoints;
``import_checkpoint(path, env=...)`` imports checkpoints trained elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .importing import import_checkpoint
from .tracking import start_experiment

if TYPE_CHECKING:
    from .panel import AgentsPanel

__all__ = ["AgentsPanel", "import_checkpoint", "start_experiment"]


def __getattr__(name: str) -> Any:
    # The panel pulls in ipywidgets and anywidget; training scripts that only log
    # experiments should not pay for them.
    if name == "AgentsPanel":
        from .panel import AgentsPanel

        return AgentsPanel
    raise AttributeError(f"module 'agents_widget' has no attribute {name!r}")
