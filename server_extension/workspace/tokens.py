"""Personal access tokens of a workspace: minted, listed, revoked, and checked on every request.

A token is ``arena_pat_<id>_<secret>`` (the form the hosted Arena uses; the Arena client sends
``ARENA_API_KEY`` as it is and never checks the form). Only its SHA-256 is kept in the
registry, so the registry file never holds a usable secret; with 256 random bits a plain hash
is as hard to reverse as the secret is to guess, and looking the hash up by index keeps the
secret out of any comparison that could leak timing.

Tokens authenticate the control plane (``agents/arena/...``) and, beside the deployment keys,
the inference routes; the token's id is the caller's identity for chat-session scoping.

Thread-safety: as the registry's (one short transaction per call). ``last_used_at`` is written
at most once a minute per token and server, so a busy get_action loop costs one indexed read
per request, not a write.

Example::

    minted = mint(registry, "laptop")      # minted.secret is shown to the user once
    verify(registry, minted.secret)        # -> TokenRecord(id=..., name="laptop", ...)
    revoke(registry, minted.record.id)     # from now on verify(...) is None, on every server
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from dataclasses import dataclass

from server_extension.workspace.registry import (
    Registry,
    TokenRecord,
    add_token,
    delete_token,
    list_tokens,
    token_by_hash,
    touch_token,
)

TOKEN_PREFIX = "arena_pat_"  # noqa: S105 - the public form of a token, not a secret
MAX_NAME_CHARS = 100
# Seconds between two writes of a token's last-used time by one server.
TOUCH_EVERY = 60.0

_touched: dict[str, float] = {}
_touched_lock = threading.Lock()


class TokenError(ValueError):
    """A token request that cannot be served (bad name, unknown id); the message says why."""


@dataclass(frozen=True)
class MintedToken:
    """A token just created: the only moment its secret exists outside the caller's hands."""

    record: TokenRecord
    secret: str


def digest(secret: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_name(name: object) -> str:
    """A usable token name (trimmed), or :class:`TokenError` saying what one is."""
    if not isinstance(name, str) or not name.strip():
        raise TokenError("name is required: a label for the token, e.g. 'laptop'.")
    cleaned = name.strip()
    if len(cleaned) > MAX_NAME_CHARS or any(ord(c) < 32 for c in cleaned):
        raise TokenError(f"name must be 1-{MAX_NAME_CHARS} printable characters.")
    return cleaned


def mint(registry: Registry, name: object) -> MintedToken:
    """Create a token named ``name``; the secret is returned here and never again."""
    token_id = uuid.uuid4().hex
    secret = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    record = TokenRecord(id=token_id, name=check_name(name), created_at=time.time())
    add_token(registry, record, digest(secret))
    return MintedToken(record, secret)


def listing(registry: Registry) -> list[TokenRecord]:
    """Every token of the workspace (no secrets)."""
    return list_tokens(registry)


def revoke(registry: Registry, token_id: str) -> None:
    """Delete a token; every later request carrying it is refused, on every server."""
    if not delete_token(registry, token_id):
        raise TokenError(f"No access token with id {token_id!r} (already revoked?).")
    with _touched_lock:
        _touched.pop(token_id, None)


def verify(registry: Registry, presented: str) -> TokenRecord | None:
    """The token ``presented`` is, or ``None``; notes its use (at most once a minute)."""
    if not presented.startswith(TOKEN_PREFIX):
        return None  # a deployment key, the Jupyter token, or noise: no lookup needed
    record = token_by_hash(registry, digest(presented))
    if record is None:
        return None
    now = time.time()
    with _touched_lock:
        due = now - _touched.get(record.id, 0.0) >= TOUCH_EVERY
        if due:
            _touched[record.id] = now
    if due:
        touch_token(registry, record.id, now)
    return record


def bearer(authorization: str) -> str | None:
    """The credential of an ``Authorization: Bearer <x>`` header, or ``None``."""
    scheme, _, given = authorization.partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None
