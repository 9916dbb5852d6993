"""Who is calling an inference route, and which chat sessions that caller sees.

Two credentials reach a deployment: its own key (the panel's expanded row) and a workspace
access token (what the Arena SDK and CLI send). An LLM agent's ``memory_scope`` option says how
sessions are kept apart:

=================  ============================  ===================================
caller             memory scope ``user``         memory scope ``organization``
=================  ============================  ===================================
access token       its own sessions only         every session of the agent
deployment key     every session of the agent    every session of the agent
=================  ============================  ===================================

Whoever starts a session is recorded as its owner either way, so a later change of policy (or
an audit) can tell sessions apart.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SCOPE = "user"


@dataclass(frozen=True)
class Caller:
    """An authenticated inference caller: an access token's id, or ``None`` for the key."""

    token_id: str | None = None

    @property
    def owner(self) -> str:
        """What a session this caller starts records as its owner."""
        return f"token:{self.token_id}" if self.token_id else "deployment"


DEPLOYMENT_KEY = Caller()


def visible_owner(caller: Caller, memory_scope: str | None) -> str | None:
    """The owner whose sessions ``caller`` sees, or ``None`` when it sees all of them."""
    if caller.token_id is None or (memory_scope or DEFAULT_SCOPE) == "organization":
        return None
    return caller.owner
