"""Activity the hub's idle culler sees: agents being called, and (optionally) Deployed agents.

jupyterhub-singleuser posts ``web_app.last_activity()`` to ``$JUPYTERHUB_ACTIVITY_URL`` every
``$JUPYTERHUB_ACTIVITY_INTERVAL`` seconds, and jupyterhub-idle-culler stops servers whose
``last_activity`` is older than its timeout. jupyter_server's ``last_activity()`` is the newest
of its own sources (API calls, kernels, terminals) and of every setting whose key ends in
``_last_activity``. Inference calls carry a Bearer key, not Jupyter auth, so jupyter_server
does not count them: the inference handlers stamp ``agents_workbench_last_activity`` after
each call that passed the key check (a stranger's refused calls must not keep a server
alive). Under
``deployed_keeps_alive`` this module also stamps it while any agent is Deployed.
"""

from __future__ import annotations

import os
from typing import Any

from tornado.ioloop import PeriodicCallback

from server_extension.handlers.base import stamp_activity
from server_extension.workspace.registry import Registry

ACTIVITY_INTERVAL_ENV = "JUPYTERHUB_ACTIVITY_INTERVAL"


def tick_seconds() -> float:
    """How often Deployed agents are counted: twice per hub report, at most once a minute."""
    try:
        interval = float(os.environ.get(ACTIVITY_INTERVAL_ENV, "") or 300)
    except ValueError:
        interval = 300.0
    return min(60.0, max(0.5, interval / 2))


class ActivityReporter:
    """Stamps :data:`LAST_ACTIVITY` while agents are Deployed, when ``keep_alive`` is on."""

    def __init__(self, settings: dict[str, Any], registry: Registry, *,
                 keep_alive: bool) -> None:
        self.settings = settings
        self.registry = registry
        self.keep_alive = keep_alive
        self._callback: PeriodicCallback | None = None

    def start(self) -> None:
        """Start the periodic check (nothing to do unless ``keep_alive``)."""
        if not self.keep_alive or self._callback is not None:
            return
        self._callback = PeriodicCallback(self.check, tick_seconds() * 1000)
        self._callback.start()

    def check(self) -> None:
        """Stamp activity if any agent is Deployed."""
        if any(record.status == "Deployed" for record in self.registry.list()):
            stamp_activity(self.settings)

    def stop(self) -> None:
        """Stop the periodic check."""
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
