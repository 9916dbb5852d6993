"""Baseline (b): the smallest Tornado app that serves a runtime with the same contract and auth.

Written only for the benchmark: one route, Bearer check in constant time, the same wire codec,
the runtime called inline. Whatever the workbench inside ``jupyter server`` costs beyond this
is the price of living in Jupyter.

    python -m benchmarks.minimal_server --root WS --experiment cartpole-dqn --port 9000 --key K
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
from typing import Any

from tornado import web

from server_extension.runtimes import load_runtime
from server_extension.runtimes.base import RequestError, Runtime
from server_extension.serde import decode_tree, encode_tree
from server_extension.store import ExperimentStore


class GetAction(web.RequestHandler):
    """POST get_action, nothing else."""

    def initialize(self, runtime: Runtime, key: str) -> None:
        self.runtime = runtime
        self.key = key.encode()

    def post(self) -> None:
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not hmac.compare_digest(
                header[7:].encode(), self.key):
            self.set_status(401)
            self.finish({"success": False, "error": "bad key"})
            return
        try:
            body = json.loads(self.request.body)
            action, _ = self.runtime.get_action(decode_tree(body["obs"], "obs"))
        except (RequestError, ValueError, KeyError) as exc:
            self.set_status(400)
            self.finish({"success": False, "error": str(exc)})
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"action": encode_tree(action), "success": True}))


def make_app(runtime: Runtime, key: str) -> web.Application:
    """The one-route app."""
    return web.Application([(r"/get_action", GetAction, {"runtime": runtime, "key": key})])


async def main(args: argparse.Namespace) -> None:
    """Load the runtime, listen, serve forever."""
    experiment = ExperimentStore(args.root).get(args.experiment)
    step = experiment.resolve(args.checkpoint)
    runtime = load_runtime(experiment, experiment.checkpoint(step))
    runtime.probe()
    make_app(runtime, args.key).listen(args.port, address="127.0.0.1")
    print("READY", flush=True)
    await asyncio.Event().wait()


def parse(argv: list[str] | None = None) -> Any:
    """Command-line arguments."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--experiment", default="cartpole-dqn")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
