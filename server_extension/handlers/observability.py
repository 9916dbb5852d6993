"""Management routes for a deployment's metrics and request log (Jupyter-authenticated).

``GET agents/api/agents/{name}/metrics``: the summary the panel's row shows (rate, p50/p95,
errors, last error, recent latencies, counts by route and status).
``GET agents/api/agents/{name}/requests?limit=N``: the request log, newest first.
``PUT agents/api/agents/{name}/payload-capture`` with ``{"enabled": bool}``: keep (or stop
keeping) request and response bodies in that log. Off by default and not persisted: a
restart turns it off again, so payloads are kept only while somebody is looking.

The same numbers reach Prometheus through jupyter_server's ``/metrics`` (see
``server_extension/serving/metrics.py``).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from server_extension.handlers.base import METRICS
from server_extension.handlers.management import NAME, ManagementHandler
from server_extension.serving.metrics import MetricsStore

MAX_LOG_LIMIT = 10_000


class ObservabilityHandler(ManagementHandler):
    """Shared lookup of the metrics store (``None`` when metrics are switched off)."""

    @property
    def metrics_store(self) -> MetricsStore | None:
        """The server's :class:`MetricsStore`, or ``None`` with ``metrics_enabled=False``."""
        store: MetricsStore | None = self.settings.get(METRICS)
        return store


class MetricsSummaryHandler(ObservabilityHandler):
    """``GET agents/api/agents/{name}/metrics``."""

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        """The agent's summary; zeros when it has served nothing yet."""
        self.record(name)
        store = self.metrics_store
        if store is None:
            self.reply({"agent": name, "metrics_enabled": False})
            return
        # The worker process serving the agent (None when not live or served in-process).
        worker = self.deployer.worker_info(name)
        metrics = store.get(name)
        summary: dict[str, Any] = (
            metrics.summary() if metrics is not None else store.empty_summary(name))
        self.reply({**summary, "metrics_enabled": True, "worker": worker,
                    # Per checkpoint (two while a split runs): handlers/checkpoints.py.
                    "checkpoints": self.deployer.checkpoint_traffic(name)})


class RequestLogHandler(ObservabilityHandler):
    """``GET agents/api/agents/{name}/requests?limit=N``."""

    @web.authenticated
    @authorized
    def get(self, name: str) -> None:
        """The most recent requests, newest first (payloads only when capture was on)."""
        self.record(name)
        raw = self.get_query_argument("limit", None)
        limit: int | None = None
        if raw is not None:
            try:
                limit = int(raw)
            except ValueError as exc:
                raise web.HTTPError(400, "limit must be a whole number, got %r.", raw) from exc
            if not 0 <= limit <= MAX_LOG_LIMIT:
                raise web.HTTPError(400, "limit must be from 0 to %d.", MAX_LOG_LIMIT)
        store = self.metrics_store
        metrics = store.get(name) if store is not None else None
        self.reply({
            "agent": name,
            "metrics_enabled": store is not None,
            "payload_capture": bool(metrics and metrics.capture_payloads),
            "capacity": store.log_size if store is not None else 0,
            "requests": metrics.requests(limit) if metrics is not None else [],
        })


class PayloadCaptureHandler(ObservabilityHandler):
    """``PUT agents/api/agents/{name}/payload-capture`` with ``{"enabled": bool}``."""

    @web.authenticated
    @authorized
    def put(self, name: str) -> None:
        """Turn capture of request and response bodies on or off for this agent."""
        self.record(name)
        enabled = self.json_body().get("enabled")
        if not isinstance(enabled, bool):
            raise web.HTTPError(400, "enabled must be true or false.")
        store = self.metrics_store
        if store is None:
            raise web.HTTPError(
                409, "Metrics are switched off on this server, so there is no request log to "
                "capture payloads into; start it with --AgentsWorkbenchApp.metrics_enabled=True.")
        metrics = store.for_agent(name)
        metrics.capture_payloads = enabled
        self.reply({"agent": name, "payload_capture": enabled})


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (rf"/agents/api/agents/{NAME}/metrics", MetricsSummaryHandler),
    (rf"/agents/api/agents/{NAME}/requests", RequestLogHandler),
    (rf"/agents/api/agents/{NAME}/payload-capture", PayloadCaptureHandler),
]
