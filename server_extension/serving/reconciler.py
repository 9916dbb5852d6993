"""Several servers on one workspace: which one loads the agents, and how the others keep up.

JupyterLab and the Voila app (or two Lab servers, or a restart while another runs) may serve
one workspace folder. The registry is the one source of truth for all of them; this module
decides who *loads* its agents and keeps each server's in-memory state in line with it:

- **One serving server per workspace.** The first server to take an exclusive ``flock`` on
  ``<root>/serving.lock`` loads every connected agent; it writes its URL into the file. The
  others load nothing: their management API reads and writes the same registry (Connect marks
  an agent Pending, the serving server sees that and loads it), their panels show the serving
  server's endpoint, and their inference routes answer 404 naming it. Each agent is loaded
  once per machine, and only the serving server writes statuses, so every panel shows the
  same ones. When the serving server stops (or dies: the kernel drops its lock), another
  takes the lock within one reconcile period and loads the connected agents.
- **Reconcile.** Every :data:`RECONCILE_S` each server compares the registry's change counter
  (``PRAGMA data_version``, a few microseconds) with the last it saw; only when something
  changed does it re-read the agents, unload runtimes of agents disconnected, deleted or
  re-created elsewhere, and (serving server) start loading the ones newly connected. Keys
  need no reconcile: every inference request checks its key against the registry
  (``Registry.credentials``), so a rotation through any server is refused at once.

Threading: everything here runs on the Tornado event loop.

Example::

    lease = ServingLease(root, url="http://127.0.0.1:8888/")
    lease.try_acquire()          # True for the first server on this workspace
    reconciler = Reconciler(deployer, lease)
    reconciler.start()
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tornado.ioloop import PeriodicCallback

from server_extension.workspace.registry import data_version
from workbench_core import regular_files

if TYPE_CHECKING:
    from server_extension.serving.deployer import Deployer

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: every server serves (no shared lock)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("agents_workbench.workspace")
LOCK_NAME = "serving.lock"
RECONCILE_S = 0.25


class ServingLease:
    """An exclusive, process-lifetime lock on a workspace: held by the server that loads."""

    def __init__(self, root: Path, url: str = "") -> None:
        self.path = Path(root) / LOCK_NAME
        self.url = url
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this server holds the lease (and so loads the agents)."""
        return self._fd is not None or fcntl is None

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; ``True`` when this server now holds it."""
        if self.held:
            self._write_holder()  # the URL may be known only now
            return True
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            log.warning("Cannot open %s (%s); this server will not load agents", self.path, exc)
            return False
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # a FIFO or device planted there: never a lease
            log.warning("%s is not a regular file; remove it so that a server can load agents",
                        self.path)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.fchmod(fd, 0o600)
        self._fd = fd
        self._write_holder()
        return True

    def _write_holder(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "url": self.url}).encode(), 0)

    def release(self) -> None:
        """Give the lease up (the server is stopping); another server may take it."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def holder(self) -> dict[str, Any]:
        """``{"pid", "url"}`` of the serving server as its lock file says (``{}``: unknown)."""
        try:
            # Only the lock file this class writes: never a link, FIFO or device put there.
            data = json.loads(regular_files.read_capped(self.path, 4096, follow_links=False)
                              or b"{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def holder_url(self) -> str | None:
        """The URL of the serving server, when another server holds the lease."""
        if self.held:
            return None
        url = self.holder().get("url")
        return url if isinstance(url, str) and url else None


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
        """One check: take the lease if it is free, then sync with the registry if it changed."""
        deployer = self.deployer
        took_over = False
        if not deployer.serves and self.lease.try_acquire():
            log.info("This server now loads the workspace's agents (%s)", self.lease.path)
            deployer.serves = True
            deployer.warm_templates()  # a follower started none
            took_over = True
        version = data_version(deployer.registry)
        if version == self._seen and not took_over:
            return
        self._seen = version
        deployer.sync(reload_deployed=took_over)
