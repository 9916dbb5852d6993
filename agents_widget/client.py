"""A typed client of the workbench's management REST API (no widgets).

Example::

    from agents_widget.client import WorkbenchClient

    client = WorkbenchClient.discover()          # the server this kernel belongs to
    experiments = client.experiments()
    agent = client.create_agent("cartpole", experiment="cartpole-dqn", checkpoint="best")
    client.connect("cartpole")                    # Pending; Deployed about a second later
    future = client.submit(client.agents)         # the same call on the worker thread

Every method blocks for one HTTP round trip, so code running on the kernel's event loop
(widget callbacks) must go through :meth:`WorkbenchClient.submit`, which runs calls one at a
time on a daemon worker thread and hands back a :class:`concurrent.futures.Future`.

Thread-safety: the underlying ``httpx.Client`` may be shared between threads; the worker
runs submitted calls in order, so callers that submit never see two calls interleave.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx

from workbench_core import discovery
from workbench_core.discovery import PAGE_ORIGIN_HEADER, ServerInfo, ServerNotFound

Tab = Literal["classic", "advanced"]
Status = Literal["Undeployed", "Pending", "Deployed", "Failed"]
CheckpointRule = str | int  # "best", "final" or a step number
T = TypeVar("T")

__all__ = [
    "AgentInfo",
    "ApiError",
    "CheckpointChangeFailed",
    "CheckpointInfo",
    "ExperimentInfo",
    "MetricPoint",
    "ServerNotFound",
    "ServerUnreachable",
    "WorkbenchClient",
    "WorkbenchError",
]


class WorkbenchError(Exception):
    """A management API call that did not succeed; ``str()`` says what to do about it."""


class ServerUnreachable(WorkbenchError):
    """Nothing answered at the server's URL (stopped, restarted on another port, no network)."""


class CheckpointChangeFailed(WorkbenchError):
    """A new checkpoint failed to load or answer; the agent still serves its previous one."""


class ApiError(WorkbenchError):
    """The server answered with an error status; ``message`` is the server's own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class CheckpointInfo:
    """One saved step of an experiment with its scores (``None`` when not measured)."""

    step: int
    training_score: float | None = None
    evaluation_score: float | None = None
    size_mb: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointInfo:
        """Build from the REST shape."""
        return cls(
            step=int(data["step"]),
            training_score=_opt_float(data.get("training_score")),
            evaluation_score=_opt_float(data.get("evaluation_score")),
            size_mb=float(data.get("size_mb") or 0.0),
        )


@dataclass(frozen=True)
class MetricPoint:
    """One row of an experiment's metrics: scores measured at a step."""

    step: int
    training_score: float | None = None
    evaluation_score: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MetricPoint:
        """Build from the REST shape."""
        return cls(
            step=int(data["step"]),
            training_score=_opt_float(data.get("training_score")),
            evaluation_score=_opt_float(data.get("evaluation_score")),
        )


@dataclass(frozen=True)
class ExperimentInfo:
    """An experiment as ``GET agents/api/experiments`` describes it."""

    name: str
    tab: Tab
    algorithm: str = ""
    framework: str = ""
    source: str | None = None
    environment: str | None = None
    dataset: str | None = None
    multi_agent: bool = False
    recurrent: bool = False
    base_model: str | None = None
    checkpoints: tuple[CheckpointInfo, ...] = ()
    metrics: tuple[MetricPoint, ...] = ()
    # Loader settings from experiment.json (a LatentPPO's latent size and decoder, say);
    # left out of comparisons and hashing, being a dict.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # Set while it is still being trained: {"state": queued|training|failed|interrupted,
    # "since": unix time, "error": text}; None once trained (or for any experiment logged
    # without marks).
    training: dict[str, Any] | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExperimentInfo:
        """Build from the REST shape."""
        tab: Tab = "advanced" if data.get("tab") == "advanced" else "classic"
        return cls(
            name=str(data["name"]),
            tab=tab,
            algorithm=str(data.get("algorithm") or ""),
            framework=str(data.get("framework") or ""),
            source=data.get("source"),
            environment=data.get("environment"),
            dataset=data.get("dataset"),
            multi_agent=bool(data.get("multi_agent")),
            recurrent=bool(data.get("recurrent")),
            base_model=data.get("base_model"),
            checkpoints=tuple(CheckpointInfo.from_json(c) for c in data.get("checkpoints") or ()),
            metrics=tuple(MetricPoint.from_json(m) for m in data.get("metrics") or ()),
            extra=dict(data.get("extra") or {}),
            training=dict(data["training"]) if isinstance(data.get("training"), Mapping)
            else None,
        )


class _Secret:
    """A key held out of sight: its ``repr`` is a placeholder and copies share it.

    ``vars(agent)`` shows this object, never the text; ``copy.deepcopy`` (which
    ``dataclasses.asdict`` uses) hands back the same object rather than a readable copy.
    """

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden key>"

    def __deepcopy__(self, memo: dict[int, Any]) -> _Secret:
        return self


@dataclass(frozen=True)
class AgentInfo:
    """An agent as the management API describes it.

    ``endpoint`` and ``api_key`` are set only while the agent is Deployed. The key is not a
    dataclass field: ``repr()``, ``dataclasses.asdict()``, ``vars()`` and
    ``pandas.DataFrame(client.agents())`` never show it, so displaying agents in a notebook
    does not write it into the output. Only the :attr:`api_key` property reads it (as the
    panel's copy control does).
    """

    name: str
    tab: Tab
    experiment: str
    status: Status = "Undeployed"
    description: str = ""
    checkpoint_rule: str = "best"
    checkpoint_step: int | None = None
    algo: str = ""
    base_model: str | None = None
    connected: bool = False
    error: str | None = None
    created_at: float = 0.0
    deployed_at: float | None = None
    endpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # The agent's latest checkpoint change (its ``outcome`` and ``error``), the running split
    # and what Roll back returns to: rows of its checkpoint history, or None.
    checkpoint_change: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    rollback_to: dict[str, Any] | None = None

    @property
    def api_key(self) -> str | None:
        """The deployment key (``None`` unless Deployed); never part of the fields."""
        secret: _Secret | None = getattr(self, "_api_key", None)
        return None if secret is None else secret.value

    def with_api_key(self, key: str | None) -> AgentInfo:
        """This agent holding ``key`` (set once, by whoever built it from the server's answer)."""
        object.__setattr__(self, "_api_key", _Secret(key) if key else None)
        return self

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentInfo:
        """Build from the REST shape."""
        tab: Tab = "advanced" if data.get("tab") == "advanced" else "classic"
        status = data.get("status")
        step = data.get("checkpoint_step")
        info = cls(
            name=str(data["name"]),
            tab=tab,
            experiment=str(data.get("experiment") or ""),
            status=status if status in ("Pending", "Deployed", "Failed") else "Undeployed",
            description=str(data.get("description") or ""),
            checkpoint_rule=str(data.get("checkpoint_rule") or "best"),
            checkpoint_step=None if step is None else int(step),
            algo=str(data.get("algo") or ""),
            base_model=data.get("base_model"),
            connected=bool(data.get("connected")),
            error=data.get("error"),
            created_at=float(data.get("created_at") or 0.0),
            deployed_at=_opt_float(data.get("deployed_at")),
            endpoint=data.get("endpoint"),
            options=dict(data.get("options") or {}),
            checkpoint_change=data.get("checkpoint_change"),
            split=data.get("split"),
            rollback_to=data.get("rollback_to"),
        )
        key = data.get("api_key")
        return info.with_api_key(str(key) if key else None)


class SerialWorker:
    """One daemon thread running submitted calls in order.

    Daemon, so a kernel shutting down never waits on a slow HTTP call.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(WorkbenchError("This client was closed; make a new one."))
                return future
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._jobs.put((future, fn))
        return future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    @property
    def current(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._jobs.put(None)


class WorkbenchClient:
    """Calls ``<server>/agents/api/...`` with the server's token.

    ``timeout`` bounds every call (seconds); ``request_count`` counts calls sent, which tells
    tests and curious users whether anything reached the server.
    """

    def __init__(self, server: ServerInfo, *, timeout: float = 15.0) -> None:
        self.server = server
        headers = {"Accept": "application/json"}
        if server.token:
            headers["Authorization"] = f"token {server.token}"
        self._http = httpx.Client(headers=headers, timeout=timeout, follow_redirects=False)
        self._worker = SerialWorker(name="agents-workbench-client")
        self._count_lock = threading.Lock()
        self.request_count = 0
        self._page_origin: str | None = None

    @property
    def page_origin(self) -> str | None:
        """The origin of the page showing the panel (``https://hub.example.org``), sent with
        every call so the server hands out URLs under the host the user reached."""
        return self._page_origin

    @page_origin.setter
    def page_origin(self, origin: str | None) -> None:
        self._page_origin = origin
        if origin:
            self._http.headers[PAGE_ORIGIN_HEADER] = origin
        else:
            self._http.headers.pop(PAGE_ORIGIN_HEADER, None)

    @classmethod
    def discover(cls, *, timeout: float = 15.0) -> WorkbenchClient:
        """A client of the server this kernel belongs to; :class:`ServerNotFound` if none."""
        return cls(discovery.find(), timeout=timeout)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    def __repr__(self) -> str:
        return f"WorkbenchClient({self.server.url!r})"

    # -- plumbing ------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on the client's worker thread, after earlier submits."""
        return self._worker.submit(lambda: fn(*args, **kwargs))

    @property
    def on_worker(self) -> bool:
        """Whether the calling thread is this client's worker thread."""
        return self._worker.current

    def close(self) -> None:
        """Stop the worker thread and close connections."""
        self._worker.close()
        self._http.close()

    def _request(self, method: str, path: str, json: Mapping[str, Any] | None = None) -> Any:
        url = self.server.api(path)
        with self._count_lock:
            self.request_count += 1
        try:
            response = self._http.request(method, url, json=json)
        except httpx.TimeoutException as exc:
            raise ServerUnreachable(
                f"The workbench server at {self.server.url} did not answer in time ({exc}). "
                "It may be busy loading a model; try again in a moment."
            ) from exc
        except httpx.HTTPError as exc:
            raise ServerUnreachable(
                f"Cannot reach the workbench server at {self.server.url} ({exc}). Is it still "
                "running? Start it with `agents-workbench run` (or restart the kernel after "
                "the server restarted), or set AGENTS_WORKBENCH_URL and AGENTS_WORKBENCH_TOKEN."
            ) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_message(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code,
                f"{url} answered with something that is not JSON; is {self.server.url} a "
                "Jupyter server with the agents-workbench extension enabled?",
            ) from exc

    # -- the API -------------------------------------------------------------------------------

    def server_urls(self) -> dict[str, str]:
        """``{"public_url", "arena_base_url"}``: where users reach this server."""
        return dict(self._request("GET", "server"))

    def serving(self) -> dict[str, Any]:
        """Which server of the workspace loads its agents and whether it still responds
        (``serving_here``, ``serving_url``, ``responding``, ``can_take_over``, ``message``)."""
        return dict(self._request("GET", "serving"))

    def take_over_serving(self) -> dict[str, Any]:
        """Serve the workspace's agents from this server, the serving one having stopped
        responding; the server's refusal (409) while it still responds."""
        return dict(self._request("POST", "serving/takeover"))

    def experiments(self) -> list[ExperimentInfo]:
        """Every experiment with its checkpoints and metrics."""
        return self.experiment_listing()[0]

    def experiment_listing(self) -> tuple[list[ExperimentInfo], list[dict[str, str]]]:
        """Every experiment, and every folder that is not a usable one (``broken``: its
        ``name``, ``folder`` and ``error``)."""
        body = self._request("GET", "experiments")
        broken = [{k: str(v) for k, v in b.items()} for b in body.get("broken") or []
                  if isinstance(b, Mapping)]
        return [ExperimentInfo.from_json(e) for e in body.get("experiments", [])], broken

    def agents(self) -> list[AgentInfo]:
        """Every agent, both tabs."""
        body = self._request("GET", "agents")
        return [AgentInfo.from_json(a) for a in body.get("agents", [])]

    def agent(self, name: str) -> AgentInfo:
        """One agent by name (:class:`ApiError` 404 if there is none)."""
        return AgentInfo.from_json(self._request("GET", f"agents/{name}"))

    def create_agent(self, name: str, *, experiment: str, checkpoint: CheckpointRule = "best",
                     description: str = "",
                     options: Mapping[str, Any] | None = None) -> AgentInfo:
        """Create an agent (Undeployed) from ``experiment``'s checkpoint.

        ``checkpoint`` is ``"best"`` (highest evaluation score), ``"final"`` (highest step) or
        a step number. The server's 400/409 (bad or duplicate name, unknown experiment) comes
        back as :class:`ApiError` with its message. ``options`` are deployment options
        (``decoder`` for LatentPPO, ``backend``); see ``server_extension/serving/options.py``.
        """
        body: dict[str, Any] = {"name": name.strip(), "description": description.strip(),
                                "experiment": experiment, "checkpoint": checkpoint}
        if options:
            body["options"] = dict(options)
        return AgentInfo.from_json(self._request("POST", "agents", json=body))

    def delete_agent(self, name: str) -> None:
        """Delete the agent (its endpoint stops first)."""
        self._request("DELETE", f"agents/{name}")

    def connect(self, name: str) -> AgentInfo:
        """Start deploying the agent; answers at once with status Pending."""
        return AgentInfo.from_json(self._request("POST", f"agents/{name}/connect"))

    def disconnect(self, name: str) -> AgentInfo:
        """Turn the agent's endpoint off; the agent stays."""
        return AgentInfo.from_json(self._request("POST", f"agents/{name}/disconnect"))

    def rotate_key(self, name: str) -> AgentInfo:
        """Give the agent a new API key; the old one is refused from now on."""
        return AgentInfo.from_json(self._request("POST", f"agents/{name}/rotate-key"))

    def metrics(self, name: str) -> dict[str, Any]:
        """The agent's traffic summary: ``requests_per_minute``, ``latency_ms`` (p50, p95),
        ``errors``, ``last_error``, ``recent_latency_ms``, ``by_route``, ``in_flight``,
        ``tokens_generated``, ``payload_capture``; ``metrics_enabled`` false if switched off."""
        return dict(self._request("GET", f"agents/{name}/metrics"))

    def request_log(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The agent's most recent requests, newest first: time, route, status, latency_ms,
        batch_size (and request/response bodies for requests made while capture was on)."""
        query = "" if limit is None else f"?limit={int(limit)}"
        body = self._request("GET", f"agents/{name}/requests{query}")
        return list(body.get("requests", []))

    def set_payload_capture(self, name: str, enabled: bool) -> bool:
        """Keep request and response bodies in the agent's request log (off by default)."""
        body = self._request("PUT", f"agents/{name}/payload-capture",
                             json={"enabled": bool(enabled)})
        return bool(body.get("payload_capture"))

    # -- checkpoint changes of a live agent (server_extension/handlers/checkpoints.py) -------

    def change_checkpoint(self, name: str, checkpoint: CheckpointRule, *,
                          experiment: str | None = None, wait: bool = True,
                          timeout: float = 300.0) -> dict[str, Any]:
        """Move the Deployed agent ``name`` to another checkpoint with no downtime.

        The new checkpoint loads beside the one serving, which answers until the new one is
        ready; endpoint and key stay. ``experiment`` defaults to the agent's. With ``wait``
        this returns once the change served (its history row, ``outcome`` ``serving``) and
        raises :class:`CheckpointChangeFailed` with the reason if it failed (the old one then
        still serves); without, it returns at once (``outcome`` ``loading``).
        """
        body: dict[str, Any] = {"checkpoint": checkpoint}
        if experiment is not None:
            body["experiment"] = experiment
        change = dict(self._request("POST", f"agents/{name}/checkpoint", json=body))
        return self._settle(name, change, timeout) if wait else change

    def rollback(self, name: str, *, wait: bool = True, timeout: float = 300.0,
                 ) -> dict[str, Any]:
        """Return ``name`` to the checkpoint it served before, the same way as
        :meth:`change_checkpoint`."""
        change = dict(self._request("POST", f"agents/{name}/rollback"))
        return self._settle(name, change, timeout) if wait else change

    def split(self, name: str, checkpoint: CheckpointRule, percent: int, *,
              experiment: str | None = None, wait: bool = True,
              timeout: float = 300.0) -> dict[str, Any]:
        """Serve ``checkpoint`` beside the current one for ``percent`` % of the calls (a
        canary; one LLM session stays on one of them). End it with :meth:`promote` or
        :meth:`abort`."""
        body: dict[str, Any] = {"checkpoint": checkpoint, "percent": percent}
        if experiment is not None:
            body["experiment"] = experiment
        change = dict(self._request("POST", f"agents/{name}/split", json=body))
        return self._settle(name, change, timeout) if wait else change

    def promote(self, name: str) -> AgentInfo:
        """Make the running split's canary the agent's only checkpoint."""
        self._request("POST", f"agents/{name}/promote")
        return self.agent(name)

    def abort(self, name: str) -> AgentInfo:
        """Drop the running split's canary; the current checkpoint answers every call."""
        self._request("POST", f"agents/{name}/abort")
        return self.agent(name)

    def checkpoint_history(self, name: str) -> list[dict[str, Any]]:
        """Every checkpoint the agent served or was asked to, newest first: experiment,
        checkpoint_step, kind, outcome, error, server, user, requested_at, finished_at."""
        return list(self._request("GET", f"agents/{name}/checkpoints").get("history", []))

    def _settle(self, name: str, change: dict[str, Any], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for row in self.checkpoint_history(name):
                if row["id"] != change["id"]:
                    continue
                if row["outcome"] == "failed":
                    raise CheckpointChangeFailed(
                        f"Agent {name} still serves its previous checkpoint: "
                        f"{row.get('error') or 'the new one failed'}")
                if row["outcome"] in ("serving", "canary", "replaced"):
                    return row
            if time.monotonic() > deadline:
                raise WorkbenchError(
                    f"The checkpoint change of {name} did not finish within {timeout:g} s; "
                    "it goes on in the server (see checkpoint_history).")
            time.sleep(0.25)

    # -- access tokens (for the Arena SDK and CLI; see tokens_view.py) -----------------------

    def tokens(self) -> list[dict[str, Any]]:
        """The workspace's access tokens: id, name, created_at, last_used_at (no secrets)."""
        return list(self._request("GET", "tokens").get("tokens", []))

    def create_token(self, name: str) -> dict[str, Any]:
        """Mint a token; the answer's ``token`` is its secret, returned this once only."""
        return dict(self._request("POST", "tokens", json={"name": name}))

    def revoke_token(self, token_id: str) -> None:
        """Revoke a token: every request carrying it is refused from now on."""
        self._request("DELETE", f"tokens/{token_id}")


_STATUS_HINTS = {
    400: "The server refused the request (HTTP 400): check the name (1-100 letters, digits, "
         "'.', '_' or '-'), the source experiment and the checkpoint.",
    404: "Not found (HTTP 404): the agent or experiment does not exist (any more).",
    409: "An agent with this name already exists; choose another name.",
}


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    if isinstance(message, str) and message.strip() in ("%s", ""):
        # A server whose handler raised HTTPError(status, "%s", reason) sends the format
        # string unformatted; say what the status means instead of showing "%s".
        message = _STATUS_HINTS.get(response.status_code)
    if response.status_code in (401, 403):
        return (
            f"The workbench server refused this kernel's credentials ({response.status_code}"
            f"{': ' + message if message else ''}). Set AGENTS_WORKBENCH_TOKEN to the server's "
            "token, or restart the kernel from the server that runs the workbench."
        )
    if response.status_code == 404 and not message:
        return (
            f"{response.request.url} was not found: is the agents-workbench extension enabled "
            "on that server?"
        )
    return str(message or f"HTTP {response.status_code} {response.reason_phrase}")
