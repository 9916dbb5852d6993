"""Management REST API under ``<base_url>agents/api/``: experiments and agents.

Every verb is Jupyter-authenticated (``@web.authenticated`` outside ``@authorized``) and, being
an ``APIHandler``, gets Jupyter's XSRF checks. Errors are JSON ``{"message": ...}`` like the
rest of the Jupyter REST API.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from server_extension.handlers.base import (
    METRICS,
    SESSIONS,
    ServicesMixin,
    disk_problem,
    endpoint_url,
    scrub_query,
    serving_silence,
)
from server_extension.handlers.public_url import public_base
from server_extension.serving.options import OptionError, validate_options
from server_extension.workspace.registry import (
    AgentRecord,
    NotFound,
    RegistryError,
    canary_of,
    checkpoint_history,
    previous_checkpoint,
)
from workbench_core.store import Experiment, StoreError, validate_name

AUTH_RESOURCE = "agents"
NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"


def agent_json(handler: web.RequestHandler, record: AgentRecord) -> dict[str, Any]:
    """The REST shape of an agent; endpoint and key only while it is Deployed."""
    deployed = record.status == "Deployed"
    # A connected agent waits for a serving server that stopped beating: say so (lease.py).
    silent = serving_silence(handler.settings) if record.connected else None
    return {
        "name": record.name,
        "description": record.description,
        "tab": record.tab,
        "experiment": record.experiment,
        "checkpoint_rule": record.checkpoint_rule,
        "checkpoint_step": record.checkpoint_step,
        "algo": record.algo,
        "base_model": record.base_model,
        "options": record.options,
        "status": record.status,
        "connected": record.connected,
        "error": silent or record.error,
        "created_at": record.created_at,
        "deployed_at": record.deployed_at if deployed else None,
        "endpoint": endpoint_url(handler, record.name, page_origin=True) if deployed else None,
        "api_key": record.api_key if deployed else None,
    }


def checkpoint_json(handler: ServicesMixin, record: AgentRecord) -> dict[str, Any]:
    """What the agent serves, how its last checkpoint change went and what Roll back returns
    to (see checkpoints.py)."""
    history = checkpoint_history(handler.registry, record.name, limit=1)
    previous = previous_checkpoint(handler.registry, record.name)
    canary = canary_of(handler.registry, record.name)
    return {
        "split": canary.to_json() if canary is not None else None,
        "checkpoint": {"experiment": record.experiment, "rule": record.checkpoint_rule,
                       "step": record.checkpoint_step},
        "checkpoint_change": history[0].to_json() if history else None,
        "rollback_to": previous.to_json() if previous is not None else None,
        # "numpy" (its policy sidecar) or "full" where this server serves it from a worker.
        **handler.deployer.runtime_info(record.name),
    }


class ManagementHandler(ServicesMixin, APIHandler):
    """Base of the management API: JSON bodies, registry errors mapped to status codes."""

    auth_resource = AUTH_RESOURCE

    # Same signature as APIHandler.prepare, which overrides JupyterHandler's the same way.
    async def prepare(self) -> None:  # type: ignore[override]
        """Keep the Jupyter token and deployment keys in this URL out of every log line."""
        # From settings, not self.identity_provider, which warns on hosts that lack one.
        token = getattr(self.settings.get("identity_provider"), "token", "") or ""
        scrub_query(self.request, secrets=(token,) if len(token) >= 8 else ())
        await super().prepare()

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, or 400 saying what is wrong with it."""
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError) as exc:
            raise web.HTTPError(400, "Request body is not valid JSON: %s", exc) from exc
        if not isinstance(body, dict):
            raise web.HTTPError(400, "Request body must be a JSON object.")
        return body

    def record(self, name: str) -> AgentRecord:
        """The agent named ``name``, or 404."""
        try:
            return self.registry.get(name)
        except NotFound as exc:
            raise web.HTTPError(404, "%s", exc) from exc

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """JSON errors whose message is the real text (Jupyter's leaves ``%s`` unformatted)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        disk = disk_problem(exc, f"the workspace ({self.store.root})")
        if disk is not None:
            self.set_status(disk[0])
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": disk[1], "reason": self._reason}))
            return
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": message, "reason": exc.reason}))
            return
        super().write_error(status_code, **kwargs)

    def reply(self, data: Any, status: int = 200) -> None:
        """Finish with ``data`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class ExperimentsHandler(ManagementHandler):
    """``GET agents/api/experiments``: every experiment with its checkpoints and metrics;
    ``POST`` imports one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List experiments (and, under ``broken``, folders that are not usable ones)."""
        # Disk work (every folder's JSON, metrics and checkpoints) stays off the event loop.
        listing: dict[str, Any] = dict(await asyncio.to_thread(self.store.listing))
        from server_extension.handlers.imports import IMPORTS

        # The folder this server serves, and whether it imports (the panel shows both).
        listing["root"] = str(self.store.root)
        listing["import"] = (self.settings.get(IMPORTS) or {"mode": "on"})["mode"]
        self.reply(listing)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Import checkpoints trained elsewhere as an experiment (handlers/imports.py)."""
        from server_extension.handlers.imports import import_request

        body = self.json_body()
        experiment = await import_request(self.settings, self.store.root, body)
        # A preview (detect only) writes nothing: 200, not 201.
        self.reply(experiment, status=200 if body.get("preview") is True else 201)


class AgentsHandler(ManagementHandler):
    """``GET`` lists agents; ``POST`` creates one from an experiment's checkpoint."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """List agents."""
        self.reply({"agents": [agent_json(self, r) | checkpoint_json(self, r)
                               for r in self.registry.list()]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Create an agent (Undeployed) from ``{name, description?, experiment, checkpoint}``."""
        body = self.json_body()
        try:
            name = validate_name(body.get("name") or "", "agent")
        except StoreError as exc:
            raise web.HTTPError(400, "%s", exc) from exc
        description = body.get("description") or ""
        if not isinstance(description, str):
            raise web.HTTPError(400, "description must be a string.")
        if len(description) > 10_000:
            raise web.HTTPError(400, "description is over 10000 characters; shorten it.")
        try:
            description.encode("utf-8")  # JSON can carry a lone surrogate SQLite cannot store
        except UnicodeEncodeError as exc:
            raise web.HTTPError(400, "description is not valid Unicode text.") from exc
        experiment_name = body.get("experiment")
        if not isinstance(experiment_name, str) or not experiment_name.strip():
            raise web.HTTPError(400, "experiment is required: the name of a source experiment.")
        rule = body.get("checkpoint", "best")
        if not isinstance(rule, (str, int, float)) or isinstance(rule, bool):
            raise web.HTTPError(400, "checkpoint must be 'best', 'final' or a step number.")
        try:
            experiment, step = await asyncio.to_thread(self._resolve, experiment_name, rule)
        except StoreError as exc:
            raise web.HTTPError(400, "%s", exc) from exc
        try:
            options = validate_options(body.get("options"), experiment)
        except OptionError as exc:
            raise web.HTTPError(400, "%s", exc) from exc
        info = experiment.info
        record = AgentRecord(
            name=name,
            description=description.strip(),
            tab=info.project_type,
            experiment=experiment.name,  # the folder: a copy is never resolved to another
            checkpoint_rule=rule if rule in ("best", "final") else "specific",
            checkpoint_step=step,
            algo=info.algorithm,
            base_model=info.base_model,
            options=options,
        )
        try:
            created = self.registry.create_agent(record)
        except RegistryError as exc:
            raise web.HTTPError(409, "%s", exc) from exc
        self.deployer.warm(created)
        self.reply(agent_json(self, created), status=201)


    def _resolve(self, experiment_name: str, rule: str | float) -> tuple[Experiment, int]:
        experiment = self.store.get(experiment_name.strip())
        try:
            step = experiment.resolve(rule)
            experiment.to_json()  # a folder the listing shows as broken cannot be a source
        except (OSError, RecursionError) as exc:
            raise StoreError(f"Experiment {experiment.name!r} cannot be read: {exc}") from exc
        return experiment, step


class AgentHandler(ManagementHandler):
    """``GET`` one agent; ``DELETE`` removes it (disconnecting it first)."""

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        """Show one agent, with the checkpoint it serves."""
        record = self.record(name)
        self.reply(agent_json(self, record) | checkpoint_json(self, record))

    @web.authenticated
    @authorized
    def delete(self, name: str) -> None:
        """Delete the agent."""
        self.record(name)
        self.deployer.delete(name)
        self.settings[SESSIONS].delete_agent(name)
        metrics = self.settings.get(METRICS)
        if metrics is not None:
            metrics.forget(name)  # a new agent of the same name starts from zero
        self.set_status(204)
        self.finish()


class AgentActionHandler(ManagementHandler):
    """``POST agents/api/agents/{name}/connect | disconnect | rotate-key``."""

    @web.authenticated
    @authorized
    def post(self, name: str, action: str) -> None:
        """Run the action and answer with the agent as it now stands."""
        self.record(name)
        if action == "connect":
            record = self.deployer.connect(name)
        elif action == "disconnect":
            record = self.deployer.disconnect(name)
        else:
            record = self.deployer.rotate_key(name)
        self.reply(agent_json(self, record))


class ServerHandler(ManagementHandler):
    """``GET agents/api/server``: the URL users reach this server at (public_url.py)."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """The public base URL, and the Arena control plane's base under it."""
        base = public_base(self.settings, self.request, page_origin=True)
        self.reply({"public_url": base, "arena_base_url": f"{base}agents/arena"})


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/agents/api/server", ServerHandler),
    (r"/agents/api/experiments", ExperimentsHandler),
    (r"/agents/api/agents", AgentsHandler),
    (rf"/agents/api/agents/{NAME}", AgentHandler),
    (rf"/agents/api/agents/{NAME}/(?P<action>connect|disconnect|rotate-key)", AgentActionHandler),
]
