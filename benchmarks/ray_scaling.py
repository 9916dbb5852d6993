"""Scale-out measured: the ``ray`` backend against ``local`` on one machine.

Needs ``ray[serve]`` (the ``[ray]`` extra) and ``wrk``. This process starts a local Ray
(``num_cpus`` CPUs) and two workbench servers over the same workspace: one serving locally,
one joined to that Ray with the ``ray`` backend. It measures

- the compute-heavy policy (``bench-cnn``, AgileRL's Atari-style CNN) at ``connections``
  keep-alive connections: ``local``, then ``ray`` with 1 and with 2 replicas;
- the small CartPole policy at 1 connection: mean latency on each backend, and the difference
  (the per-request cost of the hop to a replica);
- how the server should wait on Ray: the same CartPole replica called straight through its
  DeploymentHandle, 8 calls in flight, once as asyncio tasks awaiting the response (what a
  handler on the Tornado loop would do) and once from 8 threads blocking on ``.result()``
  (what the workbench does, from its worker threads).

Local batching is off so the comparison is of serving paths, not of the batcher.

    python -m benchmarks.ray_scaling --root /tmp/bench-ws --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.loadgen import run_wrk
from benchmarks.policies import CNN, DEMO, body_for, ensure_workspace, sample_obs
from benchmarks.servers import WorkbenchServer
from server_extension.serving.ray_backend import app_prefix, start_local_ray

DEPLOY_TIMEOUT = 300.0


def _deploy(server: WorkbenchServer, name: str, experiment: str,
            options: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "experiment": experiment, "checkpoint": "best"}
    if options:
        body["options"] = options
    server.api("POST", "agents", json=body).raise_for_status()
    return server.connect(name, timeout=DEPLOY_TIMEOUT)[0]


def _load(agent: dict[str, Any], experiment: str, connections: int, seconds: float) -> Any:
    # A short warm-up first: the first calls pay for lazy initialisation on both paths.
    run_wrk(agent["endpoint"] + "/get_action", body_for(experiment), key=agent["api_key"],
            connections=connections, seconds=1)
    return run_wrk(agent["endpoint"] + "/get_action", body_for(experiment), key=agent["api_key"],
                   connections=connections, seconds=seconds)


def _handle_styles(app_prefix: str, calls: int, in_flight: int) -> dict[str, float]:
    """Calls per second straight through the handle: awaited on a loop vs threads blocking."""
    from ray import serve

    name = next(n for n in serve.status().applications if n.startswith(app_prefix))
    handle = serve.get_app_handle(name)
    obs = sample_obs(DEMO)
    handle.call.remote("get_action", (obs,), {}).result()

    async def awaited() -> float:
        gate = asyncio.Semaphore(in_flight)

        async def one() -> None:
            async with gate:
                await handle.call.remote("get_action", (obs,), {})

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        return calls / (time.perf_counter() - started)

    def blocking() -> float:
        started = time.perf_counter()
        with ThreadPoolExecutor(in_flight) as pool:
            list(pool.map(lambda _: handle.call.remote("get_action", (obs,), {}).result(),
                          range(calls)))
        return calls / (time.perf_counter() - started)

    return {"handle_awaited_rps": round(asyncio.run(awaited()), 1),
            "handle_threads_rps": round(blocking(), 1)}


def _own_root(logs: Path, name: str, experiments: Path) -> Path:
    # Each server gets its own registry: agents left connected in a shared one would come
    # back on the next server (on its default backend) and hold the CPUs being measured.
    root = logs / name
    root.mkdir()
    (root / "experiments").symlink_to(experiments)
    return root


def measure(root: Path, *, seconds: float = 10.0, connections: int = 64, num_cpus: int = 2,
            say: Any = print) -> dict[str, float]:
    """Run the comparison; a flat dict of figures (requests/s, milliseconds, ratios)."""
    import ray

    ensure_workspace(root, say)
    logs = Path(tempfile.mkdtemp(prefix="awb-ray-scaling-"))
    experiments = root.resolve() / "experiments"
    out: dict[str, float] = {"connections": connections, "ray_num_cpus": num_cpus}

    say("local backend")
    local = WorkbenchServer(_own_root(logs, "local", experiments), logs,
                            batching="off").start()
    try:
        agent = _deploy(local, "cnn-local", CNN)
        out["cnn_local_rps"] = _load(agent, CNN, connections, seconds).rps
        agent = _deploy(local, "cp-local", DEMO)
        result = _load(agent, DEMO, 1, seconds)
        out["cartpole_local_mean_ms"] = result.mean_ms
        out["cartpole_local_rps_c1"] = result.rps
    finally:
        local.stop()

    say(f"starting a local Ray with {num_cpus} CPUs")
    address = start_local_ray(num_cpus, logging_level=logging.ERROR)
    ray_root = _own_root(logs, "ray", experiments)
    remote = WorkbenchServer(ray_root, logs, batching="off", extra=[
        f"--AgentsWorkbenchApp.ray_address={address}", "--AgentsWorkbenchApp.backend=ray",
        "--AgentsWorkbenchApp.ray_replica_cpus=1"])
    remote.log_path = logs / "workbench-ray.log"
    try:
        remote.start()
        say("ray backend: CartPole, 1 replica")
        started = time.perf_counter()
        agent = _deploy(remote, "cp-ray", DEMO)
        out["ray_first_deploy_s"] = round(time.perf_counter() - started, 1)
        result = _load(agent, DEMO, 1, seconds)
        out["cartpole_ray_mean_ms"] = result.mean_ms
        out["cartpole_ray_rps_c1"] = result.rps
        out["ray_overhead_ms_per_request"] = round(
            out["cartpole_ray_mean_ms"] - out["cartpole_local_mean_ms"], 3)
        out.update(_handle_styles(f"{app_prefix(ray_root)}cp-ray-", calls=2000, in_flight=8))
        remote.disconnect("cp-ray")
        for replicas in (1, 2):
            say(f"ray backend: CNN, {replicas} replica(s)")
            name = f"cnn-ray{replicas}"
            started = time.perf_counter()
            agent = _deploy(remote, name, CNN, {"backend": "ray", "replicas": replicas})
            out[f"cnn_ray_{replicas}_deploy_s"] = round(time.perf_counter() - started, 1)
            out[f"cnn_ray_{replicas}_rps"] = _load(agent, CNN, connections, seconds).rps
            time.sleep(2)  # let the calls wrk left in flight finish before the next agent
            remote.disconnect(name)
    finally:
        remote.stop()
        ray.shutdown()
    out["cnn_ray_2_over_1"] = round(out["cnn_ray_2_rps"] / out["cnn_ray_1_rps"], 3)
    out["cnn_ray_2_over_local"] = round(out["cnn_ray_2_rps"] / out["cnn_local_rps"], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "bench-ws")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    figures = measure(args.root, seconds=args.seconds, connections=args.connections,
                      num_cpus=args.num_cpus)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
