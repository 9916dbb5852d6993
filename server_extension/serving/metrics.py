"""Per-deployment request metrics: counters, latency histogram, a request log, Prometheus.

The inference handlers record every request they answer into the :class:`DeploymentMetrics`
of its agent; the management API reads summaries and the request log from it, and one
Prometheus collector reads all of them when ``<base_url>metrics`` is scraped. Recording is a
few integer updates and one small tuple per request, and nothing is computed until somebody
asks (the percentiles, the rate, the Prometheus text), so serving pays almost nothing.

Example::

    store = MetricsStore(log_size=200)
    register_collector(store)                 # once per server; scraped via jupyter's /metrics
    metrics = store.for_agent("cartpole")
    started = metrics.begin()
    ...                                       # serve the request
    metrics.end("get_action", 200, started, batch_size=1)
    metrics.summary()["latency_ms"]["p50"]

Thread-safety: recording happens on the Tornado event loop only (``prepare``/``on_finish`` of
the handlers), and so do the management reads, so there are no locks. The Prometheus
collector may run on another thread (``prometheus_client``'s own HTTP server, say); it copies
each container before walking it, which the GIL makes safe against concurrent appends.
"""

from __future__ import annotations

import bisect
import math
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import REGISTRY, Collector

# Upper bounds of the latency histogram, in seconds: from a fast get_action (sub-millisecond
# when the server is idle) to a long LLM generation.
BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)
DEFAULT_LOG_SIZE = 200
# Refused calls (no valid key: anyone on the network can send them) go to a ring of their own
# this long, so a flood of them never pushes real traffic out of the request log.
REFUSED_LOG_SIZE = 50
# Captured payloads are cut to this many characters so a huge batch cannot bloat memory.
PAYLOAD_LIMIT = 2048
ERROR_TEXT_LIMIT = 300
# The row's sparkline shows the latencies of this many most recent requests.
SPARK_POINTS = 60
# Percentiles and the rate look at requests of the last this many seconds.
WINDOW_S = 300.0


class RequestRecord(NamedTuple):
    """One answered request as the log keeps it (never the key; payloads only if captured)."""

    time: float  # wall-clock time the request arrived
    route: str
    status: int
    latency_ms: float
    batch_size: int | None
    request: str | None = None
    response: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The REST shape; payload fields only when they were captured."""
        data: dict[str, Any] = {
            "time": self.time, "route": self.route, "status": self.status,
            "latency_ms": round(self.latency_ms, 3), "batch_size": self.batch_size,
        }
        if self.request is not None or self.response is not None:
            data["request"] = self.request
            data["response"] = self.response
        return data


def clip(text: str | bytes | None, limit: int = PAYLOAD_LIMIT) -> str | None:
    """``text`` cut to ``limit`` characters (with a note of how much was cut)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q`` (0..1) percentile of already sorted values, nearest-rank; ``None`` if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class _RouteStats:
    """Histogram and counts of one route (cumulative since the server started)."""

    __slots__ = ("buckets", "codes", "count", "sum_s")

    def __init__(self) -> None:
        # One slot per bound plus the +Inf overflow; made cumulative only when exported.
        self.buckets = [0] * (len(BUCKETS_S) + 1)
        self.codes: dict[int, int] = {}
        self.count = 0
        self.sum_s = 0.0


class DeploymentMetrics:
    """What one agent's endpoint has served since the server started (or the agent was made)."""

    def __init__(self, agent: str, log_size: int = DEFAULT_LOG_SIZE) -> None:
        self.agent = agent
        self.created_at = time.time()
        self.routes: dict[str, _RouteStats] = {}
        self.in_flight = 0
        self.tokens_generated = 0
        self.last_error: dict[str, Any] | None = None
        self.capture_payloads = False
        # Plain tuples in RequestRecord's field order: building the NamedTuple costs more
        # than the rest of the recording together, so that happens only when read.
        self.log: deque[tuple[Any, ...]] = deque(maxlen=max(1, log_size))
        self.refused_log: deque[tuple[Any, ...]] = deque(maxlen=REFUSED_LOG_SIZE)
        self.refused_total = 0
        self.last_refused: dict[str, Any] | None = None

    # -- recording (event loop only) -----------------------------------------------------

    def begin(self) -> None:
        """A request arrived (``prepare``)."""
        self.in_flight += 1

    def end(self, route: str, status: int, started: float, *, batch_size: int | None = None,
            error: str | None = None, request: str | bytes | None = None,
            response: str | bytes | None = None, refused: bool = False) -> None:
        """A request was answered: count it, time it and log it.

        ``refused``: the call never got past the key check. It is counted (route, status,
        Prometheus) like any other, but logged in :attr:`refused_log` and noted in
        :attr:`last_refused` instead of the request log and ``last_error``, which stay about
        the agent's real callers.

        ``started`` is the wall-clock arrival time (Tornado's ``request._start_time``), so the
        latency covers parsing and queueing as well as the model. ``request`` and ``response``
        are kept (cut to ``PAYLOAD_LIMIT``) only while payload capture is on.
        """
        now = time.time()
        latency_s = max(now - started, 0.0)  # 0 if the wall clock stepped back mid-request
        if self.in_flight > 0:
            self.in_flight -= 1
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = _RouteStats()
        stats.buckets[bisect.bisect_left(BUCKETS_S, latency_s)] += 1
        stats.codes[status] = stats.codes.get(status, 0) + 1
        stats.count += 1
        stats.sum_s += latency_s
        if refused:
            self.refused_total += 1
            self.last_refused = {"time": now, "route": route, "status": status,
                                 "message": clip(error, ERROR_TEXT_LIMIT) or f"HTTP {status}"}
            self.refused_log.append((started, route, status, latency_s * 1000, None, None, None))
            return
        if status >= 400:
            self.last_error = {"time": now, "route": route, "status": status,
                               "message": clip(error, ERROR_TEXT_LIMIT) or f"HTTP {status}"}
        kept_request = kept_response = None
        if self.capture_payloads:
            kept_request, kept_response = clip(request), clip(response)
        self.log.append((started, route, status, latency_s * 1000, batch_size, kept_request,
                         kept_response))

    def add_tokens(self, count: int) -> None:
        """Tokens an LLM route generated (counted on the worker, added on the loop)."""
        self.tokens_generated += max(0, int(count))

    # -- reading -------------------------------------------------------------------------

    @property
    def requests_total(self) -> int:
        """Requests answered, every route and status."""
        return sum(s.count for s in self.routes.values())

    def count(self, route: str | None = None, status: int | None = None) -> int:
        """Requests answered on ``route`` (any if ``None``) with ``status`` (any if ``None``)."""
        total = 0
        for name, stats in list(self.routes.items()):
            if route is not None and name != route:
                continue
            codes = dict(stats.codes)
            total += sum(codes.values()) if status is None else codes.get(status, 0)
        return total

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The request log, newest first, at most ``limit`` entries."""
        records = [RequestRecord._make(t) for t in self.log]
        records.reverse()
        if limit is not None:
            records = records[:max(0, limit)]
        return [r.to_json() for r in records]

    def refused(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The refused calls' own log, newest first, at most ``limit`` entries."""
        records = [RequestRecord._make(t) for t in self.refused_log]
        records.reverse()
        return [r.to_json() for r in records[:limit if limit is not None else None]]

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """What the panel's row shows: rate, percentiles, errors, recent latencies, counts."""
        now = time.time() if now is None else now
        records = [RequestRecord._make(t) for t in self.log]
        recent = [r for r in records if now - r.time <= WINDOW_S]
        latencies = sorted(r.latency_ms for r in recent)
        errors_4xx = errors_5xx = 0
        by_route: dict[str, dict[str, int]] = {}
        for route, stats in list(self.routes.items()):
            codes = dict(stats.codes)
            by_route[route] = {str(code): n for code, n in sorted(codes.items())}
            errors_4xx += sum(n for code, n in codes.items() if 400 <= code < 500)
            errors_5xx += sum(n for code, n in codes.items() if code >= 500)
        return {
            "agent": self.agent,
            "since": self.created_at,
            "requests_total": self.requests_total,
            "requests_per_minute": round(self._per_minute(records, now)
                                         + self._refused_per_minute(now), 2),
            "latency_ms": {
                "p50": _round(percentile(latencies, 0.50)),
                "p95": _round(percentile(latencies, 0.95)),
                "window_s": WINDOW_S,
                "samples": len(latencies),
            },
            "errors": {"total": errors_4xx + errors_5xx, "4xx": errors_4xx, "5xx": errors_5xx},
            "last_error": dict(self.last_error) if self.last_error else None,
            "refused": {"total": self.refused_total,
                        "last": dict(self.last_refused) if self.last_refused else None},
            "in_flight": self.in_flight,
            "tokens_generated": self.tokens_generated,
            "by_route": by_route,
            "recent_latency_ms": [round(r.latency_ms, 3) for r in records[-SPARK_POINTS:]],
            "payload_capture": self.capture_payloads,
        }

    def _refused_per_minute(self, now: float) -> float:
        times = [t[0] for t in self.refused_log]
        recent = sum(1 for t in times if now - t <= 60.0)
        if len(times) == self.refused_log.maxlen and times and now - times[0] < 60.0:
            return len(times) * 60.0 / max(now - times[0], 1e-3)  # wrapped: extrapolate
        return float(recent)

    def _per_minute(self, records: list[RequestRecord], now: float) -> float:
        last_minute = sum(1 for r in records if now - r.time <= 60.0)
        oldest = min((r.time for r in records), default=now)
        if len(records) == self.log.maxlen and now - oldest < 60.0:
            # The log wrapped inside the last minute (a busy endpoint): extrapolate from the
            # span it still covers instead of reporting its capacity as the rate.
            return len(records) * 60.0 / max(now - oldest, 1e-3)
        return float(last_minute)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class MetricsStore:
    """Every agent's :class:`DeploymentMetrics` in one server, created on first use."""

    def __init__(self, log_size: int = DEFAULT_LOG_SIZE) -> None:
        self.log_size = log_size
        self._agents: dict[str, DeploymentMetrics] = {}

    def get(self, agent: str) -> DeploymentMetrics | None:
        """The metrics of ``agent`` if it has any."""
        return self._agents.get(agent)

    def for_agent(self, agent: str) -> DeploymentMetrics:
        """The metrics of ``agent``, made empty when it has none yet.

        Call it only for agents that exist: names from URLs are caller-controlled, and a
        metrics object per made-up name would grow memory and Prometheus labels without end.
        """
        metrics = self._agents.get(agent)
        if metrics is None:
            metrics = self._agents[agent] = DeploymentMetrics(agent, self.log_size)
        return metrics

    def empty_summary(self, agent: str) -> dict[str, Any]:
        """The summary of an agent that has served nothing yet (nothing is stored)."""
        return DeploymentMetrics(agent, self.log_size).summary()

    def forget(self, agent: str) -> None:
        """Drop an agent's metrics (it was deleted)."""
        self._agents.pop(agent, None)

    def __iter__(self) -> Iterator[DeploymentMetrics]:
        return iter(list(self._agents.values()))


class WorkbenchCollector(Collector):
    """Prometheus view of every registered :class:`MetricsStore`, built only when scraped."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[MetricsStore] = weakref.WeakSet()

    def add(self, store: MetricsStore) -> None:
        """Export ``store`` (until it is removed or garbage collected)."""
        self._stores.add(store)

    def remove(self, store: MetricsStore) -> None:
        """Stop exporting ``store``."""
        self._stores.discard(store)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: metric names depend on no state, but describing them would make
        the registry call :meth:`collect` at registration, which is all this needs."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The workbench's metric families, labelled by agent (and route, status code)."""
        requests = CounterMetricFamily(
            "agents_workbench_requests", "Inference requests answered, by agent, route and "
            "HTTP status code.", labels=["agent", "route", "code"])
        latency = HistogramMetricFamily(
            "agents_workbench_request_duration_seconds", "Server-side latency of inference "
            "requests, from arrival to answer.", labels=["agent", "route"])
        tokens = CounterMetricFamily(
            "agents_workbench_generated_tokens", "Tokens generated by LLM routes.",
            labels=["agent"])
        in_flight = GaugeMetricFamily(
            "agents_workbench_in_flight_requests", "Inference requests being served now.",
            labels=["agent"])
        last_error = GaugeMetricFamily(
            "agents_workbench_last_error_timestamp_seconds", "Unix time of the agent's last "
            "4xx or 5xx answer.", labels=["agent"])
        for store in list(self._stores):
            for metrics in store:
                agent = metrics.agent
                for route, stats in list(metrics.routes.items()):
                    for code, n in list(stats.codes.items()):
                        requests.add_metric([agent, route, str(code)], n)
                    cumulative, buckets = 0, []
                    for bound, n in zip((*BUCKETS_S, math.inf), list(stats.buckets),
                                        strict=True):
                        cumulative += n
                        buckets.append(("+Inf" if bound == math.inf else repr(bound),
                                        cumulative))
                    latency.add_metric([agent, route], buckets, stats.sum_s)
                tokens.add_metric([agent], metrics.tokens_generated)
                in_flight.add_metric([agent], metrics.in_flight)
                error = metrics.last_error
                if error is not None:
                    last_error.add_metric([agent], error["time"])
        return [requests, latency, tokens, in_flight, last_error]


_collector: WorkbenchCollector | None = None


def register_collector(store: MetricsStore) -> WorkbenchCollector:
    """Export ``store`` through prometheus_client's default registry.

    That registry is what jupyter_server's ``<base_url>metrics`` handler serves (with the
    server's own auth, see ``ServerApp.authenticate_prometheus``), so no port is opened.
    The collector is registered once per process; several servers in one process (tests)
    each add their store to it.
    """
    global _collector  # noqa: PLW0603 - one collector per process, as the registry requires
    if _collector is None:
        _collector = WorkbenchCollector()
        REGISTRY.register(_collector)
    _collector.add(store)
    return _collector


def unregister_store(store: MetricsStore) -> None:
    """Stop exporting ``store`` (the server's extension is stopping)."""
    if _collector is not None:
        _collector.remove(store)
