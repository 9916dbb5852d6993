"""Which server of a workspace loads its agents: a fenced lease in the registry database.

Several servers may share one workspace (reconciler.py). Exactly one of them, the *leader*,
loads the connected agents. Leadership is one row of the registry's SQLite file::

    serving_lease(epoch, pid, url, beat_at, locked)

- **Epoch (fencing).** The leader is the server whose epoch is the row's. Taking the lease,
  automatically or by force, raises the epoch in one ``BEGIN IMMEDIATE`` transaction, so two
  servers can never both see themselves in the row. A leader that was frozen (SIGSTOP, Ctrl-Z,
  a hung loop) and wakes up finds another epoch at its next heartbeat, stops its workers and
  follows (:meth:`ServingLease.beat` returns ``False``).
- **Heartbeat.** The leader writes ``beat_at`` every :data:`BEAT_S` from its event loop, so a
  frozen loop stops beating. After ``silence_s`` without a beat the others say "the serving
  server (URL) is not responding since ..." and offer a takeover (:meth:`take_over`).
- **Death.** The leader also holds an exclusive ``flock`` on the registry file itself. The
  kernel drops it when the process dies, so a follower that gets the lock knows the leader is
  gone and takes over at once, without waiting for the heartbeat to go stale.

Why the registry file and not a lock file of its own (the old ``serving.lock``): a lock file
can be unlinked while servers run, and the next server then locks a new file beside the old
one and loads every agent a second time. The registry file cannot be swapped that way without
losing the registry itself, and the epoch row decides even then: a server whose epoch is not
the row's never loads. ``flock`` locks are separate from the POSIX (``fcntl``) locks SQLite
takes on the same file; the one rule is to never *close* a descriptor of the file while SQLite
has it open in this process (closing drops every POSIX lock the process holds on it), so the
descriptor lives as long as the server and is only unlocked, never closed, on release.

Threading: every method runs on the event loop (each is one short SQLite transaction).

Example::

    lease = ServingLease(root, registry, url="http://127.0.0.1:8888/")
    lease.try_acquire()           # True for the first server on this workspace
    lease.beat()                  # every second, on the leader; False: it lost the lease
    lease.silent_since()          # on a follower: when the leader's beats stopped, or None
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from server_extension.workspace.registry import Registry

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the epoch alone decides
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("agents_workbench.workspace")

BEAT_S = 1.0  # how often the leader writes its heartbeat
SILENCE_S = 10.0  # default: seconds without a beat before followers say the leader is silent

# Created on first use rather than through the registry's numbered migrations: it is state of
# the running servers, not of the agents, and an older server opening the file ignores it.
_TABLE = """
CREATE TABLE IF NOT EXISTS serving_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL,
    pid INTEGER,
    url TEXT NOT NULL DEFAULT '',
    beat_at REAL,
    locked INTEGER NOT NULL DEFAULT 0
)
"""


class ServingLease:
    """This server's view of the workspace's serving lease (see the module docstring)."""

    def __init__(self, root: Path, registry: Registry, url: str = "",
                 silence_s: float = SILENCE_S) -> None:
        self.root = Path(root)
        self.path = registry.path  # the file whose flock marks a live leader
        self.registry = registry
        self._url = url
        self.silence_s = silence_s
        self.epoch: int | None = None  # ours while we lead
        self._locked = False  # we hold the flock
        self._fd: int | None = None
        self._last_beat = 0.0
        with registry._lock:  # one connection, one lock (as data_version uses them)
            registry._db.execute(_TABLE)
        self._open()

    def _open(self) -> None:
        if fcntl is None:
            return
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK)
        except OSError as exc:
            log.warning("Cannot open %s for the serving lock (%s); this server takes over "
                        "only when told to", self.path, exc)
            return
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)  # SQLite opened it, so this cannot happen short of a swap under us
            return
        self._fd = fd

    @property
    def url(self) -> str:
        """This server's URL, which the row names while it leads."""
        return self._url

    @url.setter
    def url(self, value: str) -> None:
        self._url = value
        self._last_beat = 0.0  # the next beat writes it, so followers point callers there

    # -- the lock -----------------------------------------------------------------------

    def _lock(self) -> bool:
        if fcntl is None:
            return True
        if self._locked:
            return True
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._locked = True
        return True

    def _unlock(self) -> None:
        if self._locked and self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # never close: see the module docstring
        self._locked = False

    # -- the row ------------------------------------------------------------------------

    def _row(self) -> dict[str, Any] | None:
        reg = self.registry
        with reg._lock:
            row = reg._db.execute(
                "SELECT epoch, pid, url, beat_at, locked FROM serving_lease WHERE id = 1"
            ).fetchone()
        if row is None:
            return None
        return {"epoch": int(row[0]), "pid": row[1], "url": str(row[2] or ""),
                "beat_at": row[3], "locked": bool(row[4])}

    def _claim(self, *, force: bool) -> bool:
        """Raise the epoch and write ourselves in, if the row lets us; ``True`` when we did."""
        reg = self.registry
        now = time.time()
        with reg._lock:
            db = reg._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT epoch, pid, beat_at, locked FROM serving_lease "
                                 "WHERE id = 1").fetchone()
                epoch = int(row[0]) if row is not None else 0
                beating = (row is not None and row[1] is not None and row[2] is not None
                           and now - float(row[2]) <= self.silence_s)
                # Automatic: a leader holding no flock (it took over by force and the frozen
                # one has not let go yet) but beating lives; leave the lock to it. By force:
                # only from a leader that stopped beating (two takeovers at once: one wins).
                if beating and (force or not row[3]):
                    db.execute("ROLLBACK")
                    return False
                epoch += 1
                db.execute(
                    "INSERT INTO serving_lease (id, epoch, pid, url, beat_at, locked) "
                    "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET epoch = "
                    "excluded.epoch, pid = excluded.pid, url = excluded.url, "
                    "beat_at = excluded.beat_at, locked = excluded.locked",
                    (epoch, os.getpid(), self.url, now, int(self._locked)))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        self.epoch = epoch
        self._last_beat = time.monotonic()
        return True

    # -- what the servers call ----------------------------------------------------------

    @property
    def held(self) -> bool:
        """Whether this server leads (as of its last heartbeat)."""
        return self.epoch is not None

    def try_acquire(self) -> bool:
        """Take the lease if its holder is gone (or there is none); ``True`` when we lead.

        Getting the flock proves every earlier holder of it dead or released. A leader that
        took over by force holds no flock until the frozen one lets go; while it beats, the
        flock is handed back to it.
        """
        if self.held:
            return self.beat()
        if not self._lock():
            return False
        try:
            if self._claim(force=False):
                return True
        except Exception as exc:  # noqa: BLE001 - a full or locked database: try again later
            log.warning("Could not take the serving lease: %s", exc)
        self._unlock()
        return False

    def take_over(self) -> bool:
        """Lead now, the leader having stopped beating (frozen or gone); ``False`` when it
        beats (another server may have taken over a moment ago).

        The old leader, should it wake, sees the new epoch at its next beat and steps down.
        """
        if self.held:
            return True
        self._lock()  # free when the old leader is dead; held by it while it is frozen
        if self._claim(force=True):
            return True
        self._unlock()
        return False

    def beat(self) -> bool:
        """The leader's heartbeat; ``False`` when another server has taken the lease since
        (this one must stop serving). Writes at most every :data:`BEAT_S`."""
        if self.epoch is None:
            return False
        if time.monotonic() - self._last_beat < BEAT_S:
            return True
        self._lock()  # a leader by force gets the flock once the old one lets it go
        reg = self.registry
        try:
            with reg._lock:
                # Not Registry._tx: a beat changes no credential, so the cache stays.
                cursor = reg._db.execute(
                    "UPDATE serving_lease SET beat_at = ?, pid = ?, url = ?, locked = ? "
                    "WHERE id = 1 AND epoch = ?",
                    (time.time(), os.getpid(), self.url, int(self._locked), self.epoch))
                lost = cursor.rowcount == 0
        except Exception as exc:  # noqa: BLE001 - a full disk must not stop serving
            log.warning("Could not write the serving heartbeat: %s", exc)
            return True
        self._last_beat = time.monotonic()
        if lost:
            log.warning("Another server took over serving this workspace (%s); this one "
                        "stops its agents and follows", (self._row() or {}).get("url"))
            self.epoch = None
            self._unlock()
            return False
        return True

    def release(self) -> None:
        """Give the lease up (the server is stopping); another server takes it at once."""
        if self.epoch is not None:
            reg = self.registry
            with contextlib.suppress(Exception), reg._lock:
                reg._db.execute(
                    "UPDATE serving_lease SET pid = NULL, beat_at = NULL, locked = 0 "
                    "WHERE id = 1 AND epoch = ?", (self.epoch,))
            self.epoch = None
        self._unlock()

    def close(self) -> None:
        """Close the lock's descriptor; only after the registry's connection is closed."""
        self.release()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> dict[str, Any]:
        """``{"pid", "url", "beat_at"}`` of the leader as the row says (``{}``: none)."""
        try:
            row = self._row()
        except Exception:  # noqa: BLE001 - a closed or broken registry: no holder known
            return {}
        if row is None or row["pid"] is None:
            return {}
        return {"pid": row["pid"], "url": row["url"], "beat_at": row["beat_at"]}

    def holder_url(self) -> str | None:
        """The URL of the serving server, when another server holds the lease."""
        if self.held:
            return None
        url = self.holder().get("url")
        return url if isinstance(url, str) and url else None

    def silent_since(self) -> float | None:
        """When another server leads but has not beaten for ``silence_s``: the time of its
        last beat (epoch seconds). ``None`` when it beats, or when this server leads."""
        if self.held:
            return None
        beat_at = self.holder().get("beat_at")
        if beat_at is None or time.time() - float(beat_at) <= self.silence_s:
            return None
        return float(beat_at)

    def state(self) -> dict[str, Any]:
        """What the management API's ``serving`` route shows."""
        holder = self.holder()
        silent = self.silent_since()
        return {
            "serving_here": self.held,
            "serving_url": self.url if self.held else holder.get("url") or None,
            "responding": silent is None,
            "silent_since": silent,
            "silence_s": self.silence_s,
            "can_take_over": not self.held and silent is not None,
            "message": silence_message(holder.get("url") or "", silent) if silent else None,
        }


def silence_message(url: str, since: float) -> str:
    """The sentence followers show while the serving server does not beat."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    return (f"The serving server ({url or 'unknown URL'}) is not responding since {when}; "
            "agents wait for it. If it is stopped or frozen, take over serving here: "
            "'Take over serving' in the Agents panel, or POST agents/api/serving/takeover.")
