"""Soak: many clients, lifecycle chaos and a memory watch against one real ``jupyter server``.

Run from the repository root::

    python -m benchmarks.soak                       # 180 s, 32 clients, prints a summary
    python -m benchmarks.soak --duration 40 --json soak.json

A quick demo workspace is trained (seconds) unless ``--experiments`` names one to copy. Several
single-agent AgileRL agents are deployed; ``--clients`` threads, each with its own keep-alive
session, send ``get_action`` with random observations to random agents. Every 200 answer is
compared with the same checkpoint loaded in this process (deterministic actions). Meanwhile a
chaos loop disconnects and reconnects, reconnects in place, rotates keys, and creates and
deletes throwaway agents. The server's RSS is sampled from ``/proc``.

Verdict (exit status 1 on any violation):

- no request lost (every request gets an HTTP answer) and no wrong answer;
- non-200 answers only to an agent inside a chaos window that overlapped the request: 401
  inside a key-rotation window, 404 or 5xx inside a disconnect/reconnect window; anything
  else is "unexpected";
- the agents never touched by chaos answer every request with 200;
- the server's RSS over the last quarter of the run stays within a bound of its value in the
  middle (after warm-up).

Threads: clients only read a target's key and window state under that target's lock; the
chaos loop is the only writer.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

# Single-agent AgileRL experiments of the demo workspaces, most wanted first. The first two
# also get a chaos twin; the rest are served untouched as the control group.
STABLE = ("cartpole-dqn", "pendulum-td3", "cartpole-rainbow", "pendulum-ddpg", "cartpole-ppo")
CHAOS = ("cartpole-dqn", "pendulum-td3")
OPS = ("disconnect", "rotate", "reconnect", "churn")
# Which non-200 answers a window of each kind explains. A disconnect or reconnect takes the
# runtime away under in-flight requests, so a 5xx is tolerated there (and only there).
ALLOWED = {"disconnect": {404, 500, 502, 503, 504}, "reconnect": {404, 500, 502, 503, 504},
           "rotate": {401}}
# RSS growth from the middle to the end of the run that counts as a leak: the larger of these.
RSS_GROWTH_MIB = 48.0
RSS_GROWTH_FRACTION = 0.10


@dataclass
class Target:
    """One deployed agent as clients see it; mutated by the chaos loop under ``lock``."""

    name: str
    experiment: str
    step: int
    endpoint: str
    key: str
    reference: Any  # the same checkpoint's Runtime, loaded in this process
    chaos: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    epoch: int = 0
    # (first epoch, epoch after it closed or None while open, kind) of every chaos window on
    # this agent; a window covers epochs first <= e < closed.
    windows: list[tuple[int, int | None, str]] = field(default_factory=list)

    def snapshot(self) -> tuple[str, int]:
        """The key to use and the epoch it belongs to."""
        with self.lock:
            return self.key, self.epoch

    def kinds_between(self, first: int, last: int) -> set[str]:
        """Kinds of the windows that were open at any point from epoch ``first`` to ``last``."""
        with self.lock:
            return {kind for start, end, kind in self.windows
                    if start <= last and (end is None or end > first)}

    @contextmanager
    def window(self, kind: str) -> Iterator[None]:
        """Mark a chaos window: non-200 answers overlapping it are explained by ``kind``."""
        with self.lock:
            self.epoch += 1
            index = len(self.windows)
            self.windows.append((self.epoch, None, kind))
        try:
            yield
        finally:
            with self.lock:
                self.epoch += 1
                start, _, _ = self.windows[index]
                self.windows[index] = (start, self.epoch, kind)


@dataclass
class Tally:
    """What one client saw; merged at the end so clients never contend on a shared counter."""

    requests: int = 0
    checked: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    per_agent: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, cls: str, example: str = "") -> None:
        self.classes[cls] += 1
        if example and len(self.examples) < 5:
            self.examples.append(example)


def _npy(arr: np.ndarray) -> str:
    # Encoded here rather than with the server's codec, so a codec bug cannot hide itself.
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


# np.load parses headers with ast, which CPython 3.11 does not make safe across threads
# (gh-106905: "SystemError: AST constructor recursion depth mismatch"); one parse at a time.
_NPY_LOCK = threading.Lock()


def _un_npy(text: str) -> np.ndarray:
    raw = io.BytesIO(base64.b64decode(text))
    with _NPY_LOCK:
        return np.asarray(np.load(raw, allow_pickle=False))


def _random_obs(target: Target, rng: np.random.Generator) -> np.ndarray:
    space = target.reference.policy.observation_space
    batch = int(rng.integers(1, 5))
    raw = rng.normal(scale=2.0, size=(batch, *space.shape))
    return np.clip(raw, space.low, space.high).astype(np.float32)


def _matches(answer: np.ndarray, expected: np.ndarray) -> bool:
    if answer.shape != expected.shape:
        return False
    if np.issubdtype(expected.dtype, np.integer):
        return bool(np.array_equal(answer, expected))
    return bool(np.allclose(answer, expected, rtol=1e-5, atol=1e-6))


def client(targets: list[Target], stop: threading.Event, seed: int, tally: Tally) -> None:
    """Send get_action to random agents until ``stop``; check or classify every answer."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    with requests.Session() as http:
        while not stop.is_set():
            target = pick.choice(targets)
            tally.requests += 1
            tally.per_agent[target.name] += 1
            try:
                _one_request(http, target, _random_obs(target, rng), tally)
            except Exception as exc:  # noqa: BLE001 - a client that dies would hide answers
                tally.note("client error", f"{target.name}: {type(exc).__name__}: {exc}")


def _one_request(http: requests.Session, target: Target, obs: np.ndarray, tally: Tally) -> None:
    key, first = target.snapshot()
    try:
        resp = http.post(target.endpoint + "/get_action", timeout=60,
                         json={"obs": _npy(obs), "batch_size": obs.shape[0]},
                         headers={"Authorization": f"Bearer {key}"})
    except requests.RequestException as exc:
        tally.note("lost", f"{target.name}: {type(exc).__name__}: {exc}")
        return
    _, last = target.snapshot()
    if resp.status_code == 200:
        expected = np.asarray(target.reference.get_action(obs)[0])
        try:
            answer = _un_npy(resp.json()["action"])
        except (ValueError, KeyError, OSError, EOFError) as exc:
            tally.note("wrong", f"{target.name}: undecodable answer: {exc}")
            return
        if _matches(answer, expected):
            tally.checked += 1
            tally.note("ok")
        else:
            tally.note("wrong", f"{target.name}: obs {obs.tolist()} answered "
                       f"{answer.tolist()}, expected {expected.tolist()}")
        return
    kinds = target.kinds_between(first, last)
    during = "+".join(sorted(kinds))
    if not kinds:
        tally.note(f"unexpected {resp.status_code}",
                   f"{target.name}: {resp.status_code} {resp.text[:200]}")
    elif any(resp.status_code in ALLOWED[k] for k in kinds):
        tally.note(f"expected {resp.status_code} in {during}")
    else:
        tally.note(f"unexpected {resp.status_code} in {during}",
                   f"{target.name}: {resp.status_code} {resp.text[:200]}")


class Chaos:
    """Lifecycle operations on the chaos agents (and throwaway ones), round robin."""

    def __init__(self, server: Any, targets: list[Target], interval: float, seed: int) -> None:
        self.server = server
        self.targets = [t for t in targets if t.chaos]
        self.interval = interval
        self.pick = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.failures: list[str] = []
        self._churned = 0

    def run(self, stop: threading.Event) -> None:
        """One operation every ``interval`` seconds until ``stop``."""
        turn = 0
        while not stop.wait(self.interval):
            op = OPS[turn % len(OPS)]
            turn += 1
            try:
                getattr(self, "_" + op)(self.pick.choice(self.targets))
                self.done[op] += 1
            except Exception as exc:  # noqa: BLE001 - every failed operation is a finding
                self.failures.append(f"{op}: {type(exc).__name__}: {exc}")

    def _expect(self, resp: requests.Response, what: str) -> dict[str, Any]:
        if resp.status_code >= 300:
            raise RuntimeError(f"{what} answered {resp.status_code}: {resp.text[:200]}")
        return resp.json() if resp.content else {}

    def _deployed(self, name: str) -> dict[str, Any]:
        agent: dict[str, Any] = self.server.wait_status(name, timeout=60)
        if agent["status"] != "Deployed":
            raise RuntimeError(f"{name} came back {agent['status']}: {agent.get('error')}")
        return agent

    def _disconnect(self, target: Target) -> None:
        with target.window("disconnect"):
            self._expect(self.server.api("POST", f"agents/{target.name}/disconnect"),
                         "disconnect")
            time.sleep(self.pick.uniform(0.0, 0.5))
            self._expect(self.server.api("POST", f"agents/{target.name}/connect"), "connect")
            agent = self._deployed(target.name)
            if agent["api_key"] != target.key:
                raise RuntimeError("disconnect and connect changed the agent's key")

    def _reconnect(self, target: Target) -> None:
        # Connect on a Deployed agent reloads it: the old runtime goes away under traffic.
        with target.window("reconnect"):
            self._expect(self.server.api("POST", f"agents/{target.name}/connect"), "connect")
            self._deployed(target.name)

    def _rotate(self, target: Target) -> None:
        with target.window("rotate"):
            agent = self._expect(self.server.api("POST", f"agents/{target.name}/rotate-key"),
                                 "rotate-key")
            with target.lock:
                target.key = agent["api_key"]

    def _churn(self, target: Target) -> None:
        # A throwaway agent: loaded and dropped again, so leaked runtimes would show in RSS.
        self._churned += 1
        name = f"churn-{self._churned}"
        self._expect(self.server.api("POST", "agents", json={
            "name": name, "experiment": target.experiment, "checkpoint": "best"}), "create")
        self._expect(self.server.api("POST", f"agents/{name}/connect"), "connect")
        self._deployed(name)
        self._expect(self.server.api("DELETE", f"agents/{name}"), "delete")


def rss_mib(pid: int) -> float:
    """Resident set size of process ``pid`` in MiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample_rss(pid: int, stop: threading.Event, samples: list[tuple[float, float]],
               started: float, every: float = 1.0) -> None:
    """Append ``(seconds since start, RSS MiB)`` every ``every`` seconds until ``stop``."""
    while True:
        try:
            samples.append((time.monotonic() - started, rss_mib(pid)))
        except (OSError, RuntimeError):
            return  # the server is gone; the run reports that elsewhere
        if stop.wait(every):
            return


def rss_verdict(samples: list[tuple[float, float]], duration: float) -> dict[str, Any]:
    """Start, middle (after warm-up) and end RSS, the slope after warm-up, and whether it grew.

    Warm-up is the first quarter (imports, first loads, allocator arenas); "mid" is the median
    of the second quarter and "end" the median of the last quarter.
    """
    def median_in(lo: float, hi: float) -> float:
        values = [m for t, m in samples if lo * duration <= t <= hi * duration]
        return statistics.median(values) if values else float("nan")

    after = [(t, m) for t, m in samples if t >= 0.25 * duration]
    slope = 0.0
    if len(after) >= 3:
        ts = np.array([t for t, _ in after])
        ms = np.array([m for _, m in after])
        slope = float(np.polyfit(ts, ms, 1)[0]) * 60.0
    mid, end = median_in(0.25, 0.5), median_in(0.75, 1.01)
    bound = max(RSS_GROWTH_MIB, RSS_GROWTH_FRACTION * mid)
    return {
        "start_mib": round(samples[0][1], 1) if samples else None,
        "mid_mib": round(mid, 1), "end_mib": round(end, 1),
        "peak_mib": round(max(m for _, m in samples), 1) if samples else None,
        "slope_mib_per_min": round(slope, 2), "growth_bound_mib": round(bound, 1),
        "samples": len(samples), "flat": bool(end - mid <= bound),
    }


def _workspace(experiments: Path | None, scratch: Path) -> Path:
    from server_extension.demos.classic import build_demo

    root = scratch / "workspace"
    root.mkdir()
    if experiments is not None:
        shutil.copytree(experiments, root / "experiments")
    else:
        print("training the quick demo workspace ...", flush=True)
        build_demo(root, quick=True)
    return root


def _deploy(server: Any, root: Path) -> list[Target]:
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    store = ExperimentStore(root)
    available = {e.name for e in store.list()}
    plan = [(f"{name}-steady", name, "best", False) for name in STABLE if name in available]
    plan += [(f"{name}-chaos", name, "final", True) for name in CHAOS if name in available]
    if not any(chaos for *_, chaos in plan) or len(plan) < 2:
        raise SystemExit(f"the workspace lacks the soak's experiments ({sorted(available)}); "
                         f"it needs {CHAOS}")
    targets = []
    for name, experiment, rule, chaos in plan:
        agent = server.deploy(name, experiment, rule)
        exp = store.get(experiment)
        reference = load_runtime(exp, exp.checkpoint(agent["checkpoint_step"]))
        targets.append(Target(name=name, experiment=experiment, step=agent["checkpoint_step"],
                              endpoint=agent["endpoint"], key=agent["api_key"],
                              reference=reference, chaos=chaos))
    return targets


def soak(duration: float, clients: int, *, experiments: Path | None = None,
         chaos_interval: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Run the soak and return its summary (``violations`` empty when it passed)."""
    import torch

    from benchmarks.servers import WorkbenchServer

    # The in-process reference policies share 2 cores with the server: one torch thread each.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="awb-soak-") as scratch:
        root = _workspace(experiments, Path(scratch))
        server = WorkbenchServer(root, root, batching="auto").start()
        try:
            return _run(server, root, duration=duration, clients=clients,
                        chaos_interval=chaos_interval, seed=seed)
        finally:
            server.stop()


def _run(server: Any, root: Path, *, duration: float, clients: int, chaos_interval: float,
         seed: int) -> dict[str, Any]:
    targets = _deploy(server, root)
    stop, stop_rss = threading.Event(), threading.Event()
    tallies = [Tally() for _ in range(clients)]
    chaos = Chaos(server, targets, chaos_interval, seed)
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    threads = [threading.Thread(target=sample_rss, args=(server.pid, stop_rss, samples, started),
                                daemon=True)]
    threads += [threading.Thread(target=client, args=(targets, stop, seed + i, tallies[i]),
                                 daemon=True) for i in range(clients)]
    threads.append(threading.Thread(target=chaos.run, args=(stop,), daemon=True))
    for thread in threads:
        thread.start()
    stop.wait(duration)
    stop.set()
    for thread in threads[1:]:
        thread.join(120)
    elapsed = time.monotonic() - started
    stuck = sum(thread.is_alive() for thread in threads[1:])
    stop_rss.set()
    threads[0].join(5)

    total = Tally()
    for tally in tallies:
        total.requests += tally.requests
        total.checked += tally.checked
        total.classes.update(tally.classes)
        total.per_agent.update(tally.per_agent)
        total.examples += tally.examples[: max(0, 10 - len(total.examples))]
    # After the chaos: every agent Deployed again and answering its current key correctly.
    final_ok = all(_final_check(server, t) for t in targets)
    rss = rss_verdict(samples, elapsed)

    violations = [f"{count} {cls}" for cls, count in total.classes.items()
                  if cls in ("lost", "wrong", "client error") or cls.startswith("unexpected")]
    if stuck:
        violations.append(f"{stuck} client or chaos threads still running 120 s after the end")
    if server.proc.poll() is not None:
        violations.append(f"the server exited with {server.proc.returncode}")
    violations += [f"no requests reached {t.name}" for t in targets if not total.per_agent[t.name]]
    violations += [f"chaos never completed a {op}" for op in OPS if not chaos.done[op]]
    violations += [f"chaos operation failed: {f}" for f in chaos.failures]
    if not final_ok:
        violations.append("not every agent was Deployed and answering correctly at the end")
    if not rss["flat"]:
        violations.append(f"server RSS grew from {rss['mid_mib']} MiB (mid) to "
                          f"{rss['end_mib']} MiB (end), over the {rss['growth_bound_mib']} MiB "
                          "bound")
    windows = sum(len(t.windows) for t in targets)
    return {
        "duration_s": round(elapsed, 1), "clients": clients,
        "agents": {t.name: {"experiment": t.experiment, "step": t.step, "chaos": t.chaos,
                            "requests": total.per_agent[t.name]} for t in targets},
        "requests": total.requests, "checked": total.checked,
        "requests_per_s": round(total.requests / elapsed, 1),
        "classes": dict(sorted(total.classes.items())),
        "chaos_ops": dict(chaos.done), "chaos_windows": windows,
        "rss": rss, "violations": violations, "examples": total.examples,
    }


def _final_check(server: Any, target: Target) -> bool:
    agent = server.wait_status(target.name, timeout=60)
    if agent["status"] != "Deployed":
        return False
    obs = np.zeros((1, *target.reference.policy.observation_space.shape), np.float32)
    resp = requests.post(target.endpoint + "/get_action", timeout=30,
                         json={"obs": _npy(obs), "batch_size": 1},
                         headers={"Authorization": f"Bearer {agent['api_key']}"})
    if resp.status_code != 200:
        return False
    expected, _ = target.reference.get_action(obs)
    return _matches(_un_npy(resp.json()["action"]), np.asarray(expected))


def report(summary: dict[str, Any]) -> str:
    """The summary as a few lines of text."""
    rss = summary["rss"]
    lines = [
        f"soak: {summary['duration_s']} s, {summary['clients']} clients, "
        f"{len(summary['agents'])} agents "
        f"({sum(a['chaos'] for a in summary['agents'].values())} under chaos)",
        f"requests {summary['requests']} ({summary['requests_per_s']}/s), "
        f"answers checked against the in-process policy {summary['checked']}",
        "answers by class: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()),
        "chaos: " + ", ".join(f"{k} {v}" for k, v in summary["chaos_ops"].items())
        + f" ({summary['chaos_windows']} windows)",
        f"server RSS MiB: start {rss['start_mib']}, mid {rss['mid_mib']}, end {rss['end_mib']}, "
        f"peak {rss['peak_mib']}; slope after warm-up {rss['slope_mib_per_min']} MiB/min",
    ]
    if summary["violations"]:
        lines.append("VIOLATIONS: " + "; ".join(summary["violations"]))
        lines += ["  e.g. " + e for e in summary["examples"]]
    else:
        lines.append("no violations")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client threads")
    parser.add_argument("--chaos-interval", type=float, default=1.0,
                        help="seconds between chaos operations")
    parser.add_argument("--experiments", type=Path, default=None,
                        help="copy this experiments/ folder instead of training a quick demo")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 if it found no violation, 1 otherwise."""
    args = parse(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    summary = soak(args.duration, args.clients, experiments=args.experiments,
                   chaos_interval=args.chaos_interval, seed=args.seed)
    print(report(summary), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
