"""A live view of one deployment's traffic for its expanded row.

Shows requests per minute, p50/p95 latency, error counts and the last error, a sparkline of
recent latencies, the most recent requests, and the payload-capture switch. Example::

    view = MetricsView(client, "cartpole", interval=2.0)   # starts polling at once
    ...
    view.close()                                           # or close_tree(...) on its row

Threads: a :class:`~agents_widget.poller.StatusPoller` daemon thread reads the management
API and only sets widget values, so the kernel's event loop never waits on HTTP. The
checkbox callback (on the event loop) hands its call to the client's worker thread. The
poller stops as soon as the view is closed, however it is closed (the row's ``close_tree``
closes widgets without calling this class's ``close``), by watching the ``comm`` trait.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets

from .client import WorkbenchClient, WorkbenchError
from .poller import StatusPoller
from .viewkit import close_tree, gap

log = logging.getLogger("agents_workbench.panel")

LOG_ROWS = 8
SPARK_W, SPARK_H = 180, 32
ERROR_BACKOFF_S = 10.0


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


def _clock(stamp: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp * 1000) % 1000:03d}"


def sparkline(values: Sequence[float], width: int = SPARK_W, height: int = SPARK_H) -> str:
    """An inline SVG line of ``values`` (oldest left), scaled from 0 to their maximum."""
    if not values:
        return "<span class='awb-hint'>No requests yet.</span>"
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}"
        for i, v in enumerate(values))
    return (
        f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        "role='img' aria-label='recent latency'>"
        f"<title>Latency of the last {len(values)} requests (max {_ms(top)})</title>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{points}'/></svg>"
        f"<span class='awb-hint'> max {html.escape(_ms(top))}</span>")


def headline(summary: dict[str, Any]) -> str:
    """The one-line figures: rate, percentiles, errors, in flight (and tokens for LLMs)."""
    latency = summary.get("latency_ms") or {}
    errors = summary.get("errors") or {}
    parts = [
        f"<b>{summary.get('requests_per_minute', 0):g}</b> req/min",
        f"p50 <b>{_ms(latency.get('p50'))}</b>",
        f"p95 <b>{_ms(latency.get('p95'))}</b>",
        f"<b>{errors.get('total', 0)}</b> errors "
        f"({errors.get('4xx', 0)} 4xx, {errors.get('5xx', 0)} 5xx)",
        f"{summary.get('requests_total', 0)} requests in all",
        f"{summary.get('in_flight', 0)} in flight",
    ]
    if summary.get("tokens_generated"):
        parts.append(f"{summary['tokens_generated']} tokens generated")
    worker = summary.get("worker")
    if worker:
        restarts = worker.get("restarts", 0)
        parts.append(
            f"worker <b>{worker.get('rss_mb', 0):g}</b> MiB"
            f" (limit {worker.get('memory_limit_mb', 0):g} MiB, pid {worker.get('pid')}, "
            f"{restarts} restart{'' if restarts == 1 else 's'})")
        if worker.get("cpu_percent") is not None:
            # A worker (or a process its checkpoint started) that spins shows here.
            parts.append(f"CPU <b>{worker['cpu_percent']:g}%</b> of a core")
    return " · ".join(parts)


def last_error_html(error: dict[str, Any] | None) -> str:
    """The last 4xx/5xx answer, or nothing."""
    if not error:
        return ""
    return (f"<div class='awb-reason'>Last error {html.escape(_clock(error['time']))}: "
            f"{html.escape(str(error.get('route')))} → {error.get('status')}: "
            f"{html.escape(str(error.get('message') or ''))}</div>")


def request_table(requests: Sequence[dict[str, Any]]) -> str:
    """The request log as a small HTML table (payload columns only if any were captured)."""
    if not requests:
        return ""
    payloads = any("request" in r for r in requests)
    head = ["time", "route", "status", "latency", "batch"] + (
        ["request", "response"] if payloads else [])
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in requests:
        cells = [_clock(r["time"]), r["route"], str(r["status"]), _ms(r.get("latency_ms")),
                 "" if r.get("batch_size") is None else str(r["batch_size"])]
        if payloads:
            cells += [_short(r.get("request")), _short(r.get("response"))]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return ("<table class='awb-reqlog' style='font-size:0.85em;border-collapse:collapse'>"
            + "".join(rows) + "</table>")


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[:limit] + "…"


class MetricsView(widgets.VBox):
    """Live traffic figures of one deployment, refreshed every ``interval`` seconds."""

    def __init__(self, client: WorkbenchClient, name: str, *, interval: float = 2.0,
                 autostart: bool = True) -> None:
        self.client = client
        self.agent_name = name
        self.summary: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self._syncing = False
        self._lock = threading.Lock()

        self.figures = widgets.HTML("<span class='awb-hint'>Reading traffic…</span>")
        self.spark = widgets.HTML()
        self.last_error = widgets.HTML()
        self.capture = widgets.Checkbox(
            value=False, description="Capture payloads", indent=False,
            tooltip="Keep request and response bodies in this agent's request log (they are "
            "shown here and saved with widget state); off again after a server restart")
        self.capture_status = widgets.HTML()
        self.log_view = widgets.HTML()
        self.capture.observe(self._on_capture, "value")
        super().__init__([
            gap(widgets.HBox([self.figures], layout=widgets.Layout(align_items="center")), 8),
            gap(widgets.HBox([self.spark, self.capture, self.capture_status],
                             layout=widgets.Layout(align_items="center")), 12),
            self.last_error,
            self.log_view,
        ])
        gap(self, 4)
        self.add_class("awb-metrics")
        self.poller = StatusPoller(self.refresh, interval=interval,
                                   name=f"agents-metrics-{name}")
        # close_tree() closes widgets without calling close(): stop when the comm goes.
        self.observe(self._on_comm, "comm")
        if autostart:
            self.poller.start()
            self.poller.poke()

    @property
    def closed(self) -> bool:
        """Whether the widget was closed (its comm is gone)."""
        return self.comm is None

    def refresh(self) -> float | None:
        """Read the summary and the request log and show them (poller thread or tests)."""
        if self.closed:
            self.poller.stop(timeout=0)
            return None
        try:
            summary = self.client.metrics(self.agent_name)
            requests = (self.client.request_log(self.agent_name, LOG_ROWS)
                        if summary.get("metrics_enabled") else [])
        except WorkbenchError as exc:
            self.figures.value = (f"<span class='awb-hint'>Traffic figures unavailable: "
                                  f"{html.escape(str(exc))}</span>")
            return ERROR_BACKOFF_S
        self.show(summary, requests)
        return None

    def show(self, summary: dict[str, Any], requests: Sequence[dict[str, Any]]) -> None:
        """Set the widgets from a summary and a request log (REST shapes)."""
        with self._lock:
            self.summary = dict(summary)
            self.requests = list(requests)
            if not summary.get("metrics_enabled", True):
                self.figures.value = ("<span class='awb-hint'>Metrics are switched off on this "
                                      "server (AgentsWorkbenchApp.metrics_enabled).</span>")
                self.capture.disabled = True
                return
            self.figures.value = headline(summary)
            self.spark.value = sparkline(summary.get("recent_latency_ms") or [])
            self.last_error.value = last_error_html(summary.get("last_error"))
            self.log_view.value = request_table(requests)
            self._syncing = True
            try:
                self.capture.value = bool(summary.get("payload_capture"))
            finally:
                self._syncing = False

    def _on_capture(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return
        enabled = bool(change["new"])
        self.capture_status.value = "<span class='awb-hint'>Saving…</span>"
        future = self.client.submit(self.client.set_payload_capture, self.agent_name, enabled)

        def done(_future: Any) -> None:
            try:
                _future.result()
            except WorkbenchError as exc:
                self.capture_status.value = (
                    f"<span class='awb-error'>{html.escape(str(exc))}</span>")
                return
            self.capture_status.value = ""
            self.poller.poke()

        future.add_done_callback(done)

    def _on_comm(self, change: dict[str, Any]) -> None:
        if change["new"] is None:
            self.poller.stop(timeout=0)

    def close(self) -> None:
        """Stop polling and close the widgets."""
        self.poller.stop(timeout=0)
        close_tree(self)
