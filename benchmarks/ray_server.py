"""Baseline (d): Ray Serve serving the same runtime with the same contract and auth.

Benchmark-only (needs ``ray[serve]``). One replica of a deployment whose ``__call__`` does what
the workbench's get_action does: Bearer check, decode, act, encode. Requests go through Ray's
HTTP proxy, which is how a Ray Serve user would expose it.

    python -m benchmarks.ray_server --root WS --experiment cartpole-dqn --port 9100 --key K
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.baseline import parser


def main(args: argparse.Namespace) -> None:
    """Start a local Ray, deploy the policy under /get_action, keep running."""
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    @serve.deployment(num_replicas=args.replicas, max_ongoing_requests=128)
    class Policy:
        def __init__(self, root: str, experiment: str, checkpoint: str, key: str) -> None:
            import torch

            from server_extension.serving.runtimes import load_runtime
            from workbench_core.store import ExperimentStore

            torch.set_num_threads(1)
            exp = ExperimentStore(root).get(experiment)
            self.runtime = load_runtime(exp, exp.checkpoint(exp.resolve(checkpoint)))
            self.key = key.encode()

        async def __call__(self, request: Request) -> Response:
            from benchmarks.baseline import key_matches
            from server_extension.serving.runtimes.base import RequestError
            from server_extension.serving.serde import decode_tree, encode_tree

            if not key_matches(request.headers.get("authorization", ""), self.key):
                return JSONResponse({"success": False, "error": "bad key"}, status_code=401)
            try:
                body = json.loads(await request.body())
                action, _ = self.runtime.get_action(decode_tree(body["obs"], "obs"))
            except (RequestError, ValueError, KeyError) as exc:
                return JSONResponse({"success": False, "error": str(exc)}, status_code=400)
            return JSONResponse({"action": encode_tree(action), "success": True})

    # address="local": always a private Ray for the benchmark, never a cluster someone started.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": args.pythonpath}})
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(Policy.bind(args.root, args.experiment, args.checkpoint, args.key),
              route_prefix="/get_action", name="policy")
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def parse(argv: list[str] | None = None) -> Any:
    """Command-line arguments."""
    args = parser("Baseline (d): Ray Serve serving get_action through its HTTP proxy.")
    args.add_argument("--replicas", type=int, default=1)
    args.add_argument("--pythonpath", default="", help="PYTHONPATH for Ray's workers")
    return args.parse_args(argv)


if __name__ == "__main__":
    main(parse())
