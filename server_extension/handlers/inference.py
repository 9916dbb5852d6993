"""Inference API under ``<base_url>agents/d/<name>/``: the Arena inference contract.

These handlers are deliberately *not* Jupyter handlers. They never read the Jupyter cookie or
token, only ``Authorization: Bearer <deployment key or workspace access token>`` (tokens.py;
the caller is kept for session scoping, callers.py), so a browser's ambient Jupyter session
cannot reach them and switching off Tornado's XSRF check is safe. For jupyter_server's
"every verb has an auth decision" check they carry ``@allow_unauthenticated`` (Jupyter auth
does not apply) together with our own ``@bearer_key`` or ``@public`` decision.

Keys are compared in constant time, refused in query strings, and never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from server_extension.handlers.base import (
    MAX_BODY_BYTES,
    METRICS,
    STATUS_KIND_PUBLIC,
    ServicesMixin,
    disk_problem,
    scrub_query,
    serving_elsewhere,
    stamp_activity,
)
from server_extension.serving.deployer import (
    AgentBusy,
    AgentUnavailable,
    LiveDeployment,
    RequestTimeout,
)
from server_extension.serving.metrics import DeploymentMetrics, MetricsStore, clip
from server_extension.serving.runtimes.base import RequestError
from server_extension.serving.worker import serving
from server_extension.serving.worker.supervisor import WorkerCallError
from server_extension.workspace.callers import DEPLOYMENT_KEY, Caller
from server_extension.workspace.registry import KEY_PREFIX
from server_extension.workspace.tokens import bearer
from server_extension.workspace.tokens import verify as verify_token

log = logging.getLogger("agents_workbench.inference")

NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})"
# Query parameters that look like credentials: refused so keys never ride in URLs (and logs).
KEY_QUERY_NAMES = frozenset({"api_key", "apikey", "key", "token", "access_token", "authorization"})
F = TypeVar("F", bound=Callable[..., Any])


class InferenceError(Exception):
    """Answered as ``{"success": false, "error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# One answer for "no such agent" and "wrong key" alike (see InferenceHandler.credential).
WRONG_CREDENTIAL = (
    "Wrong credential: send 'Authorization: Bearer <key>' with the agent's current key "
    "(shown in its expanded row; rotated?) or a workspace access token (revoked?). An agent "
    "that does not exist or was deleted is refused the same way.")
_DECOY = KEY_PREFIX + secrets.token_urlsafe(32)  # compared when there is no real key
LOADING_RETRY_S = 2
# An oversized body up to this size is read and dropped before the 413 (see prepare); a larger
# one is refused at once and the connection closed.
DRAIN_MAX_BYTES = 64 * 1024 * 1024


def _unauthorized(message: str) -> InferenceError:
    return InferenceError(
        401, message,
        {"WWW-Authenticate": 'Bearer realm="agents-workbench", error="invalid_token"'},
    )


def public(method: F) -> F:
    """Mark an inference verb as answering without a key (``GET status`` only)."""
    wrapped = allow_unauthenticated(method)
    wrapped.auth_decision = "public"  # type: ignore[attr-defined]
    return wrapped


def bearer_key(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Require the deployment's Bearer key; the live deployment is passed to the verb."""

    @wraps(method)
    async def wrapper(self: InferenceHandler, name: str, *args: Any, **kwargs: Any) -> None:
        # Tornado passes named URL groups as keywords (name, session_id, ...).
        live = self.authenticate(name)
        self._authenticated = True
        await method(self, live, *args, **kwargs)

    wrapped = allow_unauthenticated(wrapper)
    wrapped.auth_decision = "bearer"  # type: ignore[attr-defined]
    return wrapped


@web.stream_request_body
class InferenceHandler(ServicesMixin, web.RequestHandler):
    """Shared parsing, auth and error shape for every inference route.

    Bodies are streamed in (``stream_request_body``) so that one larger than ``max_body_mb``
    is refused from its ``Content-Length`` before any of it is read into memory; the verb
    sees ``self.request.body`` whole, as usual.
    """

    route = ""
    # Who authenticated (set by authenticate): the deployment key or an access token.
    caller: Caller = DEPLOYMENT_KEY
    # Filled in while the request runs and recorded into the agent's metrics in on_finish.
    _metrics: DeploymentMetrics | None = None
    _batch: int | None = None
    _tokens = 0
    _error_text: str | None = None
    _response_text: str | None = None
    _chunks: list[bytes] | None = None
    # True once the request's key was accepted; calls that never got there are "refused".
    _authenticated = False

    def check_xsrf_cookie(self) -> None:
        """No XSRF check: these routes ignore cookies and accept only Bearer keys."""

    def prepare(self) -> None:
        """Start the request's metrics; refuse keys in the query string and oversized bodies."""
        scrub_query(self.request, KEY_QUERY_NAMES)
        self._begin_metrics()
        if KEY_QUERY_NAMES & {k.lower() for k in self.request.query_arguments}:
            self.fail(InferenceError(
                400, "Credentials are not accepted in the URL; send the deployment key in an "
                "'Authorization: Bearer <key>' header."))
            return
        limit = int(self.settings.get(MAX_BODY_BYTES, 32 * 1024 * 1024))
        declared = self.request.headers.get("Content-Length", "")
        length = int(declared) if declared.isdigit() else 0
        if length > limit:
            refusal = InferenceError(
                413, f"Request body is {length} bytes; this server accepts at most {limit} "
                "(AgentsWorkbenchApp.max_body_mb). Send a smaller batch.")
            if length > DRAIN_MAX_BYTES:
                self.fail(refusal)
                return
            # Answering before the body is read makes Tornado close the socket with unread
            # bytes in it, and the kernel's reset can reach the client before the 413 does
            # (seen on loaded machines). So the body is read and dropped (data_received keeps
            # nothing) and the verb is replaced, for this request only, by the refusal.
            self.request.connection.set_max_body_size(length)  # type: ignore[union-attr]
            setattr(self, self.request.method.lower(),
                    lambda *_a, **_k: self.fail(refusal))
            return
        # A chunked body has no Content-Length: the connection enforces the same limit.
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        self._chunks = []

    def data_received(self, chunk: bytes) -> None:
        """Collect the body as it arrives (see the class docstring)."""
        if self._chunks is not None:
            self._chunks.append(chunk)

    def _log(self) -> None:
        # Successful calls are counted in the agent's own metrics (and its Prometheus series);
        # Jupyter's access log would add a debug line and a histogram sample per call, about
        # 30 µs. Errors still go to the server log.
        if self.get_status() >= 400:
            super()._log()

    def set_default_headers(self) -> None:
        """JSON answers, never cached."""
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def _begin_metrics(self, name: str | None = None) -> None:
        store: MetricsStore | None = self.settings.get(METRICS)
        name = name or self.path_kwargs.get("name")
        if store is None or name is None:
            return
        metrics = store.get(name)
        if metrics is None:
            # Only agents that are live get metrics: the name is whatever the URL says, and
            # made-up names must not grow memory or Prometheus labels.
            if self.deployer.live(name) is None:
                return
            metrics = store.for_agent(name)
        metrics.begin()
        self._metrics = metrics

    def on_finish(self) -> None:
        """Record the answered request into its agent's metrics (once, whatever the outcome)."""
        if self._authenticated:
            stamp_activity(self.settings)  # a call with a valid credential: the server is in use
        metrics, self._metrics = self._metrics, None
        if metrics is None:
            return
        if self._tokens:
            metrics.add_tokens(self._tokens)
        capture = metrics.capture_payloads
        status = self.get_status()
        metrics.end(
            self.route or "unknown", status, self.request._start_time,
            batch_size=self._batch, error=self._error_text,
            request=self.request.body if capture else None,
            response=self._response_text if capture else None,
            # A keyed route's call that never passed the key check; the public routes' 4xx
            # (status, unknown suffixes) stay in the log as before.
            refused=(status >= 400 and not self._authenticated
                     and self.route not in ("status", "unknown")),
        )

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Any:
        """Finish the answer, keeping a copy of it when the agent captures payloads."""
        if self._metrics is not None and self._metrics.capture_payloads and chunk is not None:
            self._response_text = clip(chunk if not isinstance(chunk, dict) else
                                       json.dumps(chunk))  # cut now: the chunk may be large
        return super().finish(chunk)

    def fail(self, error: InferenceError) -> None:
        """Answer an error in the contract's shape and stop."""
        self._error_text = error.message
        self.clear()
        self.set_status(error.status)
        for key, value in error.headers.items():
            self.set_header(key, value)
        self.finish(json.dumps({"success": False, "error": error.message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Unexpected failures: a JSON 5xx without internals (they go to the server log)."""
        self._error_text = f"Internal error (HTTP {status_code}); see the server log."
        self.finish(json.dumps({
            "success": False,
            "error": f"Internal error while serving {self.route or 'this route'}; "
            "the server log has the details.",
        }))

    def live_or_404(self, name: str) -> LiveDeployment:
        """The live deployment at this URL, or 404 (unknown and not-connected look the same)."""
        live = self.deployer.live(name)
        if live is None:
            raise InferenceError(
                404, f"No deployed agent at agents/d/{name}: it does not exist, is not "
                "connected, or is still loading. Connect it in the Agents panel and wait for "
                f"status Deployed.{serving_elsewhere(self.settings)}")
        if live.failed:
            # Kept for its backend to recover (a Ray agent whose node was lost): a clear 503
            # now rather than a call that waits out the timeout.
            try:
                reason = self.registry.get(name).error or "its health check failed"
            except Exception:  # noqa: BLE001 - deleted meanwhile; the reason is secondary
                reason = "its health check failed"
            raise InferenceError(
                503, f"Agent {name!r} is Failed ({reason}); it turns Deployed again by itself "
                "once its replicas answer, or Connect retries it.", {"Retry-After": "5"})
        return live

    def credential(self, name: str) -> Caller | None:
        """Who the request's Bearer credential is (the agent's key or an access token), or
        ``None`` when it carries none that is valid for ``name``.

        An agent that does not exist (or was deleted) and a wrong key look the same from
        here on: the key is compared against a decoy of the same shape, and the token lookup
        runs either way, so a caller without a valid credential learns nothing about which
        names exist, neither from the answer nor from how long it took.
        """
        given = bearer(self.request.headers.get("Authorization", ""))
        if given is None:
            return None
        current = self.registry.credentials.get(name)
        # A disconnected agent's key still names it (its holder is told it is not connected);
        # a deleted agent has no key left, like a name that never existed.
        expected = current.api_key if current is not None else _DECOY
        if hmac.compare_digest(given.encode(), expected.encode()) and current is not None:
            return DEPLOYMENT_KEY
        token = verify_token(self.registry, given)
        return Caller(token.id) if token is not None else None

    def authenticate(self, name: str) -> LiveDeployment:
        """The live deployment if the request carries its key or a workspace access token
        (recorded as :attr:`caller`); 401 otherwise, the same for every name."""
        if bearer(self.request.headers.get("Authorization", "")) is None:
            raise _unauthorized(
                "Missing credential: send 'Authorization: Bearer <key>' with the key shown "
                "in the agent's expanded row, or a workspace access token.")
        caller = self.credential(name)
        if caller is None:
            raise _unauthorized(WRONG_CREDENTIAL)
        self.caller = caller
        return self.serving(name)

    def serving(self, name: str) -> LiveDeployment:
        """The live deployment for a caller who showed a valid credential: 503 with
        Retry-After while it is loading (a Connect, or the server just started), 404 when it
        is not connected or does not exist."""
        current = self.registry.credentials.get(name)
        live = self.deployer.live(name)
        if live is not None and current is not None and current.connected \
                and current.deployment_id == live.deployment_id:
            return self.live_or_404(name)
        elsewhere = serving_elsewhere(self.settings)
        if not elsewhere and current is not None and current.connected and current.status in (
                "Pending", "Deployed"):
            raise InferenceError(
                503, f"Agent {name!r} is loading (the server started, it was just connected, "
                "or its worker is restarting); retry in a moment.",
                {"Retry-After": str(LOADING_RETRY_S)})
        raise InferenceError(
            404, f"No deployed agent at agents/d/{name}: it does not exist or is not "
            f"connected. Connect it in the Agents panel and wait for status Deployed."
            f"{elsewhere}")

    def body(self) -> dict[str, Any]:
        """The JSON object body, or 400."""
        try:
            data = json.loads(self.request.body or b"")
        except (ValueError, RecursionError) as exc:
            raise InferenceError(400, f"Request body is not valid JSON: {exc}.") from exc
        if not isinstance(data, dict):
            raise InferenceError(400, "Request body must be a JSON object.")
        return data

    def check_route(self, live: LiveDeployment) -> None:
        """400 naming the right route when this one does not fit the agent's kind."""
        kind = live.runtime.kind
        if self.route not in kind.routes:
            right = ", ".join(f"{r}" for r in kind.routes)
            raise InferenceError(
                400, f"Agent {live.name!r} is a {kind.algo} agent and does not answer "
                f"{self.route}; use {right} instead.")

    async def run(self, live: LiveDeployment, fn: Callable[[], dict[str, Any]], *,
                  inline: bool = False) -> None:
        """Run ``fn`` on a worker thread (on the loop when ``inline``) and answer its dict,
        mapping errors to the contract. Only for runtimes served in this process."""
        result = fn() if inline else await self.deployer.call(fn)
        if isinstance(result.get("batch_size"), int):
            self._batch = result["batch_size"]
        self.finish(json.dumps(result))

    async def relay(self, live: LiveDeployment) -> None:
        """Answer this route from the agent's model (in its worker) with the raw body."""
        status, payload, rows = await self.deployer.relay(live, self.route,
                                                          self.request.body or b"")
        self._batch = rows or None
        if status != 200:
            try:
                message = json.loads(payload).get("error", "")
            except ValueError:
                message = ""
            self._error_text = str(message) or f"HTTP {status}"
        self.set_status(status)
        self.finish(payload)

    async def _execute_verb(self, verb: Callable[[], Awaitable[None]]) -> None:
        if self._chunks is not None:
            self.request.body = b"".join(self._chunks)
            self._chunks = None
        try:
            await verb()
        except InferenceError as exc:
            self.fail(exc)
        except RequestError as exc:
            self.fail(InferenceError(400, str(exc)))
        except RequestTimeout as exc:
            self.fail(InferenceError(504, str(exc)))
        except AgentUnavailable as exc:
            self.fail(InferenceError(503, str(exc), {"Retry-After": "1"}))
        except AgentBusy as exc:
            self.fail(InferenceError(429, str(exc), {"Retry-After": "1"}))
        except WorkerCallError as exc:
            if exc.kind != "too_large":
                raise
            self.fail(InferenceError(500, str(exc)))  # the worker refused its own answer
        except Exception as exc:
            disk = disk_problem(exc)
            if disk is not None:  # the workspace's disk, not this server, failed the call
                log.warning("Inference route %s: %s", self.route, disk[1])
                self.fail(InferenceError(*disk))
                return
            log.exception("Inference route %s of %s failed", self.route, self.path_kwargs)
            self.fail(InferenceError(
                500, f"Internal error while serving {self.route}; the server log has the details."))


class StatusHandler(InferenceHandler):
    """``GET status``: public, nothing secret; the agent's kind only to a caller with the key
    or a token (or to anyone under ``status_kind_public``)."""

    route = "status"

    @public
    async def get(self, name: str) -> None:
        """The deployment's ids, and its kind and checkpoint when the caller may see them."""
        caller = self.credential(name)
        if caller is not None:
            self.caller = caller
            self._authenticated = True
            live = self.serving(name)
        else:
            live = self.live_or_404(name)
        shown = caller is not None or self.settings.get(STATUS_KIND_PUBLIC)
        if shown:
            # The checkpoint answering now (it changes live: handlers/checkpoints.py). In
            # headers: the Arena client refuses a status body with fields the contract does
            # not name.
            self.set_header("X-Agent-Checkpoint-Experiment", live.experiment)
            self.set_header("X-Agent-Checkpoint-Step", str(live.checkpoint_step))
        answer: dict[str, Any] = {
            "success": True,
            "deployment_id": live.deployment_id,
            "instance_id": live.instance_id,
        }
        if shown:
            answer["agent"] = live.runtime.kind.to_json()
        self.finish(json.dumps(answer))


class GetActionHandler(InferenceHandler):
    """``POST get_action``: observations in, actions (and hidden state) out."""

    route = "get_action"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """Relay the body to the agent's model, which decodes, acts and encodes."""
        self.check_route(live)
        if live.inline_obs_chars:
            await self._inline_or_thread(live)
            return
        await self.relay(live)

    async def _inline_or_thread(self, live: LiveDeployment) -> None:
        # The opt-in inline path (inline.py), for runtimes served in this process only.
        body = self.body()
        obs = body.get("obs")
        runtime = live.runtime
        limits = self.deployer.limits
        raw = self.request.body or b""
        if isinstance(obs, str) and 0 < len(obs) <= live.inline_obs_chars:
            status, payload, rows = serving.relay(runtime, "get_action", raw, limits)
        else:
            status, payload, rows = await self.deployer.call(
                serving.relay, runtime, "get_action", raw, limits)
        self._batch = rows or None
        self.set_status(status)
        self.finish(payload)


class PredictHandler(InferenceHandler):
    """``POST predict``: supervised models and LatentPPO."""

    route = "predict"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """Relay the body to the agent's model, which decodes, predicts and encodes."""
        self.check_route(live)
        await self.relay(live)


class UnknownRouteHandler(InferenceHandler):
    """Any other suffix: 404 listing the routes there are."""

    route = "unknown"  # one metrics label for every made-up suffix

    @staticmethod
    def _unknown() -> InferenceError:
        return InferenceError(
            404, "Unknown inference route; routes are GET status, POST get_action, POST "
            "predict, POST generate, POST generate_stream, GET/DELETE sessions.")

    @public
    async def get(self, name: str, rest: str) -> None:
        """404."""
        raise self._unknown()

    @public
    async def post(self, name: str, rest: str) -> None:
        """404."""
        raise self._unknown()

    @public
    async def delete(self, name: str, rest: str) -> None:
        """404."""
        raise self._unknown()


# Wrap every verb so InferenceError raised anywhere (auth included) becomes a contract error.
def guard(cls: type[InferenceHandler]) -> type[InferenceHandler]:
    for verb in ("get", "post", "delete"):
        method = cls.__dict__.get(verb)
        if method is None:
            continue

        def make(method: Any) -> Any:
            @wraps(method)
            async def guarded(self: InferenceHandler, *args: Any, **kwargs: Any) -> None:
                await self._execute_verb(lambda: method(self, *args, **kwargs))
            return guarded

        setattr(cls, verb, make(method))
    return cls


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (rf"/agents/d/{NAME}/status", guard(StatusHandler)),
    (rf"/agents/d/{NAME}/get_action", guard(GetActionHandler)),
    (rf"/agents/d/{NAME}/predict", guard(PredictHandler)),
]
# Registered after every other inference route: anything else under agents/d/<name>/.
fallback_routes: list[tuple[str, type[web.RequestHandler]]] = [
    (rf"/agents/d/{NAME}/(?P<rest>.*)", guard(UnknownRouteHandler)),
]
