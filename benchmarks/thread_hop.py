"""What the hop to a worker thread costs: baseline (b) inline against (b) with ``--threaded``.

The workbench calls every runtime on a worker thread so that a slow or hanging model cannot
freeze the Jupyter server (and ``request_timeout`` can answer). This runs the minimal app both
ways, alternating rounds in one run, at 16 connections on the demo CartPole agent.

    python -m benchmarks.thread_hop --workspace benchmarks/.workspace [--rounds 4 --seconds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .loadgen import run_wrk
from .policies import DEMO, body_for
from .servers import REPO, MinimalServer


def measure(workspace: Path, *, rounds: int = 4, seconds: float = 5.0,
            connections: int = 16) -> dict[str, Any]:
    """Median req/s of the minimal app inline and threaded, and their ratio."""
    body = body_for(DEMO)
    rps: dict[str, list[float]] = {"inline": [], "threaded": []}
    with tempfile.TemporaryDirectory(prefix="awb-thread-hop-") as logs:
        servers = {label: MinimalServer(workspace, DEMO, Path(logs),
                                        threaded=label == "threaded") for label in rps}
        try:
            for server in servers.values():
                server.start()
            for server in servers.values():  # warm-up
                run_wrk(server.url, body, key=server.key, connections=connections, seconds=1)
            for i in range(rounds):
                # Alternate the order so drift on a shared machine hits both alike.
                for label in ("inline", "threaded") if i % 2 == 0 else ("threaded", "inline"):
                    server = servers[label]
                    rps[label].append(run_wrk(server.url, body, key=server.key,
                                              connections=connections, seconds=seconds).rps)
        finally:
            for server in servers.values():
                server.stop()
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
