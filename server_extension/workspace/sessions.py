"""Chat sessions of LLM agents, persisted in SQLite so they survive a server restart.

A session belongs to one agent and holds its messages (``[{role, content}]``) as JSON. The file
(``<root>/sessions.sqlite3``) is owner-only like the registry; it holds users' conversations.

Each session records who started it (``owner``: ``token:<id>`` for a workspace access token,
``deployment`` for the agent's key; see callers.py). Readers pass ``owner`` to see only that
caller's sessions, or ``None`` to see every session of the agent (the deployment key, and
agents whose memory scope is ``organization``).

Bounded: an agent keeps at most ``max_per_agent`` sessions and one caller (the client's
address) at most ``max_per_caller`` of them; creating one past either cap drops the least
recently updated first, so a client looping over new sessions evicts its own oldest ones
before anybody else's. Listing is paged (``limit``/``offset``).

Thread-safety: one connection behind a lock; each method is one short transaction.

Example::

    sessions = SessionStore(root / "sessions.sqlite3")
    sessions.append("tiny-chat", "s1", [{"role": "user", "content": "hi"}])
    sessions.get("tiny-chat", "s1")["messages"]
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    agent TEXT NOT NULL,
    session_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    messages TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    last_updated REAL NOT NULL,
    PRIMARY KEY (agent, session_id)
)
"""
# Files written before sessions had owners get the column in place; their sessions count as
# the deployment key's (visible to it and under organization scope).
_ADD_OWNER = "ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT 'deployment'"
TITLE_CHARS = 60
MAX_PER_AGENT = 1000
MAX_PER_CALLER = 100
PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


class SessionStore:
    """Conversations per agent: list, read, append turns, delete."""

    def __init__(self, path: Path | str, *, max_per_agent: int = MAX_PER_AGENT,
                 max_per_caller: int = MAX_PER_CALLER) -> None:
        self.max_per_agent = max(1, max_per_agent)
        self.max_per_caller = max(1, max_per_caller)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(sessions)")}
        if "owner" not in columns:
            self._db.execute(_ADD_OWNER)
        if "caller" not in columns:  # files written before sessions were capped per caller
            self._db.execute("ALTER TABLE sessions ADD COLUMN caller TEXT NOT NULL DEFAULT ''")
        self._db.execute("CREATE INDEX IF NOT EXISTS sessions_by_age"
                         " ON sessions (agent, last_updated)")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def summaries(self, agent: str, owner: str | None = None, limit: int = PAGE_SIZE,
                  offset: int = 0) -> list[dict[str, Any]]:
        """One page of the agent's session summaries (``owner``'s only, if given), most
        recently updated first."""
        limit = min(max(1, limit), MAX_PAGE_SIZE)
        with self._lock:
            rows = self._db.execute(
                "SELECT session_id, created_at, last_updated, title FROM sessions"
                " WHERE agent = ? AND (? IS NULL OR owner = ?)"
                " ORDER BY last_updated DESC, session_id LIMIT ? OFFSET ?",
                (agent, owner, owner, limit, max(0, offset))).fetchall()
        return [{"session_id": r[0], "created_at": _iso(r[1]), "last_updated": _iso(r[2]),
                 "title": r[3]} for r in rows]

    def page(self, agent: str, limit: int = PAGE_SIZE, offset: int = 0,
             owner: str | None = None) -> dict[str, Any]:
        """``{"sessions", "total", "next_offset"}``: one page and where the next one starts
        (``None`` after the last)."""
        sessions = self.summaries(agent, owner, limit, offset)
        total = self.count(agent, owner=owner)
        end = max(0, offset) + len(sessions)
        return {"sessions": sessions, "total": total,
                "next_offset": end if end < total else None}

    def count(self, agent: str, caller: str | None = None, owner: str | None = None) -> int:
        """How many sessions the agent has (of ``caller`` or ``owner`` only, when given)."""
        query, args = "SELECT COUNT(*) FROM sessions WHERE agent = ?", [agent]
        if caller is not None:
            query, args = query + " AND caller = ?", [*args, caller]
        if owner is not None:
            query, args = query + " AND owner = ?", [*args, owner]
        with self._lock:
            return int(self._db.execute(query, args).fetchone()[0])

    def messages(self, agent: str, session_id: str,
                 owner: str | None = None) -> list[dict[str, str]] | None:
        """The session's messages, or ``None`` if it does not exist (for ``owner``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT messages FROM sessions WHERE agent = ? AND session_id = ?"
                " AND (? IS NULL OR owner = ?)",
                (agent, session_id, owner, owner)).fetchone()
        return None if row is None else list(json.loads(row[0]))

    def get(self, agent: str, session_id: str,
            owner: str | None = None) -> dict[str, Any] | None:
        """The session with its messages (contract shape), or ``None`` (for ``owner``)."""
        with self._lock:
            row = self._db.execute(
                "SELECT created_at, last_updated, title, messages FROM sessions"
                " WHERE agent = ? AND session_id = ? AND (? IS NULL OR owner = ?)",
                (agent, session_id, owner, owner)).fetchone()
        if row is None:
            return None
        return {"session_id": session_id, "created_at": _iso(row[0]),
                "last_updated": _iso(row[1]), "title": row[2],
                "messages": json.loads(row[3]), "success": True}

    def taken(self, agent: str, session_id: str, owner: str | None) -> bool:
        """Whether ``session_id`` exists but belongs to someone ``owner`` may not read."""
        if owner is None:
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT owner FROM sessions WHERE agent = ? AND session_id = ?",
                (agent, session_id)).fetchone()
        return row is not None and row[0] != owner

    def append(self, agent: str, session_id: str, new: list[dict[str, str]],
               owner: str = "deployment", caller: str = "") -> None:
        """Add messages to a session, creating it (titled by its first message, owned by
        ``owner``, started from ``caller``'s address) if new.

        A new session past the caps makes room by dropping the least recently updated one
        of the same caller (past ``max_per_caller``) or of the agent (past ``max_per_agent``).
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT messages FROM sessions WHERE agent = ? AND session_id = ?",
                    (agent, session_id)).fetchone()
                if row is None:
                    title = (new[0]["content"] if new else "").strip().splitlines()
                    self._db.execute(
                        "INSERT INTO sessions (agent, session_id, title, messages, created_at,"
                        " last_updated, owner, caller) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (agent, session_id, (title[0] if title else "")[:TITLE_CHARS],
                         json.dumps(new), now, now, owner, caller))
                    self._expire(agent, caller)
                else:
                    merged = json.loads(row[0]) + new
                    self._db.execute(
                        "UPDATE sessions SET messages = ?, last_updated = ?"
                        " WHERE agent = ? AND session_id = ?",
                        (json.dumps(merged), now, agent, session_id))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _expire(self, agent: str, caller: str) -> None:
        # Oldest first (lock held, inside append's transaction).
        for where, args, cap in (("agent = ? AND caller = ?", (agent, caller),
                                  self.max_per_caller),
                                 ("agent = ?", (agent,), self.max_per_agent)):
            self._db.execute(
                f"DELETE FROM sessions WHERE rowid IN (SELECT rowid FROM sessions WHERE {where}"  # noqa: S608 - fixed clauses
                " ORDER BY last_updated DESC, rowid DESC LIMIT -1 OFFSET ?)", (*args, cap))

    def delete(self, agent: str, session_id: str, owner: str | None = None) -> bool:
        """Delete one session (``owner``'s only, if given); ``False`` if there was none."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM sessions WHERE agent = ? AND session_id = ?"
                " AND (? IS NULL OR owner = ?)",
                (agent, session_id, owner, owner))
        return cur.rowcount > 0

    def delete_agent(self, agent: str) -> None:
        """Forget every session of an agent (when the agent is deleted)."""
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE agent = ?", (agent,))
