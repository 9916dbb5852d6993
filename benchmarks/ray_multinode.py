"""Throughput of one agent on 1, 2 and 4 Ray Serve replicas spread over two Ray nodes.

Needs ``ray[serve]`` (the ``[ray]`` extra) and ``wrk``. Starts a real two-node Ray cluster
on this machine (tests/ray_cluster.py: a head and one worker node, each a ``ray start`` with
``cpus_per_node`` CPUs and a ``bench_node`` resource), one workbench server joined to it, and
loads the compute-heavy policy (``bench-cnn``) at ``connections`` keep-alive connections with
1, 2 and 4 replicas. Which node each replica landed on is read from its process (the node's
``ray start`` session) and reported next to the figure.

Both nodes share this machine's cores, so this measures the serving path over several nodes,
not the gain of adding machines: the CPU count bounds every figure.

    python -m benchmarks.ray_multinode --root /tmp/bench-ws --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.loadgen import run_wrk
from benchmarks.policies import CNN, body_for, ensure_workspace
from benchmarks.servers import WorkbenchServer
from server_extension.serving.ray_backend import app_prefix
from tests.ray_cluster import MultiNodeCluster

DEPLOY_TIMEOUT = 400.0


def _placement(cluster: MultiNodeCluster, app_name: str, replicas: int) -> dict[str, int]:
    """Replicas per node, found by probing until every replica has answered once."""
    from ray import serve

    handle = serve.get_app_handle(app_name)
    pids: set[int] = set()
    for _ in range(50 * replicas):
        pids.add(handle.probe.remote().result(timeout_s=120))
        if len(pids) >= replicas:
            break
    sessions = {node.process.pid: node.name for node in cluster.nodes}
    return dict(Counter(sessions.get(os.getsid(pid), "?") for pid in pids))


def measure(root: Path, *, seconds: float = 10.0, connections: int = 64,
            cpus_per_node: int = 1, say: Any = print) -> dict[str, Any]:
    """Run the scan; figures as a flat dict (requests/s, seconds, replicas per node)."""
    ensure_workspace(root, say)
    logs = Path(tempfile.mkdtemp(prefix="awbrn-", dir="/tmp"))  # Ray's socket paths stay short
    out: dict[str, Any] = {"connections": connections, "cpus_per_node": cpus_per_node,
                           "os_cpus": os.cpu_count()}
    server_root = logs / "ws"
    server_root.mkdir()
    (server_root / "experiments").symlink_to(root.resolve() / "experiments")
    resources = {"bench_node": 2.0}
    with MultiNodeCluster(logs / "ray", head_cpus=cpus_per_node,
                          head_resources=resources) as cluster:
        cluster.add_node(cpus=cpus_per_node, resources=resources, name="worker")
        say(f"two Ray nodes up at {cluster.address}")
        # Half a CPU per replica: four replicas fit on two 1-CPU nodes, two per node at most
        # (bench_node), so four are spread over both.
        server = WorkbenchServer(server_root, logs, batching="off", extra=[
            f"--AgentsWorkbenchApp.ray_address={cluster.address}",
            "--AgentsWorkbenchApp.backend=ray",
            f"--AgentsWorkbenchApp.ray_replica_cpus={cpus_per_node / 2}"])
        server.log_path = logs / "workbench.log"
        try:
            server.start()
            for replicas in (1, 2, 4):
                name = f"cnn-{replicas}"
                say(f"CNN, {replicas} replica(s)")
                started = time.perf_counter()
                server.api("POST", "agents", json={
                    "name": name, "experiment": CNN, "checkpoint": "best",
                    "options": {"backend": "ray", "replicas": replicas,
                                "ray_resources": {"bench_node": 1}}}).raise_for_status()
                agent = server.connect(name, timeout=DEPLOY_TIMEOUT)[0]
                out[f"cnn_{replicas}_deploy_s"] = round(time.perf_counter() - started, 1)
                from ray import serve

                app = next(n for n in serve.status().applications
                           if n.startswith(f"{app_prefix(server_root)}{name}-"))
                out[f"cnn_{replicas}_per_node"] = _placement(cluster, app, replicas)
                url = agent["endpoint"] + "/get_action"
                run_wrk(url, body_for(CNN), key=agent["api_key"], connections=connections,
                        seconds=1)
                result = run_wrk(url, body_for(CNN), key=agent["api_key"],
                                 connections=connections, seconds=seconds)
                out[f"cnn_{replicas}_rps"] = result.rps
                out[f"cnn_{replicas}_mean_ms"] = result.mean_ms
                time.sleep(2)  # calls wrk left in flight finish before the next agent
                server.disconnect(name)
        finally:
            server.stop()
    shutil.rmtree(logs, ignore_errors=True)
    for replicas in (2, 4):
        out[f"cnn_{replicas}_over_1"] = round(out[f"cnn_{replicas}_rps"] / out["cnn_1_rps"], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench-ws")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    args = parser.parse_args(argv)
    figures = measure(args.root, seconds=args.seconds, connections=args.connections,
                      cpus_per_node=args.cpus_per_node)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
