"""One small CartPole policy served as AgileRL, SB3, TorchScript, torch.export and ONNX, side by
side in one run (issue #27), written to ``benchmarks/results/``::

    python -m benchmarks.byom_formats                 # about 5 minutes on 2 shared cores
    python -m benchmarks.byom_formats --quick         # checks the harness

The SB3 DQN's Q-network (4 -> 64 -> 64 -> 2) is exported as TorchScript, ``.pt2`` and ONNX,
so those four serve the same weights; the AgileRL DQN has the same layer sizes. Every one is
imported through the import (its worker check included) as a Classic agent on CartPole-v1.

Per format, on a fresh server each (so "cold" is cold):

- Connect -> Deployed cold: the first Connect after the server answers, on a workspace holding
  only that format (the worker template imports what that framework needs, and only that),
  then warm: Disconnect and Connect again;
- get_action req/s, p50 and p99 at 16 keep-alive connections: wrk when installed, else a
  Python client (16 threads, ``http.client``); the results say which. The Python client
  shares the two cores with the server, so its figures are lower than wrk's, but the same
  for every format.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.metadata as md
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .loadgen import have_wrk, run_wrk
from .policies import body_for
from .run import machine, say
from .servers import WorkbenchServer

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = ("agilerl", "sb3", "torchscript", "torch_export", "onnx")
QUIET = ["--AgentsWorkbenchApp.health_check_interval=0"]


def build_files(out: Path) -> dict[str, Path]:
    """The policy in each format, as its library writes it."""
    import warnings

    import gymnasium as gym
    import torch
    from agilerl.algorithms import DQN as AgileDQN
    from stable_baselines3 import DQN

    torch.manual_seed(0)
    env = gym.make("CartPole-v1")
    agile = AgileDQN(env.observation_space, env.action_space,  # type: ignore[arg-type]
                     net_config={"encoder_config": {"hidden_size": [64]},
                                 "head_config": {"hidden_size": [64]}})
    files = {"agilerl": out / "agilerl_dqn.pt"}
    agile.save_checkpoint(str(files["agilerl"]))
    sb3 = DQN("MlpPolicy", env, policy_kwargs={"net_arch": [64, 64]}, seed=0, device="cpu")
    files["sb3"] = out / "sb3_dqn.zip"
    sb3.save(files["sb3"])
    qnet = sb3.policy.q_net.eval()
    example = torch.zeros(2, 4)
    files["torchscript"] = out / "qnet_script.pt"
    files["torch_export"] = out / "qnet.pt2"
    files["onnx"] = out / "qnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit.trace and the TorchScript ONNX path warn
        torch.jit.save(torch.jit.trace(qnet, (example,)), str(files["torchscript"]))
        program = torch.export.export(qnet, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(files["torch_export"]))
        torch.onnx.export(qnet, (example,), str(files["onnx"]), input_names=["obs"],
                          output_names=["q"], dynamo=False,
                          dynamic_axes={"obs": {0: "batch"}, "q": {0: "batch"}})
    return files


def import_all(root: Path, files: dict[str, Path]) -> dict[str, float]:
    """Import each file as ``bench-<format>`` into a workspace of its own (``root/<format>``,
    so a server's worker template imports only that framework); seconds each import took."""
    from server_extension.serving.importing.orchestrator import import_experiment
    from server_extension.serving.runtimes.detection import ImportHints

    seconds = {}
    for fmt, path in files.items():
        started = time.perf_counter()
        import_experiment(root / fmt, [path], ImportHints(name=f"bench-{fmt}",
                                                          env="CartPole-v1"))
        seconds[fmt] = round(time.perf_counter() - started, 2)
    return seconds


def python_load(url: str, body: str, key: str, connections: int,
                seconds: float) -> dict[str, Any]:
    """POST ``body`` from ``connections`` threads, each on one keep-alive connection."""
    parts = urlsplit(url)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    payload = body.encode()

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                          timeout=30)
        while not stop.is_set():
            began = time.perf_counter()
            conn.request("POST", parts.path, payload, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                errors[i] += 1
            latencies[i].append(time.perf_counter() - began)
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    flat = sorted(x for per in latencies for x in per)
    return {"rps": round(len(flat) / wall, 1),
            "p50_ms": round(1000 * flat[len(flat) // 2], 2) if flat else None,
            "p99_ms": round(1000 * flat[int(len(flat) * 0.99)], 2) if flat else None,
            "errors": sum(errors)}


def measure(root: Path, logs: Path, fmt: str, seconds: float) -> dict[str, Any]:
    """Cold and warm Connect, then get_action at 16 connections, on a fresh server."""
    server = WorkbenchServer(root / fmt, logs, batching="auto", label=fmt, extra=QUIET).start()
    try:
        name = f"agent-{fmt}"
        server.create(name, f"bench-{fmt}", "final")
        _agent, cold = server.connect(name)
        server.disconnect(name)
        agent, warm = server.connect(name)
        url = agent["endpoint"].rstrip("/") + "/get_action"
        body = body_for("cartpole")
        # One short run first so the worker's lazy set-up is not in the measurement.
        python_load(url, body, agent["api_key"], 2, 1.0)
        if have_wrk():
            result = run_wrk(url, body, key=agent["api_key"], connections=16, seconds=seconds)
            load = {"rps": result.rps, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
                    "errors": result.errors}
        else:
            load = python_load(url, body, agent["api_key"], 16, seconds)
        return {"cold_s": round(cold, 2), "warm_s": round(warm, 2), **load}
    finally:
        server.stop()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "agilerl", "stable_baselines3", "onnxruntime", "jupyter_server"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def report(rows: dict[str, dict[str, Any]], imports: dict[str, float], command: str,
           seconds: float) -> str:
    """The results file's Markdown."""
    client = "wrk" if have_wrk() else "Python client (16 threads, http.client; wrk absent)"
    lines = [
        "# One CartPole policy in five formats (issue #27)", "",
        f"Command: `{command}`", "",
        f"Machine: {json.dumps(machine())}", "",
        f"Versions: {json.dumps(_versions())}", "",
        f"get_action at 16 connections for {seconds:g} s, measured with {client}; a fresh "
        "server per format over a workspace holding only that format (so its worker template "
        "imports only what that format needs); batching auto.", "",
        "| format | import check s | Connect->Deployed cold s | warm s | req/s @16 | p50 ms "
        "| p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fmt, row in rows.items():
        lines.append(f"| {fmt} | {imports.get(fmt, '')} | {row['cold_s']} | {row['warm_s']} | "
                     f"{row['rps']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Build, import, measure, write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s runs: checks the harness")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    command = "python -m benchmarks.byom_formats" + (" --quick" if args.quick else
                                                     f" --seconds {seconds:g}")
    with tempfile.TemporaryDirectory(prefix="awb-byom-") as tmp:
        work = Path(tmp)
        (work / "files").mkdir()
        (work / "logs").mkdir()
        say("building the policy in five formats")
        files = build_files(work / "files")
        say("importing each (worker check)")
        imports = import_all(work / "root", files)
        rows = {}
        for fmt in FORMATS:
            say(f"measuring {fmt}")
            rows[fmt] = measure(work / "root", work / "logs", fmt, seconds)
    text = report(rows, imports, command, seconds)
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}-byom-formats" \
        f"{'-quick' if args.quick else ''}.md"
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written to {out}")
    if statistics.fmean(r["errors"] for r in rows.values()):
        raise SystemExit("some calls failed; see the table")


if __name__ == "__main__":
    main()
