"""What the hop to a worker thread costs: baseline (b) inline against (b) with ``--threaded``.

The workbench calls every runtime on a worker thread so that a slow or hanging model cannot
freeze the Jupyter server (and ``request_timeout`` can answer). This runs the minimal app both
ways, alternating rounds in one run, at 16 connections on the demo CartPole agent.

    python -m benchmarks.thread_hop --workspace benchmarks/.workspace [--rounds 4 --seconds 5]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .loadgen import run_wrk

REPO = Path(__file__).resolve().parent.parent


def _body() -> str:
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 4), np.float32), allow_pickle=False)
    return json.dumps({"obs": base64.b64encode(buf.getvalue()).decode(), "batch_size": 1})


def measure(workspace: Path, *, rounds: int = 4, seconds: float = 5.0,
            connections: int = 16) -> dict[str, Any]:
    """Median req/s of the minimal app inline and threaded, and their ratio."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    body = _body()
    rps: dict[str, list[float]] = {"inline": [], "threaded": []}
    try:
        for label, port, extra in (("inline", 9301, []), ("threaded", 9302, ["--threaded"])):
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.minimal_server", "--root", str(workspace),
                 "--port", str(port), "--key", "k", *extra],
                cwd=REPO, stdout=subprocess.PIPE, env=env, text=True)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "READY":
                raise RuntimeError(f"minimal server ({label}) did not start")
            servers[label] = (proc, port)
        urls = {label: f"http://127.0.0.1:{port}/get_action" for label, (_, port) in
                servers.items()}
        for url in urls.values():  # warm-up
            run_wrk(url, body, key="k", connections=connections, seconds=1)
        for i in range(rounds):
            # Alternate the order so drift on a shared machine hits both alike.
            for label in ("inline", "threaded") if i % 2 == 0 else ("threaded", "inline"):
                run = run_wrk(urls[label], body, key="k", connections=connections,
                              seconds=seconds)
                rps[label].append(run.rps)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
    inline, threaded = statistics.median(rps["inline"]), statistics.median(rps["threaded"])
    return {"connections": connections, "rps_inline": rps["inline"],
            "rps_threaded": rps["threaded"], "median_inline": round(inline, 1),
            "median_threaded": round(threaded, 1),
            "threaded_over_inline": round(threaded / inline, 3)}


def main() -> None:
    """Print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=REPO / "benchmarks" / ".workspace")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.workspace, rounds=args.rounds, seconds=args.seconds),
                     indent=1))


if __name__ == "__main__":
    main()
