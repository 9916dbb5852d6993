"""Baseline (b): the smallest Tornado app that serves a runtime with the same contract and auth.

Written only for the benchmark: one route, Bearer check in constant time, the same wire codec,
the runtime called inline. Whatever the workbench inside ``jupyter server`` costs beyond this
is the price of living in Jupyter.

    python -m benchmarks.minimal_server --root WS --experiment cartpole-dqn --port 9000 --key K
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tornado import web

from benchmarks.baseline import key_matches, parser
from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.base import RequestError, Runtime
from server_extension.serving.serde import decode_tree, encode_tree
from workbench_core.store import ExperimentStore


class GetAction(web.RequestHandler):
    """POST get_action, nothing else."""

    def initialize(self, runtime: Runtime, key: str,
                   pool: ThreadPoolExecutor | None = None) -> None:
        self.runtime = runtime
        self.key = key.encode()
        self.pool = pool

    async def post(self) -> None:
        if not key_matches(self.request.headers.get("Authorization", ""), self.key):
            self.set_status(401)
            self.finish({"success": False, "error": "bad key"})
            return
        try:
            body = json.loads(self.request.body)
            obs = decode_tree(body["obs"], "obs")
            if self.pool is None:
                action, _ = self.runtime.get_action(obs)
            else:
                # --threaded: the same hop to a worker thread that the workbench makes.
                action, _ = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.runtime.get_action, obs)
        except (RequestError, ValueError, KeyError) as exc:
            self.set_status(400)
            self.finish({"success": False, "error": str(exc)})
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"action": encode_tree(action), "success": True}))


def make_app(runtime: Runtime, key: str, *, threaded: bool = False) -> web.Application:
    """The one-route app; ``threaded`` runs the model on a 4-thread pool, as the workbench does."""
    pool = ThreadPoolExecutor(4) if threaded else None
    return web.Application([(r"/get_action", GetAction,
                             {"runtime": runtime, "key": key, "pool": pool})])


async def main(args: argparse.Namespace) -> None:
    """Load the runtime, listen, serve forever."""
    experiment = ExperimentStore(args.root).get(args.experiment)
    step = experiment.resolve(args.checkpoint)
    runtime = load_runtime(experiment, experiment.checkpoint(step))
    runtime.probe()
    make_app(runtime, args.key, threaded=args.threaded).listen(args.port, address="127.0.0.1")
    print("READY", flush=True)
    await asyncio.Event().wait()


def parse(argv: list[str] | None = None) -> Any:
    """Command-line arguments."""
    args = parser("Baseline (b): a one-route Tornado app serving get_action.")
    args.add_argument("--threaded", action="store_true",
                      help="call the runtime on a worker thread, as the workbench does")
    return args.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
