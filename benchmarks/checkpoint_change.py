"""Changing a live agent's checkpoint under load: failed calls, latency, switch time, memory.

Run from the repository root::

    python -m benchmarks.checkpoint_change                    # the full run (a few minutes)
    python -m benchmarks.checkpoint_change --changes 2 --steady 3 --split 3 --no-llm  # quick

One real ``jupyter server`` (agents in worker processes) serves ``flip-dqn``
(tests/checkpoint_fixtures.py: two real AgileRL DQN checkpoints whose greedy actions are
opposite on every row, so every answer names the checkpoint that gave it). ``--clients``
threads, each on its own keep-alive connection, call ``get_action`` with one fixed batch as
fast as they can while the benchmark

1. measures a steady window (``--steady`` s);
2. changes the checkpoint and rolls it back, ``--changes`` times each (POST .../checkpoint,
   POST .../rollback), waiting for each to serve;
3. splits the traffic 50/50 for ``--split`` s, then aborts the split.

Every answer is checked: HTTP 200 and exactly one checkpoint's actions (a mix of the two in
one batch counts as a failure). Reported: failed or non-200 calls per phase, p50/p99 latency
in the steady window and during the changes, the time from each change's POST to the first
answer from the new checkpoint, the share the canary answered in the split, and the peak
memory (PSS) of the server's whole process tree during the overlaps against steady.

With the LLM part (default on) a quick tiny chat model (``build_llm_demo(quick=True)``) is
served the same way and ``--llm-clients`` clients stream ``generate_stream`` replies in
sessions while its checkpoint changes and rolls back: a stream is broken if it is not 200 or
its text carries the in-band ``[ERROR`` line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.servers import WorkbenchServer, tree_memory
from server_extension.serving.serde import decode_array, encode_array
from tests.checkpoint_fixtures import (
    FLIP,
    NEW_STEP,
    OBS,
    OLD_STEP,
    expected_actions,
    write_flip_experiment,
)


@dataclass
class Call:
    """One answered (or failed) call."""

    started: float
    ended: float
    ok: bool
    step: int | None = None
    detail: str = ""


@dataclass
class Clients:
    """``get_action`` callers; every answer classified by the checkpoint that gave it."""

    endpoint: str
    key: str
    expected: dict[int, list[int]]
    count: int
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.count)]
        for thread in threads:
            thread.start()
        return threads

    def _run(self) -> None:
        body = {"obs": encode_array(OBS), "batch_size": len(OBS)}
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self.key}"
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    reply = session.post(f"{self.endpoint}/get_action", json=body, timeout=60)
                except requests.RequestException as exc:
                    self.calls.append(Call(started, time.monotonic(), False, None, str(exc)))
                    continue
                ended = time.monotonic()
                if reply.status_code != 200:
                    self.calls.append(Call(started, ended, False, None,
                                           f"HTTP {reply.status_code}"))
                    continue
                actions = [int(a) for a in np.asarray(
                    decode_array(reply.json()["action"], "action")).reshape(-1)]
                step = next((s for s, a in self.expected.items() if a == actions), None)
                self.calls.append(Call(started, ended, step is not None, step,
                                       "" if step is not None else "mixed answer"))

    def between(self, begin: float, end: float) -> list[Call]:
        return [c for c in list(self.calls) if begin <= c.started < end]


class MemoryWatch:
    """Samples the PSS of the server's process tree every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), tree_memory(self.pid)["pss_mb"]))
            time.sleep(0.1)

    def peak(self, begin: float, end: float) -> float:
        values = [v for t, v in self.samples if begin <= t < end]
        return max(values) if values else 0.0


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` in ms (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def settle(server: WorkbenchServer, name: str, change_id: int, outcomes: tuple[str, ...],
           timeout: float = 120.0) -> dict[str, Any]:
    """Wait until change ``change_id`` reaches one of ``outcomes``; its history row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in server.api("GET", f"agents/{name}/checkpoints").json()["history"]:
            if row["id"] == change_id and row["outcome"] in (*outcomes, "failed"):
                return dict(row)
        time.sleep(0.02)
    raise TimeoutError(f"change {change_id} of {name} did not settle")


def first_answer_after(clients: Clients, moment: float, step: int, timeout: float = 60) -> float:
    """Seconds from ``moment`` to the first call started after it that ``step`` answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [c.ended for c in list(clients.calls) if c.started >= moment and c.step == step]
        if hits:
            return min(hits) - moment
        time.sleep(0.01)
    raise TimeoutError(f"no answer from step {step}")


def start_server(backend: str, root: Path, log_dir: Path) -> WorkbenchServer:
    """A workbench server over ``root``; for ``ray``, joined to a local Ray started here."""
    extra = ["--AgentsWorkbenchApp.health_check_interval=0",
             "--AgentsWorkbenchApp.isolation=process"]
    if backend == "ray":
        from server_extension.serving.ray_backend import start_local_ray
        from tests.ray_support import ray_server_args

        extra += ray_server_args(start_local_ray(2, namespace="checkpoint-change-bench"))
    return WorkbenchServer(root, log_dir, label=f"checkpoint-change-{backend}",
                           extra=extra).start()


def run_rl(args: argparse.Namespace, root: Path, log_dir: Path) -> dict[str, Any]:
    """The get_action part; returns its figures."""
    write_flip_experiment(root)
    expected = expected_actions(root)
    server = start_server(args.backend, root, log_dir)
    try:
        created = server.api("POST", "agents", json={
            "name": "flip", "experiment": FLIP, "checkpoint": OLD_STEP,
            "options": {"backend": args.backend}})
        if created.status_code != 201:
            raise RuntimeError(f"creating flip: {created.status_code} {created.text}")
        agent = server.connect("flip", timeout=300)[0]
        pid = server.proc.pid if server.proc is not None else 0
        memory = MemoryWatch(pid)
        clients = Clients(agent["endpoint"], agent["api_key"], expected, args.clients)
        threads = clients.start()
        time.sleep(2.0)  # warm-up: connections open, first calls answered
        steady_begin = time.monotonic()
        time.sleep(args.steady)
        steady_end = time.monotonic()
        switch_s: list[float] = []
        for _ in range(args.changes):
            for path, body, step in (("checkpoint", {"checkpoint": NEW_STEP}, NEW_STEP),
                                     ("rollback", None, OLD_STEP)):
                asked = time.monotonic()
                reply = server.api("POST", f"agents/flip/{path}", json=body)
                if reply.status_code != 202:
                    raise RuntimeError(f"{path}: {reply.status_code} {reply.text}")
                row = settle(server, "flip", reply.json()["id"], ("serving",))
                if row["outcome"] != "serving":
                    raise RuntimeError(f"{path} failed: {row['error']}")
                switch_s.append(first_answer_after(clients, asked, step))
        changes_end = time.monotonic()
        split_begin = time.monotonic()
        reply = server.api("POST", "agents/flip/split",
                           json={"checkpoint": NEW_STEP, "percent": 50})
        settle(server, "flip", reply.json()["id"], ("canary",))
        canary_from = time.monotonic()
        time.sleep(args.split)
        canary_to = time.monotonic()
        server.api("POST", "agents/flip/abort").raise_for_status()
        time.sleep(1.0)
        split_end = time.monotonic()
        clients.stop.set()
        for thread in threads:
            thread.join(60)
        memory.stop.set()
        steady = clients.between(steady_begin, steady_end)
        changing = clients.between(steady_end, changes_end)
        split_calls = clients.between(canary_from, canary_to)
        return {
            "backend": args.backend,
            "clients": args.clients,
            "calls": len(clients.calls),
            "failed": sum(not c.ok for c in clients.calls),
            "failures": sorted({c.detail for c in clients.calls if not c.ok})[:5],
            "steady": {"calls": len(steady), "rps": len(steady) / (steady_end - steady_begin),
                       "p50_ms": pct([c.ended - c.started for c in steady], 0.5),
                       "p99_ms": pct([c.ended - c.started for c in steady], 0.99)},
            "changes": {"switches": len(switch_s), "calls": len(changing),
                        "failed": sum(not c.ok for c in changing),
                        "p50_ms": pct([c.ended - c.started for c in changing], 0.5),
                        "p99_ms": pct([c.ended - c.started for c in changing], 0.99),
                        "switch_s": {"median": statistics.median(switch_s),
                                     "max": max(switch_s)},
                        "seconds": changes_end - steady_end},
            "split": {"calls": len(split_calls),
                      "canary_share": (sum(c.step == NEW_STEP for c in split_calls)
                                       / max(1, len(split_calls))),
                      "failed": sum(not c.ok for c in clients.between(split_begin, split_end)),
                      "p99_ms": pct([c.ended - c.started for c in split_calls], 0.99)},
            "memory_pss_mb": {"steady_peak": memory.peak(steady_begin, steady_end),
                              "changes_peak": memory.peak(steady_end, changes_end),
                              "split_peak": memory.peak(split_begin, split_end)},
        }
    finally:
        server.stop()
        if args.backend == "ray":
            from tests.ray_support import leave_ray

            leave_ray()


def run_llm(args: argparse.Namespace, root: Path, log_dir: Path) -> dict[str, Any]:
    """The streaming part with a quick tiny chat model; returns its figures."""
    from server_extension.demos.llm import SFT_EXPERIMENT, build_llm_demo
    from workbench_core.store import ExperimentStore

    build_llm_demo(root, quick=True)
    steps = [c.step for c in ExperimentStore(root).get(SFT_EXPERIMENT).checkpoints()]
    server = WorkbenchServer(root, log_dir, label="checkpoint-change-llm", extra=[
        "--AgentsWorkbenchApp.health_check_interval=0",
        "--AgentsWorkbenchApp.isolation=process"]).start()
    try:
        agent = server.deploy("chat", SFT_EXPERIMENT, steps[0])
        stop = threading.Event()
        streams: list[tuple[bool, str]] = []

        def stream_loop(index: int) -> None:
            session_id: str | None = None
            turns = 0
            with requests.Session() as session:
                session.headers["Authorization"] = f"Bearer {agent['api_key']}"
                while not stop.is_set():
                    body: dict[str, Any] = {"prompt": f"Question {index}?",
                                            "params": {"max_new_tokens": 12}}
                    # Two turns per session: the quick model reads 128 tokens at most.
                    turns += 1
                    if session_id is not None and turns % 3:
                        body["session_id"] = session_id
                    try:
                        with session.post(f"{agent['endpoint']}/generate_stream", json=body,
                                          stream=True, timeout=120) as reply:
                            text = "".join(reply.iter_content(None, decode_unicode=True))
                            ok = reply.status_code == 200 and "[ERROR" not in text
                            session_id = reply.headers.get("X-Session-Id", session_id)
                            streams.append((ok, "" if ok else f"{reply.status_code} {text}"))
                    except requests.RequestException as exc:
                        streams.append((False, str(exc)))

        threads = [threading.Thread(target=stream_loop, args=(i,), daemon=True)
                   for i in range(args.llm_clients)]
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        switch_s = []
        for _ in range(args.llm_changes):
            for path, body in (("checkpoint", {"checkpoint": steps[-1]}), ("rollback", None)):
                asked = time.monotonic()
                reply = server.api("POST", f"agents/chat/{path}", json=body)
                if reply.status_code != 202:
                    raise RuntimeError(f"{path}: {reply.status_code} {reply.text}")
                row = settle(server, "chat", reply.json()["id"], ("serving",))
                if row["outcome"] != "serving":
                    raise RuntimeError(f"{path} failed: {row['error']}")
                switch_s.append(time.monotonic() - asked)
        time.sleep(2.0)
        stop.set()
        for thread in threads:
            thread.join(150)
        sessions = server.api("GET", "agents/chat").json()
        return {"clients": args.llm_clients, "streams": len(streams),
                "broken": sum(not ok for ok, _ in streams),
                "broken_detail": sorted({d for ok, d in streams if not ok})[:3],
                "switches": len(switch_s),
                "change_to_serving_s": {"median": statistics.median(switch_s),
                                        "max": max(switch_s)},
                "status_after": sessions["status"]}
    finally:
        server.stop()


def report(rl: dict[str, Any], llm: dict[str, Any] | None, command: str) -> str:
    """The results file's markdown."""
    ch, st, sp, mem = rl["changes"], rl["steady"], rl["split"], rl["memory_pss_mb"]
    lines = [
        f"# Checkpoint change under load ({rl['backend']} backend)", "",
        f"Command: `{command}`", "",
        f"Machine: 2 shared cores, no GPU; {rl['clients']} keep-alive clients calling "
        "`get_action` (a 32-row CartPole batch) without pause against one `jupyter server`.",
        "", "| figure | value |", "|---|---|",
        f"| calls answered | {rl['calls']} |",
        f"| failed, non-200 or mixed answers (goal 0) | **{rl['failed']}** |",
        f"| steady: calls/s, p50, p99 | {st['rps']:.0f}/s, {st['p50_ms']:.1f} ms, "
        f"{st['p99_ms']:.1f} ms |",
        f"| during {ch['switches']} switches ({ch['switches'] // 2} changes + "
        f"{ch['switches'] // 2} rollbacks, {ch['seconds']:.0f} s): failed | {ch['failed']} |",
        f"| during the switches: p50, p99 | {ch['p50_ms']:.1f} ms, {ch['p99_ms']:.1f} ms "
        f"(p99 {ch['p99_ms'] / st['p99_ms']:.2f}x steady) |",
        f"| request to first answer from the new checkpoint: median, max | "
        f"{ch['switch_s']['median']:.2f} s, {ch['switch_s']['max']:.2f} s |",
        f"| 50/50 split: calls, canary share, failed, p99 | {sp['calls']}, "
        f"{sp['canary_share']:.3f}, {sp['failed']}, {sp['p99_ms']:.1f} ms |",
        f"| peak PSS of server + workers (Ray's own processes not counted): steady, "
        f"switches, split | {mem['steady_peak']:.0f} "
        f"MiB, {mem['changes_peak']:.0f} MiB, {mem['split_peak']:.0f} MiB |",
    ]
    if rl["failures"]:
        lines.append(f"| failure kinds | {'; '.join(rl['failures'])} |")
    if llm is not None:
        lines += [
            "", "## Tiny LLM, streaming (`generate_stream` in sessions, local backend)", "",
            "| figure | value |", "|---|---|",
            f"| streaming clients, streams finished | {llm['clients']}, {llm['streams']} |",
            f"| broken streams (goal 0) | **{llm['broken']}** |",
            f"| switches (changes + rollbacks) | {llm['switches']} |",
            f"| POST to serving: median, max | {llm['change_to_serving_s']['median']:.2f} s, "
            f"{llm['change_to_serving_s']['max']:.2f} s |",
            f"| status after | {llm['status_after']} |",
        ]
        if llm["broken_detail"]:
            lines.append(f"| broken | {'; '.join(llm['broken_detail'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, print the report and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--changes", type=int, default=10,
                        help="changes, and as many rollbacks")
    parser.add_argument("--steady", type=float, default=10.0)
    parser.add_argument("--split", type=float, default=10.0)
    parser.add_argument("--no-llm", action="store_true")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="serve the get_action agent with workers (local) or Ray Serve")
    parser.add_argument("--llm-clients", type=int, default=4)
    parser.add_argument("--llm-changes", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python -m benchmarks.checkpoint_change " + " ".join(argv or sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="checkpoint-change-") as tmp:
        base = Path(tmp)
        (base / "logs").mkdir()
        rl = run_rl(args, base / "rl", base / "logs")
        llm = None if args.no_llm else run_llm(args, base / "llm", base / "logs")
    text = report(rl, llm, command.strip())
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    failed = rl["failed"] + (llm["broken"] if llm else 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
