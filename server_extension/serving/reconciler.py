"""Several servers on one workspace: which one loads the agents, and how the others keep up.

JupyterLab and the Voila app (or two Lab servers, or a restart while another runs) may serve
one workspace folder. The registry is the one source of truth for all of them; this module
decides who *loads* its agents and keeps each server's in-memory state in line with it:

- **One serving server per workspace.** The server holding the workspace's serving lease
  (lease.py: a fenced row in the registry database, a heartbeat, and a ``flock`` on the
  registry file) loads every connected agent. The others load nothing: their management API
  reads and writes the same registry (Connect marks an agent Pending, the serving server sees
  that and loads it), their panels show the serving server's endpoint, and their inference
  routes answer 404 naming it. Each agent is loaded once per machine, and only the serving
  server writes statuses, so every panel shows the same ones. When the serving server stops
  (or dies: the kernel drops its lock), another takes the lease within one reconcile period
  and loads the connected agents. When it is frozen (its heartbeat stops), the others say so
  and take over when told to (:meth:`Reconciler.take_over`); the frozen one, should it wake,
  finds the lease gone at its next beat, stops its workers and follows.
- **Reconcile.** Every :data:`RECONCILE_S` each server compares the registry's change counter
  (``PRAGMA data_version``, a few microseconds) with the last it saw; only when something
  changed does it re-read the agents, unload runtimes of agents disconnected, deleted or
  re-created elsewhere, and (serving server) start loading the ones newly connected. Keys
  need no reconcile: every inference request checks its key against the registry
  (``Registry.credentials``), so a rotation through any server is refused at once.

Threading: everything here runs on the Tornado event loop.

Example::

    lease = ServingLease(root, registry, url="http://127.0.0.1:8888/")
    lease.try_acquire()          # True for the first server on this workspace
    reconciler = Reconciler(deployer, lease)
    reconciler.start()
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tornado.ioloop import PeriodicCallback

from server_extension.serving.lease import ServingLease
from server_extension.workspace.registry import data_version

if TYPE_CHECKING:
    from server_extension.serving.deployer import Deployer

__all__ = ["RECONCILE_S", "Reconciler", "ServingLease"]

log = logging.getLogger("agents_workbench.workspace")
RECONCILE_S = 0.25


class Reconciler:
    """Keeps one server's live runtimes and lease in line with the shared registry."""

    def __init__(self, deployer: Deployer, lease: ServingLease,
                 period_s: float = RECONCILE_S) -> None:
        self.deployer = deployer
        self.lease = lease
        self.period_s = period_s
        self._seen: int | None = None
        self._timer: PeriodicCallback | None = None

    def start(self) -> None:
        """Check every ``period_s`` seconds (on the running loop)."""
        self._timer = PeriodicCallback(self.tick, self.period_s * 1000)
        self._timer.start()

    def stop(self) -> None:
        """Stop checking."""
        if self._timer is not None:
            self._timer.stop()

    def tick(self) -> None:
        """One check: beat (leader) or take the lease if it is free (follower), then sync with
        the registry if it changed."""
        deployer = self.deployer
        took_over = False
        if deployer.serves:
            # First thing after a freeze too: a leader that lost the lease meanwhile stops
            # its workers before it could load anything more.
            if not self.lease.beat():
                deployer.step_down()
        elif self.lease.try_acquire():
            self._lead()
            took_over = True
        version = data_version(deployer.registry)
        if version == self._seen and not took_over:
            return
        self._seen = version
        deployer.sync(reload_deployed=took_over)

    def _lead(self) -> None:
        log.info("This server now loads the workspace's agents (lease in %s)", self.lease.path)
        self.deployer.serves = True
        self.deployer.warm_templates()  # a follower started none

    def take_over(self) -> bool:
        """Lead now, even though another server holds the lease (it stopped beating: frozen
        or gone); ``False`` when the leader beats after all."""
        if self.deployer.serves:
            return True
        if not self.lease.take_over():
            return False
        self._lead()
        self._seen = data_version(self.deployer.registry)
        self.deployer.sync(reload_deployed=True)
        return True
