"""Per-deployment metrics: counters, request log, payload capture, Prometheus, the row's view.

Server tests drive a real ``jupyter server`` child process serving a real trained CartPole DQN
(and the tiny chat model for token counts); the Prometheus text is read from jupyter_server's
own ``/metrics`` and parsed with prometheus_client's parser.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from agents_widget.client import WorkbenchClient
from agents_widget.metrics_view import MetricsView, headline, sparkline
from server_extension.serving.metrics import (
    BUCKETS_S,
    PAYLOAD_LIMIT,
    DeploymentMetrics,
    MetricsStore,
    percentile,
)
from tests.servers import ServerProcess, start_server, wait_until
from workbench_core.discovery import ServerInfo

pytestmark = pytest.mark.slow


def obs_body(batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """A get_action body with ``batch`` CartPole observations."""
    obs = np.random.default_rng(seed).normal(size=(batch, 4)).astype(np.float32) * 0.05
    buf = io.BytesIO()
    np.save(buf, obs, allow_pickle=False)
    return {"obs": base64.b64encode(buf.getvalue()).decode(), "batch_size": batch}


def post(agent: dict[str, Any], route: str, body: Any, key: str | None = "agent") -> Any:
    headers = {} if key is None else {
        "Authorization": f"Bearer {agent['api_key'] if key == 'agent' else key}"}
    return requests.post(f"{agent['endpoint']}/{route}", json=body, headers=headers, timeout=30)


def prometheus(server: ServerProcess) -> dict[str, Any]:
    """The server's /metrics, parsed: family name -> family."""
    resp = server.session.get(server.url + "metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def samples(families: dict[str, Any], name: str, **labels: str) -> list[Any]:
    """Samples named ``name`` (any family) whose labels include ``labels``."""
    return [s for f in families.values() for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         demo_experiments: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("metrics") / "ws", demo_experiments)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def agent(live: ServerProcess, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A freshly deployed CartPole agent named after the test (deleted afterwards)."""
    name = request.node.name.replace("test_", "").replace("_", "-")[:60]
    deployed = live.deploy(name, "cartpole-dqn")
    try:
        yield deployed
    finally:
        live.api("DELETE", f"agents/{name}")


# -- the in-memory part -----------------------------------------------------------------------


def test_counts_histogram_log_and_percentiles() -> None:
    metrics = DeploymentMetrics("a", log_size=5)
    now = time.time()
    for i, (status, latency) in enumerate([(200, 0.001), (200, 0.003), (400, 0.02),
                                           (200, 0.2), (503, 2.0), (200, 0.004)]):
        metrics.begin()
        assert metrics.in_flight == 1
        metrics.end("get_action", status, now - latency, batch_size=i,
                    error="bad obs" if status >= 400 else None,
                    request="secret body", response="answer")
    assert metrics.in_flight == 0
    assert metrics.count("get_action") == 6
    assert metrics.count("get_action", 200) == 4
    assert metrics.count(status=503) == 1
    stats = metrics.routes["get_action"]
    assert sum(stats.buckets) == 6
    # 2.0 s lands in the bucket whose upper bound is 2.5 s.
    assert stats.buckets[BUCKETS_S.index(2.5)] == 1
    assert stats.sum_s == pytest.approx(2.228, abs=0.05)
    assert metrics.last_error is not None
    assert metrics.last_error["status"] == 503
    # The log keeps the newest 5, newest first, and no payloads while capture is off.
    log = metrics.requests()
    assert [r["batch_size"] for r in log] == [5, 4, 3, 2, 1]
    assert all("request" not in r and "response" not in r for r in log)
    summary = metrics.summary()
    assert summary["requests_total"] == 6
    assert summary["errors"] == {"total": 2, "4xx": 1, "5xx": 1}
    assert summary["by_route"] == {"get_action": {"200": 4, "400": 1, "503": 1}}
    assert summary["latency_ms"]["samples"] == 5
    assert 3 <= summary["latency_ms"]["p50"] <= 25
    assert summary["latency_ms"]["p95"] >= 1900
    assert len(summary["recent_latency_ms"]) == 5


def test_capture_keeps_payloads_cut_to_the_limit() -> None:
    metrics = DeploymentMetrics("a")
    metrics.capture_payloads = True
    metrics.begin()
    metrics.end("predict", 200, time.time(), request="x" * (PAYLOAD_LIMIT + 10),
                response='{"ok": 1}')
    [entry] = metrics.requests()
    assert entry["response"] == '{"ok": 1}'
    assert entry["request"].startswith("x" * PAYLOAD_LIMIT)
    assert "10 more characters" in entry["request"]


def test_rate_extrapolates_when_the_log_wraps_within_a_minute() -> None:
    metrics = DeploymentMetrics("a", log_size=10)
    now = time.time()
    for i in range(30):  # 30 requests over the last 3 seconds; the log keeps only 10
        metrics.begin()
        metrics.end("get_action", 200, now - 3 + i * 0.1)
    rate = metrics.summary(now=now)["requests_per_minute"]
    assert 400 <= rate <= 1000  # about 10 per second, not the log's capacity of 10
    slow = DeploymentMetrics("b", log_size=10)
    for i in range(3):
        slow.begin()
        slow.end("status", 200, now - 100 + i * 40)
    assert slow.summary(now=now)["requests_per_minute"] == 2.0  # the ones of the last minute


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0], 0.95) == 1.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.95) == 95.0


def test_store_forgets_and_keeps_empty_summaries_unstored() -> None:
    store = MetricsStore(log_size=3)
    assert store.empty_summary("x")["requests_total"] == 0
    assert store.get("x") is None
    store.for_agent("x").capture_payloads = True
    assert store.for_agent("x").capture_payloads is True
    store.forget("x")
    assert store.get("x") is None


def test_view_helpers_render() -> None:
    assert "No requests" in sparkline([])
    svg = sparkline([1.0, 3.0, 2.0])
    assert svg.startswith("<svg")
    assert "polyline" in svg
    line = headline({"requests_per_minute": 12.5, "latency_ms": {"p50": 1.25, "p95": 3.5},
                     "errors": {"total": 1, "4xx": 1, "5xx": 0}, "requests_total": 9,
                     "in_flight": 0, "tokens_generated": 42})
    assert "12.5</b> req/min" in line
    assert "1.25 ms" in line
    assert "42 tokens" in line
    assert "worker" not in line  # served in-process: no worker to show
    line = headline({"worker": {"rss_mb": 412.5, "memory_limit_mb": 4096, "pid": 7,
                                "restarts": 1}})
    assert "worker <b>412.5</b> MiB" in line
    assert "1 restart)" in line
    assert "CPU" not in line  # no sample yet
    line = headline({"worker": {"rss_mb": 1, "memory_limit_mb": 4096, "pid": 7,
                                "restarts": 0, "cpu_seconds": 9.5, "cpu_percent": 187.5}})
    assert "CPU <b>187.5%</b> of a core" in line


# -- through a real server --------------------------------------------------------------------


def test_counters_move_with_requests_including_4xx(live: ServerProcess,
                                                   agent: dict[str, Any]) -> None:
    name = agent["name"]
    empty = live.api("GET", f"agents/{name}/metrics").json()
    assert empty["metrics_enabled"] is True
    assert empty["requests_total"] == 0
    for seed in range(3):
        assert post(agent, "get_action", obs_body(2, seed)).status_code == 200
    assert post(agent, "get_action", {"obs": None}).status_code == 400
    assert post(agent, "get_action", obs_body(), key=None).status_code == 401
    assert post(agent, "get_action", obs_body(), key="awb_wrong").status_code == 401
    assert post(agent, "generate", {"prompts": ["zebra-prompt"]}).status_code == 400
    assert requests.get(f"{agent['endpoint']}/status", timeout=10).status_code == 200
    assert requests.get(f"{agent['endpoint']}/nothing-here", timeout=10).status_code == 404

    summary = live.api("GET", f"agents/{name}/metrics").json()
    assert summary["by_route"]["get_action"] == {"200": 3, "400": 1, "401": 2}
    assert summary["by_route"]["generate"] == {"400": 1}
    assert summary["by_route"]["status"] == {"200": 1}
    assert summary["by_route"]["unknown"] == {"404": 1}
    assert summary["requests_total"] == 9
    assert summary["errors"] == {"total": 5, "4xx": 5, "5xx": 0}
    assert summary["in_flight"] == 0
    assert summary["last_error"]["status"] == 404
    assert summary["last_error"]["route"] == "unknown"
    assert summary["requests_per_minute"] >= 9
    assert summary["latency_ms"]["p50"] > 0
    assert summary["latency_ms"]["p95"] >= summary["latency_ms"]["p50"]
    # The two refused (401) calls are counted above but kept out of the request log.
    assert len(summary["recent_latency_ms"]) == 7
    assert summary["refused"]["total"] == 2

    log = live.api("GET", f"agents/{name}/requests").json()
    assert log["payload_capture"] is False
    entries = log["requests"]
    assert [e["route"] for e in entries[:2]] == ["unknown", "status"]
    ok = [e for e in entries if e["route"] == "get_action" and e["status"] == 200]
    assert len(ok) == 3
    assert all(e["batch_size"] == 2 and e["latency_ms"] > 0 for e in ok)
    assert live.api("GET", f"agents/{name}/requests?limit=2").json()["requests"] == entries[:2]
    assert live.api("GET", f"agents/{name}/requests?limit=x").status_code == 400
    # Neither the key, the wrong key nor any payload made it into the log.
    text = json.dumps(log)
    for secret in (agent["api_key"], "awb_wrong", obs_body(2, 0)["obs"], "zebra-prompt"):
        assert secret not in text
    assert all("request" not in e and "response" not in e for e in entries)


def test_payload_capture_only_while_switched_on(live: ServerProcess,
                                                agent: dict[str, Any]) -> None:
    name = agent["name"]
    body_off, body_on = obs_body(1, 1), obs_body(1, 2)
    assert post(agent, "get_action", body_off).status_code == 200
    resp = live.api("PUT", f"agents/{name}/payload-capture", json={"enabled": True})
    assert resp.json() == {"agent": name, "payload_capture": True}
    answer = post(agent, "get_action", body_on)
    assert answer.status_code == 200
    assert live.api("PUT", f"agents/{name}/payload-capture",
                    json={"enabled": False}).json()["payload_capture"] is False
    assert post(agent, "get_action", obs_body(1, 3)).status_code == 200

    newest, captured, before = live.api("GET", f"agents/{name}/requests").json()["requests"]
    assert "request" not in newest
    assert "request" not in before
    assert body_on["obs"] in captured["request"]
    assert json.loads(captured["response"]) == answer.json()
    assert agent["api_key"] not in json.dumps(captured)
    assert live.api("PUT", f"agents/{name}/payload-capture",
                    json={"enabled": "yes"}).status_code == 400
    assert live.api("GET", "agents/nobody/metrics").status_code == 404


def test_prometheus_text_parses_and_carries_agent_and_route(live: ServerProcess,
                                                            agent: dict[str, Any]) -> None:
    name = agent["name"]
    for seed in range(4):
        assert post(agent, "get_action", obs_body(1, seed)).status_code == 200
    assert post(agent, "get_action", {"obs": None}).status_code == 400
    # Requests for agents that do not exist are not counted (labels would grow without end).
    assert post({"endpoint": live.url + "agents/d/made-up", "api_key": "x"}, "get_action",
                obs_body()).status_code == 404

    families = prometheus(live)
    assert samples(families, "agents_workbench_requests_total", agent=name,
                   route="get_action", code="200")[0].value == 4
    assert samples(families, "agents_workbench_requests_total", agent=name,
                   route="get_action", code="400")[0].value == 1
    [count] = samples(families, "agents_workbench_request_duration_seconds_count", agent=name,
                      route="get_action")
    assert count.value == 5
    inf = samples(families, "agents_workbench_request_duration_seconds_bucket", agent=name,
                  route="get_action", le="+Inf")
    assert inf[0].value == 5
    assert samples(families, "agents_workbench_in_flight_requests", agent=name)[0].value == 0
    assert samples(families, "agents_workbench_last_error_timestamp_seconds", agent=name)
    assert not samples(families, "agents_workbench_requests_total", agent="made-up")
    # Jupyter's own metrics are still there: we extended its registry, not replaced it.
    assert "http_request_duration_seconds" in families
    # And /metrics keeps Jupyter's auth: anonymous scrapes are refused.
    assert requests.get(live.url + "metrics", timeout=10).status_code == 403

    # A deleted agent drops out of both views.
    live.api("DELETE", f"agents/{name}")
    assert not samples(prometheus(live), "agents_workbench_requests_total", agent=name)


def test_metrics_switched_off(tmp_path: Path, demo_experiments: Path) -> None:
    server = start_server(tmp_path / "off", demo_experiments,
                          extra_args=["--AgentsWorkbenchApp.metrics_enabled=False"])
    try:
        agent = server.deploy("quiet", "cartpole-dqn")
        assert post(agent, "get_action", obs_body()).status_code == 200
        assert server.api("GET", "agents/quiet/metrics").json() == {
            "agent": "quiet", "metrics_enabled": False}
        assert server.api("GET", "agents/quiet/requests").json()["requests"] == []
        assert server.api("PUT", "agents/quiet/payload-capture",
                          json={"enabled": True}).status_code == 409
        assert not samples(prometheus(server), "agents_workbench_requests_total")
    finally:
        server.stop()


def test_tokens_generated_are_counted(advanced_server: ServerProcess) -> None:
    chat = advanced_server.deploy("chat", "tiny-chat-sft")
    params = {"max_new_tokens": 8, "temperature": 0.0, "do_sample": False}
    resp = post(chat, "generate", {"prompts": ["Capital of France?", "Hello"], "params": params})
    assert resp.status_code == 200, resp.text
    after_generate = advanced_server.api("GET", "agents/chat/metrics").json()
    assert 0 < after_generate["tokens_generated"] <= 16
    stream = post(chat, "generate_stream", {"prompt": "Hello", "params": params})
    assert stream.status_code == 200
    assert stream.text
    summary = advanced_server.api("GET", "agents/chat/metrics").json()
    assert summary["tokens_generated"] > after_generate["tokens_generated"]
    assert summary["by_route"] == {"generate": {"200": 1}, "generate_stream": {"200": 1}}
    log = advanced_server.api("GET", "agents/chat/requests").json()["requests"]
    assert [e["batch_size"] for e in log] == [1, 2]
    assert "Capital" not in json.dumps(log)
    families = prometheus(advanced_server)
    assert samples(families, "agents_workbench_generated_tokens_total",
                   agent="chat")[0].value == summary["tokens_generated"]


# -- the row's live view ----------------------------------------------------------------------


def test_view_shows_live_figures_and_toggles_capture(live: ServerProcess,
                                                      agent: dict[str, Any]) -> None:
    client = WorkbenchClient(ServerInfo(url=live.url, token=live.token))
    view = MetricsView(client, agent["name"], interval=0.2)
    try:
        assert post(agent, "get_action", obs_body(3)).status_code == 200
        assert post(agent, "get_action", {"obs": None}).status_code == 400
        # The poller thread picks the requests up by itself.
        wait_until(lambda: view.summary.get("requests_total") == 2, 15, "the view to refresh")
        assert view.poller.running
        assert "req/min" in view.figures.value
        assert "1</b> errors" in view.figures.value
        assert "<svg" in view.spark.value
        assert "obs is required" in view.last_error.value
        assert view.log_view.value.count("<tr>") == 3  # header and two requests
        assert "get_action" in view.log_view.value

        view.capture.value = True  # as a click does: the call goes to the client's worker
        wait_until(lambda: live.api("GET", f"agents/{agent['name']}/metrics").json()
                   ["payload_capture"], 15, "capture to be switched on")
        assert post(agent, "get_action", obs_body(1, 7)).status_code == 200
        wait_until(lambda: "request" in view.log_view.value, 15, "a captured row")
        assert view.capture.value is True
    finally:
        # The row closes its widgets with close_tree, not view.close(): the poller must stop.
        from agents_widget.viewkit import close_tree

        close_tree(view)
        wait_until(lambda: not view.poller.running, 10, "the poller to stop")
        client.close()
