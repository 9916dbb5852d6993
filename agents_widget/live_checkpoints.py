"""Change a live agent's checkpoint from a notebook: ``aw.change_checkpoint("cartpole", "final")``.

Module-level shortcuts over :class:`~agents_widget.client.WorkbenchClient` (the server this
kernel belongs to, found as the panel finds it, unless ``client`` is given). Each waits for
the outcome: the history row of the change once it serves, or
:class:`~agents_widget.client.CheckpointChangeFailed` with the reason (the agent then still
serves the checkpoint it had). Example::

    import agents_widget as aw
    aw.change_checkpoint("cartpole", 3000)        # same endpoint and key, no failed call
    aw.rollback("cartpole")                       # back to the one before
    aw.split("cartpole", "final", percent=10)     # a 10 % canary; then:
    aw.promote("cartpole")                        # or aw.abort("cartpole")
    aw.checkpoint_history("cartpole")             # DataFrame, newest first
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import AgentInfo, CheckpointRule, WorkbenchClient

if TYPE_CHECKING:
    import pandas as pd

HISTORY_COLUMNS: dict[str, str] = {
    "id": "Int64", "kind": "string", "experiment": "string", "checkpoint_step": "Int64",
    "outcome": "string", "percent": "Int64", "error": "string", "server": "string",
    "user": "string", "requested_at": "datetime64[ns, UTC]",
    "finished_at": "datetime64[ns, UTC]",
}


def _client(client: WorkbenchClient | None) -> WorkbenchClient:
    return client if client is not None else WorkbenchClient.discover()


def change_checkpoint(agent: str, checkpoint: CheckpointRule, *, experiment: str | None = None,
                      client: WorkbenchClient | None = None) -> dict[str, Any]:
    """Move the Deployed ``agent`` to ``checkpoint`` ("best", "final" or a step) of its
    experiment (or of ``experiment``); returns the change once it serves."""
    return _client(client).change_checkpoint(agent, checkpoint, experiment=experiment)


def rollback(agent: str, *, client: WorkbenchClient | None = None) -> dict[str, Any]:
    """Return ``agent`` to the checkpoint that served before; returns the change."""
    return _client(client).rollback(agent)


def split(agent: str, checkpoint: CheckpointRule, percent: int, *,
          experiment: str | None = None,
          client: WorkbenchClient | None = None) -> dict[str, Any]:
    """Serve ``checkpoint`` beside the current one for ``percent`` % of the calls (sticky per
    LLM session); returns the split once its canary answers."""
    return _client(client).split(agent, checkpoint, percent, experiment=experiment)


def promote(agent: str, *, client: WorkbenchClient | None = None) -> AgentInfo:
    """Make the running split's canary ``agent``'s only checkpoint."""
    return _client(client).promote(agent)


def abort(agent: str, *, client: WorkbenchClient | None = None) -> AgentInfo:
    """Drop the running split's canary."""
    return _client(client).abort(agent)


def checkpoint_history(agent: str, *, client: WorkbenchClient | None = None) -> pd.DataFrame:
    """Every checkpoint ``agent`` served or was asked to, newest first, as a DataFrame."""
    from .dataframes import _frame

    return _frame(_client(client).checkpoint_history(agent), HISTORY_COLUMNS)
