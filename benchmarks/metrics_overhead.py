"""A/B: get_action throughput with per-deployment metrics on and off, side by side.

Two ``jupyter server`` processes serve the same CartPole DQN checkpoint, one started with
``--AgentsWorkbenchApp.metrics_enabled=False``. wrk drives them in alternating rounds (A B B A
A B ...) so that drift in the machine's load hits both alike; the medians are compared.

    python -m benchmarks.metrics_overhead --rounds 6 --seconds 5 --connections 8
    python -m benchmarks.metrics_overhead --experiments ./workspace/experiments

Without ``--experiments`` it trains the quick demo workspace first (seconds).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.loadgen import have_wrk, run_wrk
from benchmarks.policies import DEMO, body_for
from benchmarks.servers import WorkbenchServer


def measure(experiments: Path, *, rounds: int, seconds: float,
            connections: int) -> dict[str, Any]:
    """Run the A/B and return per-round and median requests/s of both servers."""
    work = Path(tempfile.mkdtemp(prefix="awb-metrics-ab-"))
    servers: dict[str, WorkbenchServer] = {}
    try:
        for label, flag in (("on", "True"), ("off", "False")):
            root = work / label
            root.mkdir(parents=True)
            shutil.copytree(experiments, root / "experiments")
            servers[label] = WorkbenchServer(root, work, batching="auto", label=label, extra=[
                "--AgentsWorkbenchApp.health_check_interval=0",
                f"--AgentsWorkbenchApp.metrics_enabled={flag}"]).launch()
        for server in servers.values():  # both start side by side
            server.wait()
        agents = {label: s.deploy("cartpole", "cartpole-dqn") for label, s in servers.items()}
        body = body_for(DEMO)
        for agent in agents.values():  # warm-up: first requests import and allocate
            run_wrk(agent["endpoint"] + "/get_action", body, key=agent["api_key"],
                    connections=connections, seconds=1)
        results: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(rounds):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for label in order:
                agent = agents[label]
                run = run_wrk(agent["endpoint"] + "/get_action", body, key=agent["api_key"],
                              connections=connections, seconds=seconds)
                if run.errors:
                    raise RuntimeError(f"{run.errors} errors against metrics={label}: {run}")
                results[label].append(run.rps)
        counted = servers["on"].api("GET", "agents/cartpole/metrics").json()["requests_total"]
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    # Each round ran both back to back, so their ratio cancels most of the machine's drift.
    paired = [a / b for a, b in zip(results["on"], results["off"], strict=True)]
    return {
        "rounds": rounds, "seconds": seconds, "connections": connections,
        "rps_on": results["on"], "rps_off": results["off"],
        "median_on": round(on, 1), "median_off": round(off, 1),
        "overhead_pct": round((off - on) / off * 100, 2),
        "paired_overhead_pct": round((1 - statistics.median(paired)) * 100, 2),
        "requests_counted_by_on": counted,
    }


def main() -> None:
    """Command line: print the A/B as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=Path, default=None,
                        help="an experiments/ folder holding cartpole-dqn")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install wrk).")
    experiments = args.experiments
    scratch = None
    if experiments is None:
        from server_extension.demos.classic import build_demo

        scratch = Path(tempfile.mkdtemp(prefix="awb-demo-"))
        build_demo(scratch, quick=True)
        experiments = scratch / "experiments"
    try:
        print(json.dumps(measure(experiments, rounds=args.rounds, seconds=args.seconds,
                                 connections=args.connections), indent=2))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
