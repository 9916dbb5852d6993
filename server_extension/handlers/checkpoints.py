"""Changing a live agent's checkpoint: ``agents/api/agents/{name}/checkpoint`` and friends.

- ``POST .../checkpoint {"checkpoint": "best"|"final"|step, "experiment"?}``: load that
  checkpoint beside the one serving and switch to it when it answers (``deployer.py``). Same
  endpoint, same key; a checkpoint that fails leaves the old one serving. Answers 202 with the
  change (``outcome`` ``loading``, or ``requested`` on a server that does not load the
  workspace's agents: the one that does picks it up within a reconcile period).
- ``POST .../rollback``: the same, back to the checkpoint that served before this one.
- ``POST .../split {"checkpoint", "experiment"?, "percent"}``: load that checkpoint the same
  way, then let it answer ``percent`` % of the calls (sticky per LLM session) beside the one
  serving; ``POST .../promote`` makes it the only one, ``POST .../abort`` drops it.
- ``GET .../checkpoints``: the agent's checkpoint history, newest first.

Jupyter-authenticated like the rest of the management API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from server_extension.handlers.management import NAME, ManagementHandler, checkpoint_json
from server_extension.workspace.registry import (
    AgentRecord,
    CheckpointChange,
    RegistryError,
    canary_of,
    checkpoint_history,
    commit_change,
    mark_change,
    previous_checkpoint,
    record_initial,
    request_change,
)
from workbench_core.store import StoreError


class CheckpointHandler(ManagementHandler):
    """``POST agents/api/agents/{name}/checkpoint | rollback | split | promote | abort``;
    ``GET .../checkpoints``."""

    def who(self) -> tuple[str, str]:
        """(this server's URL, the Jupyter user) for the history."""
        base_url = self.settings.get("base_url", "/")
        server = f"{self.request.protocol}://{self.request.host}{base_url}"
        user = self.current_user
        name = getattr(user, "username", None) or getattr(user, "name", None) or str(user or "")
        return server, str(name)

    def live_record(self, name: str) -> AgentRecord:
        """The agent, or 409 when it is not Deployed (a checkpoint changes only while live)."""
        record = self.record(name)
        if not record.connected or record.status != "Deployed":
            raise web.HTTPError(
                409, "Agent %s is %s; a checkpoint can be changed only while the agent is "
                "Deployed. Connect it (it then loads the checkpoint it was created with).",
                name, record.status)
        return record

    def start(self, record: AgentRecord, experiment: str, rule: str, step: int, *,
              rollback_of: int | None = None, kind: str = "change",
              percent: int | None = None) -> CheckpointChange:
        """Record the change and start it here when this server loads the agents."""
        server, user = self.who()
        record_initial(self.registry, record)
        try:
            change = request_change(self.registry, record.name, experiment=experiment,
                                    rule=rule, step=step, server=server, user=user,
                                    rollback_of=rollback_of, kind=kind, percent=percent)
        except RegistryError as exc:
            raise web.HTTPError(409, "%s", exc) from exc
        self.deployer.change_checkpoint(change)
        return change

    @web.authenticated
    @authorized
    async def post(self, name: str, action: str = "checkpoint") -> None:
        """Run ``action``: checkpoint, rollback, split, promote or abort."""
        record = self.live_record(name)
        if action in ("promote", "abort"):
            self.reply(self.end_split(record, action))
            return
        if action == "rollback":
            record_initial(self.registry, record)
            previous = previous_checkpoint(self.registry, name)
            if previous is None:
                raise web.HTTPError(
                    409, "Agent %s has served no other checkpoint; there is nothing to roll "
                    "back to.", name)
            change = self.start(record, previous.experiment, previous.checkpoint_rule,
                                previous.checkpoint_step, rollback_of=previous.id)
        else:
            body = self.json_body()
            percent = self.percent(body) if action == "split" else None
            experiment, label, step = await self.checkpoint_of(record, body)
            change = self.start(record, experiment, label, step,
                                kind="split" if action == "split" else "change",
                                percent=percent)
        self.reply(change.to_json() | {"outcome": self._outcome(change)}, status=202)

    async def checkpoint_of(self, record: AgentRecord, body: dict[str, Any],
                            ) -> tuple[str, str, int]:
        """(experiment, rule label, step) the body names, or 400 saying what is wrong."""
        rule = body.get("checkpoint")
        if rule is None or not isinstance(rule, (str, int, float)) or isinstance(rule, bool):
            raise web.HTTPError(400, "checkpoint is required: 'best', 'final' or a step number.")
        experiment_name = body.get("experiment", record.experiment)
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise web.HTTPError(400, "experiment must be the name of an experiment.")
        try:
            experiment, step = await asyncio.to_thread(
                self._resolve_checkpoint, experiment_name.strip(), rule)
        except StoreError as exc:
            raise web.HTTPError(400, "%s", exc) from exc
        serving = self._framework(record)
        if experiment.info.framework != serving:
            raise web.HTTPError(
                400, "Experiment %s was trained with %s, but agent %s serves %s; pick a "
                "checkpoint of the same kind of model (or create a new agent).",
                experiment.name, experiment.info.framework, record.name, serving)
        return experiment.name, rule if rule in ("best", "final") else "specific", step

    @staticmethod
    def percent(body: dict[str, Any]) -> int:
        """The split's canary percentage (1-99), or 400."""
        raw = body.get("percent")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != int(raw) \
                or not 1 <= raw <= 99:
            raise web.HTTPError(
                400, "percent is required for a split: a whole number from 1 to 99, the share "
                "of calls the new checkpoint answers.")
        return int(raw)

    def end_split(self, record: AgentRecord, action: str) -> dict[str, Any]:
        """Promote (the canary becomes the only checkpoint) or Abort (it is dropped)."""
        canary = canary_of(self.registry, record.name)
        if canary is None:
            raise web.HTTPError(
                409, "Agent %s is not splitting its traffic; start a split first.",
                record.name)
        if action == "promote":
            commit_change(self.registry, canary)
        else:
            mark_change(self.registry, canary.id, "aborted")
        # At once here when this server serves the agent; the serving server otherwise
        # does it on its next reconcile.
        self.deployer.settle_split(record.name)
        record = self.registry.get(record.name)
        return {"agent": record.name, **checkpoint_json(self, record)}

    @web.authenticated
    @authorized
    def get(self, name: str, action: str = "") -> None:
        """The agent's checkpoint history, newest first (at any of the three paths)."""
        record = self.record(name)
        history = checkpoint_history(self.registry, name, limit=200)
        self.reply({"agent": name, **checkpoint_json(self, record),
                    "history": [c.to_json() for c in history]})

    def _outcome(self, change: CheckpointChange) -> str:
        return "loading" if self.deployer.changing(change.agent) == change.id else change.outcome

    def _framework(self, record: AgentRecord) -> str:
        try:
            return self.store.get(record.experiment).info.framework
        except StoreError:
            return ""

    def _resolve_checkpoint(self, experiment_name: str, rule: str | float) -> tuple[Any, int]:
        experiment = self.store.get(experiment_name)
        try:
            return experiment, experiment.resolve(rule)
        except (OSError, RecursionError) as exc:
            raise StoreError(f"Experiment {experiment.name!r} cannot be read: {exc}") from exc


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (rf"/agents/api/agents/{NAME}/(?P<action>checkpoint|rollback|split|promote|abort)",
     CheckpointHandler),
    (rf"/agents/api/agents/{NAME}/checkpoints", CheckpointHandler),
]
