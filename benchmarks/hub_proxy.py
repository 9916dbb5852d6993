"""What JupyterHub's proxy adds to one inference call.

Under JupyterHub a client reaches a user's agent through configurable-http-proxy
(``<hub>/user/<name>/agents/d/<agent>/get_action``). The hub itself is not on that path:
the inference routes check the deployment key, not the hub's auth. So the proxy is the whole
difference, and this script measures it without a hub: one workbench server, and the same
configurable-http-proxy the hub runs (from npm, ``.venv/chp``) with the route the hub would
add for the server. Calls alternate between direct and proxied rounds, one at a time on a kept
-alive connection each (the per-call latency a client sees), and the medians are compared.

    python -m benchmarks.hub_proxy --calls 400 --rounds 5
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.servers import WorkbenchServer, free_port

REPO = Path(__file__).resolve().parents[1]
CHP = REPO / ".venv" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
PREFIX = "/user/alice/"


def _body() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 4), np.float32), allow_pickle=False)
    return json.dumps({"obs": base64.b64encode(buf.getvalue()).decode()}).encode()


def _round(session: requests.Session, url: str, key: str, calls: int) -> list[float]:
    body, headers = _body(), {"Authorization": f"Bearer {key}",
                              "Content-Type": "application/json"}
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        resp = session.post(url, data=body, headers=headers, timeout=30)
        times.append((time.perf_counter() - started) * 1000)
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: {resp.status_code} {resp.text[:200]}")
    return times


def measure(experiments: Path, calls: int = 400, rounds: int = 5) -> dict[str, Any]:
    """Median and p90 ms per call, direct and through the proxy, over ``rounds`` rounds."""
    if not CHP.exists():
        raise SystemExit(f"configurable-http-proxy is missing at {CHP}: run scripts/test.sh.")
    with tempfile.TemporaryDirectory(prefix="awb-hubproxy-") as folder:
        root = Path(folder) / "ws"
        shutil.copytree(experiments, root / "experiments")
        server = WorkbenchServer(root, Path(folder), label="hubproxy",
                                 extra=[f"--ServerApp.base_url={PREFIX}"])
        server.launch()
        proxy_port, api_port = free_port(), free_port()
        token = secrets.token_hex(16)
        proxy = subprocess.Popen(
            [str(CHP), "--ip", "127.0.0.1", "--port", str(proxy_port), "--api-ip",
             "127.0.0.1", "--api-port", str(api_port), "--log-level", "warn"],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            server._wait(lambda: server.session.get(
                f"http://127.0.0.1:{server.port}{PREFIX}api/status", timeout=2).ok,
                120, "jupyter server")
            server_url = f"http://127.0.0.1:{server.port}"
            _wait_for(lambda: requests.post(
                f"http://127.0.0.1:{api_port}/api/routes{PREFIX}",
                headers={"Authorization": f"token {token}"},
                json={"target": server_url}, timeout=2).status_code == 201)
            api = f"{server_url}{PREFIX}agents/api/"
            server.session.post(api + "agents", json={"name": "a", "experiment":
                                                      "cartpole-dqn"}, timeout=60)
            server.session.post(api + "agents/a/connect", timeout=60)
            agent: dict[str, Any] = {}
            _wait_for(lambda: (agent.update(server.session.get(api + "agents/a", timeout=10)
                                            .json()) or agent.get("status") == "Deployed"))
            direct_url = f"{server_url}{PREFIX}agents/d/a/get_action"
            proxied_url = f"http://127.0.0.1:{proxy_port}{PREFIX}agents/d/a/get_action"
            sessions = {"direct": requests.Session(), "proxy": requests.Session()}
            found: dict[str, list[float]] = {"direct": [], "proxy": []}
            for url, name in ((direct_url, "direct"), (proxied_url, "proxy")):
                _round(sessions[name], url, agent["api_key"], 50)  # warm up
            for _ in range(rounds):
                for url, name in ((direct_url, "direct"), (proxied_url, "proxy")):
                    found[name] += _round(sessions[name], url, agent["api_key"], calls)
        finally:
            proxy.terminate()
            proxy.wait(10)
            server.stop()
    summary = {name: {"median_ms": round(statistics.median(t), 3),
                      "p90_ms": round(statistics.quantiles(t, n=10)[8], 3), "calls": len(t)}
               for name, t in found.items()}
    summary["proxy_adds_median_ms"] = round(
        summary["proxy"]["median_ms"] - summary["direct"]["median_ms"], 3)
    return summary


def _wait_for(predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError("benchmark set-up did not finish in time")


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=Path, default=None,
                        help="an experiments/ folder holding cartpole-dqn")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    experiments = args.experiments
    scratch = None
    if experiments is None:
        from server_extension.demos.classic import build_demo

        scratch = Path(tempfile.mkdtemp(prefix="awb-demo-"))
        build_demo(scratch, quick=True)
        experiments = scratch / "experiments"
    try:
        print(json.dumps(measure(experiments, calls=args.calls, rounds=args.rounds), indent=2))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
