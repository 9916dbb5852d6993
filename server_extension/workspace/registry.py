"""The registry: agents and their deployments in SQLite.

One file (``<root>/registry.sqlite3``, owner-only permissions) in WAL mode, so a crash at any
point leaves either the old or the new row, never half of one. The schema carries a version in
``PRAGMA user_version``; :data:`MIGRATIONS` upgrades older files in place.

Thread-safety: one connection guarded by a lock; every public method is one short transaction,
cheap enough to call from the event loop.

Example::

    reg = Registry(root / "registry.sqlite3")
    reg.create_agent(AgentRecord(name="cartpole", tab="classic", experiment="cartpole-dqn",
                                 checkpoint_rule="best", checkpoint_step=5000, algo="DQN"))
    reg.update("cartpole", status="Pending", connected=True)
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

STATUSES = ("Undeployed", "Pending", "Deployed", "Failed")
KEY_PREFIX = "awb_"

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE agents (
        name TEXT PRIMARY KEY,
        description TEXT NOT NULL DEFAULT '',
        tab TEXT NOT NULL CHECK (tab IN ('classic', 'advanced')),
        experiment TEXT NOT NULL,
        checkpoint_rule TEXT NOT NULL,
        checkpoint_step INTEGER NOT NULL,
        algo TEXT NOT NULL,
        base_model TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE deployments (
        agent TEXT PRIMARY KEY REFERENCES agents(name) ON DELETE CASCADE,
        deployment_id TEXT NOT NULL UNIQUE,
        api_key TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('Undeployed', 'Pending', 'Deployed', 'Failed')),
        connected INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        deployed_at REAL,
        updated_at REAL NOT NULL
    );
    """,
    # version 2: per-agent deployment options (decoder for LatentPPO, serving backend, ...)
    """
    ALTER TABLE agents ADD COLUMN options TEXT NOT NULL DEFAULT '{}'
    """,
]


class RegistryError(ValueError):
    """A request the registry refuses (duplicate or unknown name); the message says why."""


class NotFound(RegistryError):
    """No agent by that name."""


def new_api_key() -> str:
    """A fresh deployment key: 256 bits from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass
class AgentRecord:
    """One agent joined with its deployment (deployment fields are defaults when it has none)."""

    name: str
    tab: str
    experiment: str
    checkpoint_rule: str
    checkpoint_step: int
    algo: str
    description: str = ""
    base_model: str | None = None
    # How to serve the agent, chosen at creation: e.g. {"decoder": {...}} for LatentPPO or
    # {"backend": "ray", "replicas": 2}. Stored as JSON; see the management API for the keys.
    options: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    deployment_id: str | None = None
    api_key: str | None = field(default=None, repr=False)
    status: str = "Undeployed"
    connected: bool = False
    error: str | None = None
    deployed_at: float | None = None


_AGENT_COLUMNS = (
    "name", "description", "tab", "experiment", "checkpoint_rule", "checkpoint_step", "algo",
    "base_model", "options", "created_at", "updated_at",
)
_DEPLOYMENT_COLUMNS = ("status", "connected", "error", "deployed_at", "api_key", "deployment_id")


class Registry:
    """Agents and deployments, persisted in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Create the file owner-only before SQLite opens it: it holds API keys.
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self.credentials = CredentialCache(self)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.credentials.clear()

    def close(self) -> None:
        """Close the connection (the file stays)."""
        with self._lock:
            self._db.close()

    @property
    def schema_version(self) -> int:
        """The schema version stored in the file."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    _SELECT = (
        "SELECT a.*, d.deployment_id, d.api_key, d.status, d.connected, d.error, d.deployed_at"
        " FROM agents a LEFT JOIN deployments d ON d.agent = a.name"
    )

    @staticmethod
    def _record(row: sqlite3.Row) -> AgentRecord:
        data: dict[str, Any] = {f.name: row[f.name] for f in fields(AgentRecord)}
        data["connected"] = bool(data["connected"])
        data["options"] = json.loads(data["options"] or "{}")
        data["status"] = data["status"] or "Undeployed"
        return AgentRecord(**data)

    def list(self) -> list[AgentRecord]:
        """Every agent, oldest first."""
        with self._lock:
            rows = self._db.execute(self._SELECT + " ORDER BY a.created_at, a.name").fetchall()
        return [self._record(r) for r in rows]

    def get(self, name: str) -> AgentRecord:
        """One agent; :class:`NotFound` if there is none by that name."""
        with self._lock:
            row = self._db.execute(self._SELECT + " WHERE a.name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"No agent named {name!r}.")
        return self._record(row)

    def create_agent(self, record: AgentRecord) -> AgentRecord:
        """Insert an agent (status Undeployed, no deployment yet)."""
        values = [json.dumps(record.options, sort_keys=True) if c == "options"
                  else getattr(record, c) for c in _AGENT_COLUMNS]
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO agents ({', '.join(_AGENT_COLUMNS)}) "  # noqa: S608 - fixed column names
                    f"VALUES ({', '.join('?' for _ in _AGENT_COLUMNS)})",
                    values,
                )
        except sqlite3.IntegrityError as exc:
            raise RegistryError(
                f"An agent named {record.name!r} already exists; choose another name."
            ) from exc
        return self.get(record.name)

    def delete_agent(self, name: str) -> None:
        """Remove an agent and its deployment."""
        with self._tx() as db:
            cur = db.execute("DELETE FROM agents WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise NotFound(f"No agent named {name!r}.")

    def ensure_deployment(self, name: str) -> AgentRecord:
        """Give the agent a deployment (id and key) if it has none; keep an existing one."""
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM agents WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f"No agent named {name!r}.")
            db.execute(
                "INSERT OR IGNORE INTO deployments (agent, deployment_id, api_key, status,"
                " connected, updated_at) VALUES (?, ?, ?, 'Undeployed', 0, ?)",
                (name, "dep_" + secrets.token_hex(8), new_api_key(), now),
            )
        return self.get(name)

    def update(self, name: str, **changes: Any) -> AgentRecord:
        """Change deployment fields (status, connected, error, deployed_at, api_key)."""
        unknown = set(changes) - set(_DEPLOYMENT_COLUMNS)
        if unknown:
            raise ValueError(f"Not deployment fields: {sorted(unknown)}")
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"Unknown status {changes['status']!r}")
        if "connected" in changes:
            changes["connected"] = int(bool(changes["connected"]))
        changes["updated_at"] = time.time()
        assignments = ", ".join(f"{c} = ?" for c in changes)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE deployments SET {assignments} WHERE agent = ?",  # noqa: S608 - checked names
                [*changes.values(), name],
            )
        if cur.rowcount == 0:
            raise NotFound(f"Agent {name!r} has no deployment yet; connect it first.")
        return self.get(name)

    def rotate_key(self, name: str) -> str:
        """Replace the agent's key; the old one is gone once this returns."""
        key = new_api_key()
        self.update(name, api_key=key)
        return key


# -- access tokens (schema 3) ------------------------------------------------------------------
# Kept apart from the agent tables and methods above: tokens belong to the workspace, not to
# an agent. Only a token's SHA-256 is stored; server_extension/workspace/tokens.py mints and
# checks them.

MIGRATIONS.append(
    """
    CREATE TABLE access_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        last_used_at REAL
    )
    """
)


@dataclass(frozen=True)
class TokenRecord:
    """One access token as stored: never the secret itself."""

    id: str
    name: str
    created_at: float
    last_used_at: float | None = None


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(id=row["id"], name=row["name"], created_at=row["created_at"],
                       last_used_at=row["last_used_at"])


def add_token(registry: Registry, record: TokenRecord, secret_sha256: str) -> TokenRecord:
    """Store a new token under its hash."""
    with registry._tx() as db:
        db.execute(
            "INSERT INTO access_tokens (id, name, secret_sha256, created_at) VALUES (?, ?, ?, ?)",
            (record.id, record.name, secret_sha256, record.created_at))
    return record


def list_tokens(registry: Registry) -> list[TokenRecord]:
    """Every token, oldest first."""
    with registry._lock:
        rows = registry._db.execute(
            "SELECT id, name, created_at, last_used_at FROM access_tokens"
            " ORDER BY created_at, id").fetchall()
    return [_token(r) for r in rows]


def token_by_hash(registry: Registry, secret_sha256: str) -> TokenRecord | None:
    """The token whose secret hashes to ``secret_sha256``, or ``None`` (revoked or never minted)."""
    with registry._lock:
        row = registry._db.execute(
            "SELECT id, name, created_at, last_used_at FROM access_tokens"
            " WHERE secret_sha256 = ?", (secret_sha256,)).fetchone()
    return None if row is None else _token(row)


def touch_token(registry: Registry, token_id: str, when: float) -> None:
    """Record that the token was used at ``when``."""
    with registry._tx() as db:
        db.execute("UPDATE access_tokens SET last_used_at = ? WHERE id = ?", (when, token_id))


def delete_token(registry: Registry, token_id: str) -> bool:
    """Revoke a token; ``False`` if there was none with that id."""
    with registry._tx() as db:
        cur = db.execute("DELETE FROM access_tokens WHERE id = ?", (token_id,))
    return cur.rowcount > 0


@dataclass(frozen=True)
class Credential:
    """What an inference request is checked against: the registry's word, not a cached copy."""

    deployment_id: str
    api_key: str = field(repr=False)
    status: str
    connected: bool


class CredentialCache:
    """Each agent's current :class:`Credential`, re-read only when the database changed.

    Several servers may share one registry file (JupyterLab and the Voila app over one
    workspace). SQLite's ``PRAGMA data_version`` changes whenever *another* connection
    commits, so one pragma per lookup (a read of the WAL index in shared memory, a few
    microseconds) tells whether the cached answers still hold; this connection's own writes
    clear the cache in :meth:`Registry._tx`. A key rotated, an agent disconnected or deleted
    through any server is therefore refused by every server on its next request.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._version: int | None = None
        self._known: dict[str, Credential | None] = {}

    def clear(self) -> None:
        """Forget every cached answer (this connection just wrote)."""
        self._version = None

    def get(self, name: str) -> Credential | None:
        """The agent's credential, or ``None`` when it has no deployment (or does not exist)."""
        reg = self._registry
        with reg._lock:
            version = int(reg._db.execute("PRAGMA data_version").fetchone()[0])
            if version != self._version:
                self._known = {}
                self._version = version
            elif name in self._known:
                return self._known[name]
            row = reg._db.execute(
                "SELECT deployment_id, api_key, status, connected FROM deployments"
                " WHERE agent = ?", (name,)).fetchone()
            found = None if row is None else Credential(
                deployment_id=row[0], api_key=row[1], status=row[2], connected=bool(row[3]))
            # Names come from URLs: keep the cache from growing with made-up ones.
            if len(self._known) < 4096:
                self._known[name] = found
            return found


def data_version(registry: Registry) -> int:
    """The registry file's change counter as this connection sees it (see CredentialCache)."""
    with registry._lock:
        return int(registry._db.execute("PRAGMA data_version").fetchone()[0])


# -- checkpoint history (schema 4) -------------------------------------------------------------
# Every change of a live agent's checkpoint, asked for through any server of the workspace, is
# a row here: the server that loads the agents (reconciler.py) picks up rows still "requested",
# loads the checkpoint beside the one serving and writes how it ended. The agent's own columns
# (experiment, checkpoint_rule, checkpoint_step) always name the checkpoint serving.

MIGRATIONS.append(
    """
    CREATE TABLE checkpoint_changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        agent TEXT NOT NULL REFERENCES agents(name) ON DELETE CASCADE,
        experiment TEXT NOT NULL,
        checkpoint_rule TEXT NOT NULL,
        checkpoint_step INTEGER NOT NULL,
        kind TEXT NOT NULL DEFAULT 'change' CHECK (kind IN ('change', 'split')),
        percent INTEGER,
        outcome TEXT NOT NULL CHECK (outcome IN
            ('requested', 'loading', 'serving', 'replaced', 'failed', 'canary', 'aborted')),
        error TEXT,
        server TEXT NOT NULL DEFAULT '',
        user TEXT NOT NULL DEFAULT '',
        rollback_of INTEGER,
        requested_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX checkpoint_changes_agent ON checkpoint_changes (agent, id)
    """
)

# requested: waiting for the serving server; loading: its worker is starting beside the old;
# serving: the agent answers with it now; replaced: it served before a later change; failed: it
# never served (``error`` says why) and the checkpoint before it kept serving. A split (kind
# ``split``) loads the same way, then answers ``percent`` % of the calls as the ``canary``
# until Promote (``serving``) or Abort (``aborted``).
CHANGE_OUTCOMES = ("requested", "loading", "serving", "replaced", "failed", "canary", "aborted")


@dataclass(frozen=True)
class CheckpointChange:
    """One checkpoint an agent served or was asked to serve."""

    id: int
    agent: str
    experiment: str
    checkpoint_rule: str
    checkpoint_step: int
    outcome: str
    requested_at: float
    kind: str = "change"
    percent: int | None = None
    error: str | None = None
    server: str = ""
    user: str = ""
    rollback_of: int | None = None
    finished_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The REST shape (every field)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _change(row: sqlite3.Row) -> CheckpointChange:
    return CheckpointChange(**{f.name: row[f.name] for f in fields(CheckpointChange)})


def request_change(registry: Registry, agent: str, *, experiment: str, rule: str, step: int,
                   server: str = "", user: str = "", rollback_of: int | None = None,
                   kind: str = "change", percent: int | None = None) -> CheckpointChange:
    """Record that ``agent`` should move to ``experiment``'s ``step`` (``kind="split"``: serve
    it beside the current one for ``percent`` % of the calls); refused while another change of
    it is still under way or a split is running (:class:`RegistryError`)."""
    with registry._tx() as db:
        if db.execute("SELECT 1 FROM agents WHERE name = ?", (agent,)).fetchone() is None:
            raise NotFound(f"No agent named {agent!r}.")
        busy = db.execute(
            "SELECT id, outcome FROM checkpoint_changes WHERE agent = ? AND outcome IN"
            " ('requested', 'loading', 'canary')", (agent,)).fetchone()
        if busy is not None and busy[1] == "canary":
            raise RegistryError(
                f"Agent {agent!r} is splitting its traffic with a canary (change {busy[0]}); "
                "Promote or Abort it first.")
        if busy is not None:
            raise RegistryError(
                f"Agent {agent!r} is already changing checkpoint (change {busy[0]}); wait "
                "until it serves or fails, then try again.")
        cur = db.execute(
            "INSERT INTO checkpoint_changes (agent, experiment, checkpoint_rule, checkpoint_step,"
            " kind, percent, outcome, server, user, rollback_of, requested_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'requested', ?, ?, ?, ?)",
            (agent, experiment, rule, step, kind, percent, server, user, rollback_of,
             time.time()))
        change_id = int(cur.lastrowid or 0)
    return get_change(registry, change_id)


def canary_of(registry: Registry, agent: str) -> CheckpointChange | None:
    """The agent's running split (outcome ``canary``), if any."""
    with registry._lock:
        row = registry._db.execute(
            "SELECT * FROM checkpoint_changes WHERE agent = ? AND outcome = 'canary'"
            " ORDER BY id DESC LIMIT 1", (agent,)).fetchone()
    return None if row is None else _change(row)


def get_change(registry: Registry, change_id: int) -> CheckpointChange:
    """One change by id (:class:`NotFound` when there is none)."""
    with registry._lock:
        row = registry._db.execute(
            "SELECT * FROM checkpoint_changes WHERE id = ?", (change_id,)).fetchone()
    if row is None:
        raise NotFound(f"No checkpoint change {change_id}.")
    return _change(row)


def checkpoint_history(registry: Registry, agent: str, limit: int = 50) -> list[CheckpointChange]:
    """The agent's changes, newest first."""
    with registry._lock:
        rows = registry._db.execute(
            "SELECT * FROM checkpoint_changes WHERE agent = ? ORDER BY id DESC LIMIT ?",
            (agent, limit)).fetchall()
    return [_change(r) for r in rows]


def open_changes(registry: Registry) -> list[CheckpointChange]:
    """Changes no server has taken up yet (outcome ``requested``), oldest first."""
    with registry._lock:
        rows = registry._db.execute(
            "SELECT * FROM checkpoint_changes WHERE outcome = 'requested' ORDER BY id").fetchall()
    return [_change(r) for r in rows]


def mark_change(registry: Registry, change_id: int, outcome: str,
                error: str | None = None) -> None:
    """Set a change's outcome (``loading``, ``failed``)."""
    if outcome not in CHANGE_OUTCOMES:
        raise ValueError(f"Unknown outcome {outcome!r}")
    finished = None if outcome in ("requested", "loading") else time.time()
    with registry._tx() as db:
        db.execute("UPDATE checkpoint_changes SET outcome = ?, error = ?, finished_at = ?"
                   " WHERE id = ?", (outcome, error, finished, change_id))


def commit_change(registry: Registry, change: CheckpointChange) -> AgentRecord:
    """``change`` serves now: the agent's checkpoint columns name it, the one before is
    ``replaced``; one transaction, so every server reads either the old or the new state."""
    now = time.time()
    rule = change.checkpoint_rule
    with registry._tx() as db:
        db.execute("UPDATE checkpoint_changes SET outcome = 'replaced' WHERE agent = ?"
                   " AND outcome = 'serving'", (change.agent,))
        db.execute("UPDATE checkpoint_changes SET outcome = 'serving', error = NULL,"
                   " finished_at = ? WHERE id = ?", (now, change.id))
        db.execute("UPDATE agents SET experiment = ?, checkpoint_rule = ?, checkpoint_step = ?,"
                   " updated_at = ? WHERE name = ?",
                   (change.experiment, rule, change.checkpoint_step, now, change.agent))
    return registry.get(change.agent)


def record_initial(registry: Registry, record: AgentRecord, server: str = "",
                   user: str = "") -> None:
    """Give an agent that never changed checkpoint a ``serving`` row for the one it was
    created with, so its history (and Roll back) starts there."""
    with registry._tx() as db:
        if db.execute("SELECT 1 FROM checkpoint_changes WHERE agent = ? LIMIT 1",
                      (record.name,)).fetchone() is not None:
            return
        db.execute(
            "INSERT INTO checkpoint_changes (agent, experiment, checkpoint_rule, checkpoint_step,"
            " outcome, server, user, requested_at, finished_at)"
            " VALUES (?, ?, ?, ?, 'serving', ?, ?, ?, ?)",
            (record.name, record.experiment, record.checkpoint_rule, record.checkpoint_step,
             server, user, record.created_at, record.created_at))


def previous_checkpoint(registry: Registry, agent: str) -> CheckpointChange | None:
    """The checkpoint that served before the one serving now (what Roll back returns to)."""
    with registry._lock:
        row = registry._db.execute(
            "SELECT * FROM checkpoint_changes WHERE agent = ? AND outcome = 'replaced'"
            " ORDER BY finished_at DESC, id DESC LIMIT 1", (agent,)).fetchone()
    return None if row is None else _change(row)


def end_unfinished_changes(registry: Registry, reason: str) -> int:
    """Close the changes a stopped serving server left open: ``loading`` ones fail and running
    splits (``canary``) are aborted, both with ``reason``, so the agents can change again.
    ``requested`` ones stay for the server that now loads. Returns how many were closed."""
    now = time.time()
    with registry._tx() as db:
        cur = db.execute(
            "UPDATE checkpoint_changes SET outcome = CASE outcome WHEN 'loading' THEN 'failed'"
            " ELSE 'aborted' END, error = ?, finished_at = ?"
            " WHERE outcome IN ('loading', 'canary')", (reason, now))
    return int(cur.rowcount or 0)
