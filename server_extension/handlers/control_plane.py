"""The Arena control plane under ``<base_url>agents/arena/``: what the unchanged ``agilerl-arena``
SDK and ``arena`` CLI call, so ``ARENA_BASE_URL=<server URL>agents/arena`` points them here.

Authenticated by workspace access tokens only (``Authorization: Bearer arena_pat_...``, see
tokens.py): never the Jupyter token or cookie, never a deployment key. Like the inference
handlers these are plain Tornado handlers carrying ``@allow_unauthenticated`` with their own
check: jupyter_server would take the Bearer header for a Jupyter-token attempt and answer 403
(or redirect to /login), and a cookie-less CLI has no XSRF token to send.

Shapes follow the client (see docs in the README's "Arena SDK and CLI" section):
- JSON answers carry ``Content-Type: application/json`` (the client parses nothing else);
- errors are ``{"error": msg}``; deployment lookups answer ``{"detail": msg}`` (the only key
  the client keeps there); 401 prints the CLI's "Invalid API key";
- ``capabilities`` answers 404 before any auth (401 there would crash ``arena --help``).

Projects are mapped onto the workspace by projects.py. ``deploy`` creates and connects an
agent named after the experiment (``<experiment>`` for the best checkpoint, ``<experiment>-
step-<N>`` for a named one); its ``url`` is the agent's inference URL, ``agents/d/<name>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import getpass
import io
import json
import re
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from server_extension.handlers.base import (
    ServicesMixin,
    endpoint_url,
    scrub_query,
    serving_silence,
)
from server_extension.serving.options import MEMORY_SCOPES, OptionError, validate_options
from server_extension.workspace.callers import DEFAULT_SCOPE
from server_extension.workspace.projects import project_of, projects
from server_extension.workspace.registry import AgentRecord, NotFound, RegistryError, TokenRecord
from server_extension.workspace.tokens import bearer, verify
from workbench_core.store import METRIC_FIELDS, Experiment, StoreError

PREFIX = "/agents/arena"
CLI = PREFIX + "/api/cli/v1"
# How long deploy waits for the agent to leave Pending, so `arena agent deploy X` followed at
# once by `arena agent generate` usually finds it Deployed (a warm load takes about a second).
# Well under the client's 30 s request timeout: a slow first load answers Pending instead.
DEPLOY_WAIT_S = 10.0
_STEP_RE = re.compile(r"^(?:step_?)?(\d+)$")


class ControlPlaneError(Exception):
    """Answered as ``{key: message}`` with ``status``."""

    def __init__(self, status: int, message: str, key: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.key = key


def access_token(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Require a workspace access token; the verb runs with :attr:`ControlPlaneHandler.token`."""

    @wraps(method)
    async def wrapper(self: ControlPlaneHandler, *args: Any, **kwargs: Any) -> None:
        try:
            given = bearer(self.request.headers.get("Authorization", ""))
            token = verify(self.registry, given) if given else None
            if token is None:
                raise ControlPlaneError(
                    401, "Send a workspace access token as 'Authorization: Bearer <token>' "
                    "(ARENA_API_KEY); create one in the Agents panel's Access tokens section.")
            self.token = token
            await method(self, *args, **kwargs)
        except ControlPlaneError as exc:
            self.fail(exc)

    wrapped = allow_unauthenticated(wrapper)
    wrapped.auth_decision = "access_token"  # type: ignore[attr-defined]
    return wrapped


class ControlPlaneHandler(ServicesMixin, web.RequestHandler):
    """JSON answers, the client's error shapes, no cookies and so no XSRF."""

    token: TokenRecord

    def check_xsrf_cookie(self) -> None:
        """No XSRF check: these routes ignore cookies and accept only Bearer tokens."""

    def prepare(self) -> None:
        """Keep tokens, keys and the Jupyter token in this URL out of every log line."""
        token = getattr(self.settings.get("identity_provider"), "token", "") or ""
        scrub_query(self.request, secrets=(token,) if len(token) >= 8 else ())

    def set_default_headers(self) -> None:
        """JSON answers, never cached."""
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def reply(self, data: Any, status: int = 200) -> None:
        """Finish with ``data`` as JSON."""
        self.set_status(status)
        self.finish(json.dumps(data))

    def fail(self, error: ControlPlaneError) -> None:
        """Answer an error in the shape the client reads."""
        self.clear()
        self.set_status(error.status)
        if error.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="agents-workbench"')
        self.finish(json.dumps({error.key: error.message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Unexpected failures: JSON without internals (they go to the server log)."""
        self.finish(json.dumps({"error": f"Internal error (HTTP {status_code}); the server log "
                                "has the details."}))

    def arg(self, name: str, *, required: bool = False) -> str | None:
        """A trimmed query argument; 400 when ``required`` and absent."""
        value = (self.get_query_argument(name, None) or "").strip()
        if required and not value:
            raise ControlPlaneError(400, f"Query parameter {name!r} is required.")
        return value or None

    async def experiment(self, name: str | None) -> Experiment:
        """The named experiment, or 404 naming the ones there are (read off the event loop:
        workspace files may be slow, or a FIFO)."""
        if not name:
            raise ControlPlaneError(400, "experiment_name is required.")
        try:
            return await asyncio.to_thread(self.store.get, name)
        except StoreError as exc:
            raise ControlPlaneError(404, str(exc)) from exc

    def _projects_of(self, records: list[AgentRecord]) -> dict[str, str]:
        # Blocking (reads experiment.json files): called on a thread.
        found = {}
        for experiment in {r.experiment for r in records}:
            # An experiment folder that was removed: its agent keeps its tab.
            with contextlib.suppress(StoreError):
                found[experiment] = project_of(self.store.get(experiment).info)
        return found

    def deployment_row(self, record: AgentRecord, project: str | None = None,
                       ) -> dict[str, Any]:
        """What ``arena agent list`` shows for an agent, with its absolute inference URL."""
        project = project or record.tab
        return {
            "name": record.name,
            "experiment_name": record.experiment,
            "project_name": project,
            "status": record.status,
            "algo": record.algo,
            "checkpoint_step": record.checkpoint_step,
            "memory_scope": record.options.get("memory_scope", DEFAULT_SCOPE),
            "url": endpoint_url(self, record.name),
        }

    async def deployments(self) -> list[dict[str, Any]]:
        """Agent rows filtered by the lookup parameters (exact matches)."""
        wanted = {"name": self.arg("name"), "experiment_name": self.arg("experimentName"),
                  "project_name": self.arg("projectName")}
        records = self.registry.list()
        found = await asyncio.to_thread(self._projects_of, records)
        rows = [self.deployment_row(r, found.get(r.experiment)) for r in records]
        return [row for row in rows
                if all(value is None or row[key] == value for key, value in wanted.items())]


class CapabilitiesHandler(ControlPlaneHandler):
    """``GET capabilities``: 404 (no on-prem features), before and without any auth."""

    @allow_unauthenticated
    def get(self) -> None:
        """404, which the client reads as "no optional features"."""
        # Public on purpose: the CLI's --help dies on a 401 here (and sends no secret data).
        self.reply({"error": "This server offers no optional Arena features."}, status=404)


CapabilitiesHandler.get.auth_decision = "public"  # type: ignore[attr-defined]


class ProjectsHandler(ControlPlaneHandler):
    """``GET projects``: one project per project type (and per ``extra.project``)."""

    @access_token
    async def get(self) -> None:
        """Project rows with name, type and description."""
        self.reply(await asyncio.to_thread(lambda: projects(self.store.list())))


class ExperimentsHandler(ControlPlaneHandler):
    """``GET experiments/list?project=P``."""

    @access_token
    async def get(self) -> None:
        """Flat experiment rows of one project; 404 for an unknown project."""
        project = self.arg("project", required=True)
        self.reply(await asyncio.to_thread(self._rows, project))

    def _rows(self, project: str | None) -> list[dict[str, Any]]:
        # Blocking (reads every experiment's files): runs on a thread.
        experiments = self.store.list()
        known = [p["name"] for p in projects(experiments)]
        if project not in known:
            raise ControlPlaneError(404, f"No project named {project!r}; projects: "
                                    f"{', '.join(known)}.")
        rows = []
        for experiment in experiments:
            info = experiment.info
            if project_of(info) != project:
                continue
            try:
                checkpoints = experiment.checkpoints()
                best = experiment.best_step() if checkpoints else None
            except StoreError:
                continue  # unreadable (metrics.csv a FIFO, say): the panel lists it as broken
            rows.append({
                "name": info.name,
                "algorithm": info.algorithm,
                "framework": info.framework,
                "source": info.source,
                "checkpoints": len(checkpoints),
                "best_step": best,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created_at)),
            })
        return rows


class CheckpointsHandler(ControlPlaneHandler):
    """``GET experiments/jobs/checkpoints?experiment_name=E``."""

    @access_token
    async def get(self) -> None:
        """One row per checkpoint; ``name`` is what ``deploy --checkpoint`` takes."""
        experiment = await self.experiment(self.arg("experiment_name"))
        try:
            self.reply(await asyncio.to_thread(self._rows, experiment))
        except StoreError as exc:
            raise ControlPlaneError(400, str(exc)) from exc

    @staticmethod
    def _rows(experiment: Experiment) -> list[dict[str, Any]]:
        # Blocking (lists checkpoints, reads metrics.csv): runs on a thread.
        checkpoints = experiment.checkpoints()
        best = experiment.best_step() if checkpoints else None
        return [{
            "steps": c.step,
            "name": f"step_{c.step}",
            "training_score": c.training_score,
            "evaluation_score": c.evaluation_score,
            "size_mb": c.size_mb,
            "best": c.step == best,
        } for c in checkpoints]


class MetricsHandler(ControlPlaneHandler):
    """``GET experiments/metrics``: CSV with ``preview_rows``, metric names without."""

    @access_token
    async def get(self) -> None:
        """The experiment's metrics.csv (capped, columns picked) or its metric names."""
        experiment = await self.experiment(self.arg("experiment_name"))
        names = [f for f in METRIC_FIELDS if f != "step"]
        rows_arg = self.arg("preview_rows")
        if rows_arg is None:
            if (self.arg("details") or "").lower() == "true":
                self.reply({"experiment_id": experiment.name, "metrics": names})
            else:
                self.reply(names)
            return
        try:
            limit = int(rows_arg)
        except ValueError as exc:
            raise ControlPlaneError(400, "preview_rows must be a whole number.") from exc
        picked = self.get_query_arguments("metric") or names
        unknown = sorted(set(picked) - set(names))
        if unknown:
            raise ControlPlaneError(400, f"Unknown metric(s) {unknown}; metrics: {names}.")
        columns = ["step", *[n for n in names if n in picked]]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        try:
            metrics = await asyncio.to_thread(experiment.metrics)
        except StoreError as exc:
            raise ControlPlaneError(400, str(exc)) from exc
        for row in metrics[:max(0, limit)]:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{experiment.name}_metrics.csv"')
        self.finish(buf.getvalue())


def checkpoint_rule(raw: Any) -> str | int:
    """``"best"`` for null, ``"best"``/``"final"`` as given, a step for ``step_N`` or ``N``."""
    if raw is None or raw == "best":
        return "best"
    if raw == "final":
        return raw
    match = _STEP_RE.match(str(raw).strip()) if isinstance(raw, (str, int)) else None
    if match is None or isinstance(raw, bool):
        raise ControlPlaneError(
            400, f"checkpoint {raw!r} is not 'best', 'final' or a checkpoint name like "
            "'step_5000' (see 'arena experiments checkpoints <experiment>').")
    return int(match.group(1))


class DeployHandler(ControlPlaneHandler):
    """``POST inference/deploy {experiment_name, checkpoint, memoryScope?}``."""

    @access_token
    async def post(self) -> None:
        """Create (or reuse) the agent for the experiment's checkpoint and connect it."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise ControlPlaneError(400, f"Request body is not valid JSON: {exc}.") from exc
        if not isinstance(body, dict):
            raise ControlPlaneError(400, "Request body must be a JSON object.")
        experiment = await self.experiment(body.get("experiment_name"))
        scope = body.get("memoryScope")
        if scope is not None and scope not in MEMORY_SCOPES:
            raise ControlPlaneError(400, f"memoryScope must be one of {list(MEMORY_SCOPES)}.")
        rule = checkpoint_rule(body.get("checkpoint"))
        try:
            step = await asyncio.to_thread(experiment.resolve, rule)
        except StoreError as exc:
            raise ControlPlaneError(400, str(exc)) from exc
        name = experiment.name if rule == "best" else f"{experiment.name}-step-{step}"
        record = self._existing(name, experiment.name, step, scope) or self._create(
            name, experiment, rule, step, scope)
        if not record.connected or record.status == "Failed":
            record = self.deployer.connect(name)
        record = await self._settled(name)
        silent = serving_silence(self.settings) if record.status == "Pending" else None
        if silent:
            # Never a silent Pending: the server that would load it is frozen or gone.
            raise ControlPlaneError(503, f"Deployment {name!r} is Pending: {silent}")
        self.reply(self.deployment_row(record, project_of(experiment.info)), status=200)

    def _existing(self, name: str, experiment: str, step: int,
                  scope: str | None) -> AgentRecord | None:
        try:
            record = self.registry.get(name)
        except NotFound:
            return None
        if record.experiment != experiment:
            raise ControlPlaneError(
                409, f"An agent named {name!r} already serves experiment {record.experiment!r}; "
                "rename or delete it in the Agents panel.")
        if record.checkpoint_step != step:
            # Never answer with a different model than the one asked for (the best
            # checkpoint moves on while training runs).
            raise ControlPlaneError(
                409, f"An agent named {name!r} already serves step {record.checkpoint_step} of "
                f"{experiment!r}, not step {step}; deploy '--checkpoint step_{step}' (served "
                f"as {experiment + '-step-' + str(step)!r}), or move {name!r} to step {step} "
                "keeping its endpoint and key: Change checkpoint in its row of the Agents "
                f"panel, or POST agents/api/agents/{name}/checkpoint "
                f'{{"checkpoint": {step}}}.')
        stored = record.options.get("memory_scope", DEFAULT_SCOPE)
        if scope is not None and scope != stored:
            raise ControlPlaneError(
                409, f"Deployment {name!r} keeps memory scope {stored!r}; the scope cannot "
                "change once a deployment exists (delete the agent in the panel first).")
        return record

    def _create(self, name: str, experiment: Experiment, rule: str | int, step: int,
                scope: str | None) -> AgentRecord:
        info = experiment.info
        try:
            options = validate_options({"memory_scope": scope or DEFAULT_SCOPE}, experiment)
            record = self.registry.create_agent(AgentRecord(
                name=name, tab=info.project_type, experiment=info.name,
                checkpoint_rule=rule if rule in ("best", "final") else "specific",
                checkpoint_step=step, algo=info.algorithm, base_model=info.base_model,
                options=options,
                description=f"Deployed with the Arena CLI/SDK (token {self.token.name!r}).",
            ))
        except (OptionError, RegistryError) as exc:
            raise ControlPlaneError(409, str(exc)) from exc
        self.deployer.warm(record)
        return record

    async def _settled(self, name: str) -> AgentRecord:
        deadline = time.monotonic() + DEPLOY_WAIT_S
        record = self.registry.get(name)
        while record.status == "Pending" and time.monotonic() < deadline \
                and not serving_silence(self.settings):  # a silent server loads nothing
            await asyncio.sleep(0.05)
            record = self.registry.get(name)
        return record


class DeploymentsHandler(ControlPlaneHandler):
    """``GET inference/deployments/list``."""

    @access_token
    async def get(self) -> None:
        """Every agent of the workspace matching the filters."""
        self.reply(await self.deployments())


class DeploymentHandler(ControlPlaneHandler):
    """``GET inference/deployments/one?name=...``: the row whose ``url`` the client binds."""

    @access_token
    async def get(self) -> None:
        """One deployment, 404 ``{"detail"}`` when none matches."""
        name = self.arg("name")
        if name is None:
            raise ControlPlaneError(400, "name is required.", key="detail")
        rows = await self.deployments()
        if not rows:
            raise ControlPlaneError(
                404, f"No deployment named {name!r}; 'arena agent list' shows them, "
                "'arena agent deploy <experiment>' creates one.", key="detail")
        self.reply(rows[0])


class CurrentUserHandler(ControlPlaneHandler):
    """``GET /api/users/current``: the workspace's user, as the token knows it."""

    @access_token
    async def get(self) -> None:
        """Name (the server's OS user and the token's name); no email is kept."""
        self.reply({"first_name": getpass.getuser(), "last_name": f"(token {self.token.name})",
                    "email": ""})


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (CLI + "/capabilities", CapabilitiesHandler),
    (CLI + "/projects", ProjectsHandler),
    (CLI + "/experiments/list", ExperimentsHandler),
    (CLI + "/experiments/jobs/checkpoints", CheckpointsHandler),
    (CLI + "/experiments/metrics", MetricsHandler),
    (CLI + "/inference/deploy", DeployHandler),
    (CLI + "/inference/deployments/list", DeploymentsHandler),
    (CLI + "/inference/deployments/one", DeploymentHandler),
    (PREFIX + "/api/users/current", CurrentUserHandler),
]
