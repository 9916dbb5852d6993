"""Every benchmark of issue #5, side by side in one run, written to ``benchmarks/results/``.

    python -m benchmarks.run            # the full run (about 10 minutes on 2 cores)
    python -m benchmarks.run --quick    # short durations, one repeat: checks the harness

What runs (``get_action`` on the demo CartPole DQN unless said otherwise):

1. floor, in-process: the loaded runtime's ``get_action``, the bare network forward, and the
   wire codec (decode + encode) against numpy's own ``np.load``/``np.save`` path
2. over loopback HTTP with wrk: (b) the minimal Tornado app, (c) the workbench inside
   ``jupyter server`` (agent created and connected through the management API), the same
   with the opt-in inline path (``inline_below_ms``), (d) Ray Serve: p50/p99 with one
   connection and throughput at 1, 16 and 64 connections, with wrk's own CPU use; (b) and
   both (c) run interleaved, repeat by repeat
3. Connect-to-Deployed, the first on a fresh server (it pays for importing torch and
   AgileRL) and warm
4. many agents: RSS per deployed agent and throughput spread round-robin over all of them
5. dynamic batching on larger policies (256x256 MLP, CNN) at 64 connections, off/on/auto
6. the panel's table with many agents: first build and one status change, in the kernel
7. LLM tokens/s over HTTP against in-process (``benchmarks/llm.py``), and generate batching
   on and off with 8 concurrent clients (``benchmarks/llm_batching.py``)

Figures are medians over ``--repeats`` runs; ratios are taken within this one run. The
results file records the machine, versions and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import inprocess
from .loadgen import LoadResult, have_wrk, run_wrk
from .policies import CNN, DEMO, MLP, body_for, ensure_workspace
from .servers import MinimalServer, RayServer, WorkbenchServer, have_ray, tree_memory

RESULTS = Path(__file__).resolve().parent / "results"
CONNECTIONS = (1, 16, 64)
# Seconds between creating an agent and connecting it, about what the wizard takes a person.
PAUSE_S = 5.0
# inline_below_ms for the (c) inline server: the demo MLP's 8-row call is about 0.1 ms.
INLINE_BELOW_MS = 1.0


@dataclass
class Settings:
    """How long and how often to measure."""

    seconds: float
    repeats: int
    many: int
    panel_agents: int
    warm_connects: int
    calls: int
    samples: int
    ray: bool
    llm: bool
    llm_repeats: int
    quick: bool


def say(message: str) -> None:
    """Progress on stderr, timestamped."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fresh_root(source: Path, root: Path) -> Path:
    """A server root of its own (registry, runtime files) with a copy of the experiments."""
    shutil.copytree(source / "experiments", root / "experiments")
    return root


def median_load(runs: list[LoadResult]) -> dict[str, Any]:
    """Medians of each figure over repeated wrk runs (errors summed)."""
    return {
        "connections": runs[0].connections,
        "rps": round(statistics.median(r.rps for r in runs), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
        "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
        "client_cpu": round(statistics.median(r.client_cpu for r in runs), 2),
        "errors": sum(r.errors for r in runs),
        "runs": len(runs),
    }


def load_table(targets: dict[str, Callable[[int], LoadResult]], settings: Settings,
               connections: tuple[int, ...] = CONNECTIONS) -> dict[str, dict[int, Any]]:
    """Run every target at every connection count, interleaved, ``repeats`` times."""
    runs: dict[str, dict[int, list[LoadResult]]] = {k: {c: [] for c in connections}
                                                    for k in targets}
    for repeat in range(settings.repeats):
        for conns in connections:
            for label, fire in targets.items():
                say(f"  {label}: {conns} connections (repeat {repeat + 1}/{settings.repeats})")
                runs[label][conns].append(fire(conns))
    return {label: {c: median_load(rs) for c, rs in by_conns.items()}
            for label, by_conns in runs.items()}


def wrk_threads(conns: int) -> int:
    """One wrk thread is plenty up to 16 connections; two at 64 keep it off the limit."""
    return 2 if conns >= 64 else 1


def http_section(root: Path, logs: Path, settings: Settings,
                 workbench: WorkbenchServer, agent: dict[str, Any]) -> dict[str, Any]:
    """(b), (c) and (d) on the demo agent, and (c) with the opt-in inline path."""
    body = body_for(DEMO)
    endpoint = agent["endpoint"].rstrip("/") + "/get_action"
    # The same workbench with AgentsWorkbenchApp.inline_below_ms on
    # (server_extension/serving/inline.py),
    # starting while the minimal app does.
    inline = WorkbenchServer(fresh_root(root, logs / "root-inline"), logs, batching="auto",
                             label="inline", extra=[
                                 "--AgentsWorkbenchApp.health_check_interval=0",
                                 # inline serving needs the model in the server's process
                                 "--AgentsWorkbenchApp.isolation=thread",
                                 f"--AgentsWorkbenchApp.inline_below_ms={INLINE_BELOW_MS}"]
                             ).launch()
    minimal = MinimalServer(root, DEMO, logs)
    out: dict[str, Any] = {}
    try:
        minimal.start()
        inline.wait()
        fast = inline.deploy("bench-inline", DEMO)
        targets = {
            "b_minimal": lambda c: run_wrk(minimal.url, body, key=minimal.key, connections=c,
                                           seconds=settings.seconds, threads=wrk_threads(c)),
            "c_workbench": lambda c: run_wrk(endpoint, body, key=agent["api_key"],
                                             connections=c, seconds=settings.seconds,
                                             threads=wrk_threads(c)),
            "c_inline": lambda c: run_wrk(fast["endpoint"].rstrip("/") + "/get_action", body,
                                          key=fast["api_key"], connections=c,
                                          seconds=settings.seconds, threads=wrk_threads(c)),
        }
        out.update(load_table(targets, settings))
    finally:
        minimal.stop()
        inline.stop()
    if settings.ray and have_ray():
        say("starting Ray Serve (d)")
        ray = RayServer(root, DEMO, logs)
        try:
            ray.start()
            out.update(load_table({"d_ray": lambda c: run_wrk(
                ray.url, body, key=ray.key, connections=c, seconds=settings.seconds,
                threads=wrk_threads(c))}, settings))
        except (RuntimeError, TimeoutError) as exc:
            out["d_ray_error"] = str(exc)[:300]
        finally:
            ray.stop()
    else:
        out["d_ray_error"] = "skipped (--no-ray or ray[serve] not installed)"
    return out


def first_connects(fresh: WorkbenchServer,
                   other_fresh: WorkbenchServer) -> tuple[dict[str, Any], float, float]:
    """The first Connect on two fresh servers: right after create, and ``PAUSE_S`` later.

    Creating an agent starts importing its framework in the background; a wizard user clicks
    Connect a few seconds after Create. Returns the Deployed demo agent and both times.
    """
    fresh.create("bench-demo", DEMO)
    agent, first = fresh.connect("bench-demo")
    other_fresh.create("bench-paused", DEMO)
    time.sleep(PAUSE_S)
    _, paused = other_fresh.connect("bench-paused")
    other_fresh.disconnect("bench-paused")
    return agent, first, paused


def connect_section(workbench: WorkbenchServer, settings: Settings,
                    first_seconds: float, paused_seconds: float) -> dict[str, Any]:
    """Connect -> Deployed, warm, for the demo agent and the 256x256 MLP."""
    out: dict[str, Any] = {"first_s": round(first_seconds, 3),
                           "first_paused_s": round(paused_seconds, 3)}
    for experiment in (DEMO, MLP):
        times = []
        for i in range(settings.warm_connects):
            name = f"warm-{experiment}-{i}"
            workbench.create(name, experiment)
            times.append(workbench.connect(name)[1])
            workbench.disconnect(name)
        out[f"warm_s_{experiment}"] = round(statistics.median(times), 3)
        out[f"warm_max_s_{experiment}"] = round(max(times), 3)
    return out


def many_section(workbench: WorkbenchServer, settings: Settings,
                 single: dict[str, Any]) -> dict[str, Any]:
    """Deploy ``many`` more copies of the demo agent; memory each and spread throughput."""
    # The whole tree: agents live in worker processes, not in the server (PSS splits the
    # pages that forked workers share with their template).
    before = tree_memory(workbench.pid)
    agents = []
    started = time.perf_counter()
    for i in range(settings.many):
        agents.append(workbench.deploy(f"many-{i:03d}", DEMO))
    deploy_s = time.perf_counter() - started
    time.sleep(0.5)
    after = tree_memory(workbench.pid)
    body = body_for(DEMO)
    targets = [(urlsplit(a["endpoint"]).path.rstrip("/") + "/get_action", a["api_key"])
               for a in agents]
    base = agents[0]["endpoint"].rstrip("/") + "/get_action"
    one_url = single["endpoint"].rstrip("/") + "/get_action"
    conns = 16
    loads = load_table({
        "one_agent": lambda c: run_wrk(one_url, body, key=single["api_key"], connections=c,
                                       seconds=settings.seconds),
        "spread": lambda c: run_wrk(base, body, key=None, connections=c,
                                    seconds=settings.seconds, targets=targets),
    }, settings, connections=(conns,))
    for a in agents:
        workbench.disconnect(a["name"])
    one, spread = loads["one_agent"][conns], loads["spread"][conns]
    return {
        "agents": settings.many,
        "deploy_all_s": round(deploy_s, 2),
        "rss_before_mb": before["rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "pss_before_mb": before["pss_mb"],
        "pss_after_mb": after["pss_mb"],
        "mb_per_agent": round((after["pss_mb"] - before["pss_mb"]) / settings.many, 2),
        "one_agent": one, "spread": spread,
        "spread_over_one": round(spread["rps"] / one["rps"], 2) if one["rps"] else None,
    }


def batching_section(root: Path, settings: Settings,
                     servers: dict[str, WorkbenchServer]) -> dict[str, Any]:
    """The larger policies at 64 connections with batching off, on and auto (one server
    each, all started with the same settings otherwise)."""
    out: dict[str, Any] = {"costs": {n: inprocess.batch_costs(root, n) for n in (MLP, CNN)}}
    targets: dict[str, Callable[[int], LoadResult]] = {}
    for policy in (MLP, CNN):
        body = body_for(policy)
        for mode, server in servers.items():
            agent = server.deploy(f"batch-{policy}-{mode}", policy)
            url = agent["endpoint"].rstrip("/") + "/get_action"
            key = agent["api_key"]

            def fire(c: int, url: str = url, key: str = key, body: str = body) -> LoadResult:
                return run_wrk(url, body, key=key, connections=c, seconds=settings.seconds,
                               threads=wrk_threads(c))

            targets[f"{policy}|{mode}"] = fire
    loads = load_table(targets, settings, connections=(1, 64))
    for policy in (MLP, CNN):
        rows = {mode: loads[f"{policy}|{mode}"] for mode in servers}
        off64 = rows["off"][64]["rps"]
        out[policy] = {
            "rows": rows,
            "gain_on": round(rows["on"][64]["rps"] / off64, 2) if off64 else None,
            "gain_auto": round(rows["auto"][64]["rps"] / off64, 2) if off64 else None,
        }
    return out


def panel_section(workbench: WorkbenchServer, settings: Settings) -> dict[str, Any]:
    """Create agents up to ``panel_agents`` (not connected) and time the table on their JSON."""
    have = len(workbench.api("GET", "agents").json()["agents"])
    for i in range(max(0, settings.panel_agents - have)):
        workbench.create(f"panel-{i:03d}", DEMO)
    agents_json = workbench.api("GET", "agents").json()["agents"]
    started = time.perf_counter()
    workbench.api("GET", "agents").raise_for_status()
    fetch_ms = (time.perf_counter() - started) * 1000
    out = inprocess.panel(agents_json)
    out["list_api_ms"] = round(fetch_ms, 1)
    return out


def llm_section(root: Path, settings: Settings) -> dict[str, Any]:
    """``benchmarks.llm.measure_llm`` when that module exists."""
    try:
        from .llm import measure_llm
    except ImportError:
        return {"skipped": "benchmarks/llm.py not present"}
    extra: dict[str, Any] = {}
    if settings.quick and "quick" in signature(measure_llm).parameters:
        extra["quick"] = True  # train the chat model the short way if it is missing
    try:
        figures: dict[str, Any] = measure_llm(root, repeats=settings.llm_repeats, **extra)
    except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    from .llm_batching import measure_llm_batching

    try:
        figures.update(measure_llm_batching(
            root, clients=8, requests_each=2 if settings.quick else 4,
            rounds=1 if settings.quick else 3, **extra))
    except Exception as exc:  # noqa: BLE001 - keep the figures measured so far
        figures["llm_batch_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return figures


def metrics_section(root: Path, settings: Settings) -> dict[str, Any]:
    """Throughput with the per-deployment metrics on and off (``benchmarks.metrics_overhead``)."""
    from .metrics_overhead import measure

    try:
        # Pairs of rounds move by ±10 % on this shared machine, so the full run takes twelve.
        return measure(root / "experiments", rounds=2 if settings.quick else 12,
                       seconds=1.0 if settings.quick else settings.seconds, connections=16)
    except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def ray_scaling_section(root: Path, settings: Settings) -> dict[str, Any]:
    """The Ray Serve backend against local (``benchmarks.ray_scaling``)."""
    if not settings.ray or not have_ray():
        return {"skipped": "--no-ray or ray[serve] not installed"}
    from .ray_scaling import measure

    try:
        return dict(measure(root, seconds=max(2.0, settings.seconds * 0.8), say=say))
    except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


# -- the report ---------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """Versions of what is measured."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("torch", "numpy", "tornado", "jupyter_server", "agilerl", "ray"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
        out["wrk"] = (wrk.stdout or wrk.stderr).split("\n")[0].strip()[:60]
    except FileNotFoundError:  # the Python load generator is used instead (see loadgen.py)
        out["wrk"] = "not installed"
    return out


def machine() -> dict[str, str]:
    """CPU model, cores, memory, load at start."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f"{kb / 2**20:.1f} GiB"
    return {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem,
            "platform": platform.platform(), "load_average": " ".join(
                f"{x:.2f}" for x in os.getloadavg())}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def render(results: dict[str, Any]) -> str:
    """The results file, in Markdown."""
    r = results
    parts = [f"# Benchmark results, {r['date']}", ""]
    parts.append(f"Command: `{r['command']}`" + ("  (quick: short runs, one repeat; "
                                                  "numbers are for checking the harness)"
                                                  if r["quick"] else ""))
    parts.append("")
    parts.append(f"Settings: {r['settings']}")
    parts += ["", "## Machine and versions", "",
              _table(["", ""], [[k, v] for k, v in {**r["machine"], **r["versions"]}.items()])]

    f = r["floor"]
    parts += ["", "## 1. Floor, in-process (demo CartPole DQN, one observation)", "",
              _table(["what", "µs per call"], [
                  ["bare network forward (agent.actor on a ready tensor)", f["forward_us"]],
                  ["runtime get_action (checks, tensor, forward, argmax)", f["runtime_us"]],
                  ["codec: decode obs + encode action (serde.py)", f["codec_us"]],
                  ["  decode", f["decode_us"]], ["  encode", f["encode_us"]],
                  ["codec with numpy's np.load/np.save (before)", f["numpy_codec_us"]],
              ])]

    h = r["http"]
    rows = []
    for label in ("b_minimal", "c_workbench", "c_inline", "d_ray"):
        if label not in h:
            continue
        for conns, m in h[label].items():
            rows.append([label, conns, m["rps"], m["p50_ms"], m["p99_ms"], m["client_cpu"],
                         m["errors"]])
    parts += ["", "## 2. get_action over loopback HTTP (demo agent, wrk)", "",
              _table(["server", "connections", "req/s", "p50 ms", "p99 ms",
                      "wrk CPU (cores)", "errors"], rows)]
    if "d_ray_error" in h:
        parts += ["", f"(d) Ray Serve: {h['d_ray_error']}"]

    c = r["connect"]
    parts += ["", "## 3. Connect to Deployed", "", _table(["case", "seconds"], [
        ["first connect on a fresh server, right after create (imports torch + AgileRL)",
         c["first_s"]],
        [f"first connect on a fresh server, {PAUSE_S:g} s after create (imports warmed)",
         c["first_paused_s"]],
        *[[f"warm, {k[7:]} (median / max)", f"{v} / {c['warm_max_s_' + k[7:]]}"]
          for k, v in c.items() if k.startswith("warm_s_")],
    ])]

    m = r["many"]
    parts += ["", f"## 4. {m['agents']} agents deployed at once on one server", "", _table(
        ["figure", "value"], [
            ["deploy all (create + connect, one after another)", f"{m['deploy_all_s']} s"],
            ["server RSS before / after", f"{m['rss_before_mb']} / {m['rss_after_mb']} MiB"],
            ["memory per deployed agent", f"{m['mb_per_agent']} MiB"],
            ["req/s at 16 conns, one agent alone", m["one_agent"]["rps"]],
            [f"req/s at 16 conns, round-robin over {m['agents']}", m["spread"]["rps"]],
            ["spread / one", m["spread_over_one"]],
        ])]

    b = r["batching"]
    rows = []
    for policy in (MLP, CNN):
        for mode, by_conns in b[policy]["rows"].items():
            for conns, x in by_conns.items():
                rows.append([policy, mode, conns, x["rps"], x["p50_ms"], x["p99_ms"]])
    costs = [[n, x["batch1_us"], x["batch8_us"], x["batch8_over_8x1"], x["auto_batches"]]
             for n, x in b["costs"].items()]
    parts += ["", "## 5. Dynamic batching (larger policies)", "",
              _table(["policy", "get_action batch 1 µs", "batch 8 µs", "batch 8 / 8x batch 1",
                      "auto batches it"], costs), "",
              _table(["policy", "batching", "connections", "req/s", "p50 ms", "p99 ms"], rows),
              "", _table(["policy", "gain on/off at 64", "gain auto/off at 64"],
                         [[p, b[p]["gain_on"], b[p]["gain_auto"]] for p in (MLP, CNN)])]

    p = r["panel"]
    parts += ["", f"## 6. Panel with {p['agents']} agents (kernel side, real API JSON)", "",
              _table(["step", "ms"], [
                  [f"GET agents/api/agents ({p['agents']} agents)", p["list_api_ms"]],
                  [f"build the table ({p['rows']} rows)", p["build_ms"]],
                  ["apply one status change (a poll that saw it)", p["one_change_ms"]],
                  ["a poll with nothing new", p["no_change_ms"]],
              ])]

    parts += ["", "## 7. LLM (benchmarks/llm.py)", "",
              _table(["figure", "value"], [[k, v] for k, v in r["llm"].items()
                                           if not isinstance(v, dict | list)])]

    for number, key, title in ((8, "metrics", "Metrics on vs off (benchmarks/metrics_overhead.py)"),
                               (9, "ray_scaling", "Ray Serve backend vs local "
                                                  "(benchmarks/ray_scaling.py)")):
        parts += ["", f"## {number}. {title}", "",
                  _table(["figure", "value"], [[k, v] for k, v in r.get(key, {}).items()
                                               if not isinstance(v, dict)])]

    parts += ["", "## Targets", "", _table(["target", "measured", "verdict"], targets(r))]
    parts += ["", "## Raw results", "", "```json", json.dumps(r, indent=1, default=str), "```",
              ""]
    return "\n".join(parts)


def targets(r: dict[str, Any]) -> list[list[str]]:
    """The issue's targets against this run's figures."""
    h, f, c, m = r["http"], r["floor"], r["connect"], r["many"]
    rows = []
    b16 = h["b_minimal"][16]["rps"]
    c16 = h["c_workbench"][16]["rps"]
    ratio = round(c16 / b16, 2) if b16 else None
    rows.append(["(c) >= 0.9x (b) req/s at 16 conns", str(ratio),
                 _verdict(None if ratio is None else ratio >= 0.9)])
    if "c_inline" in h:
        i16 = h["c_inline"][16]["rps"]
        ratio = round(i16 / b16, 2) if b16 else None
        rows.append([f"(c) with inline_below_ms={INLINE_BELOW_MS:g} (opt-in) >= 0.9x (b)",
                     str(ratio), _verdict(None if ratio is None else ratio >= 0.9)])
    if "d_ray" in h:
        d16 = h["d_ray"][16]["rps"]
        ratio = round(c16 / d16, 2) if d16 else None
        rows.append(["(c) >= 3x (d) req/s at 16 conns", str(ratio),
                     _verdict(None if ratio is None else ratio >= 3)])
    else:
        rows.append(["(c) >= 3x (d) req/s at 16 conns", "not run", "n/a"])
    rows.append(["runtime per call <= 2x bare forward", str(f["runtime_over_forward"]),
                 _verdict(f["runtime_over_forward"] <= 2)])
    rows.append(["codec well under the forward (< 0.5x)", str(f["codec_over_forward"]),
                 _verdict(f["codec_over_forward"] < 0.5)])
    warm = c.get(f"warm_s_{DEMO}")
    rows.append(["Connect-to-Deployed <= 1 s (demo MLP, warm)", f"{warm} s",
                 _verdict(warm is not None and warm <= 1)])
    rows.append(["Connect-to-Deployed <= 1 s (first, right after create)", f"{c['first_s']} s",
                 _verdict(c["first_s"] <= 1)])
    rows.append([f"Connect-to-Deployed <= 1 s (first, {PAUSE_S:g} s after create)",
                 f"{c['first_paused_s']} s", _verdict(c["first_paused_s"] <= 1)])
    spread = m["spread_over_one"]
    rows.append([f"{m['agents']} agents: spread >= 0.8x one agent", str(spread),
                 _verdict(None if spread is None else spread >= 0.8)])
    llm = r["llm"].get("llm_http_vs_inproc_tokens_per_s")
    rows.append(["LLM tokens/s HTTP >= 0.9x in-process", str(llm),
                 _verdict(None if llm is None else llm >= 0.9)])
    ttft = r["llm"].get("llm_http_first_chunk_extra_ms")
    rows.append(["LLM first streamed chunk within 50 ms of in-process TTFT", f"+{ttft} ms",
                 _verdict(None if ttft is None else ttft <= 50)])
    gain = r["llm"].get("llm_batch_on_over_off")
    rows.append(["LLM generate batching, 8 clients: tokens/s on / off", str(gain),
                 "reported" if gain is not None else "n/a"])
    overhead = r.get("metrics", {}).get("paired_overhead_pct")
    rows.append(["metrics cost <= 3% of get_action req/s", f"{overhead} %",
                 _verdict(None if overhead is None else overhead <= 3)])
    return rows


# -- main ---------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one repeat, fewer agents: checks the harness")
    parser.add_argument("--workspace", type=Path,
                        help="workspace to use (demo built into it if missing); default: a "
                        "cached one under benchmarks/.workspace")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results file")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, help="runs per figure (medians)")
    parser.add_argument("--many", type=int, help="agents deployed at once (default 50)")
    parser.add_argument("--panel-agents", type=int, help="agents in the panel (default 200)")
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Serve (d)")
    parser.add_argument("--no-llm", action="store_true", help="skip the LLM figures")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults per mode, overridden by explicit flags."""
    quick = args.quick
    return Settings(
        seconds=args.seconds or (2.0 if quick else 10.0),
        repeats=args.repeats or (1 if quick else 3),
        many=args.many or 50,
        panel_agents=args.panel_agents or 200,
        warm_connects=2 if quick else 5,
        calls=50 if quick else 500,
        samples=5 if quick else 15,
        ray=not args.no_ray,
        llm=not args.no_llm,
        llm_repeats=2 if quick else 10,
        quick=quick,
    )


def main(argv: list[str] | None = None) -> Path:
    """Run everything; return the results file's path."""
    args = parse(argv)
    if not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install wrk); it generates the load.")
    settings = settings_from(args)
    root = (args.workspace or Path(__file__).resolve().parent / ".workspace").resolve()
    ensure_workspace(root, say)
    logs = Path(tempfile.mkdtemp(prefix="awb-bench-logs-"))
    # The servers get a fresh root (own registry) with a copy of the experiments, so runs do
    # not see each other's agents and a user's workspace gets none of the benchmark's.
    serve_root = fresh_root(root, logs / "root-main")
    say(f"workspace {root}; servers' root and logs in {logs}")
    started = time.time()
    results: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.run " + shlex.join(argv if argv is not None
                                                             else sys.argv[1:]),
        "quick": args.quick, "settings": vars(settings),
        "machine": machine(), "versions": versions(),
    }
    say("floor: in-process runtime, bare forward, codec")
    results["floor"] = inprocess.floor(root, DEMO, calls=settings.calls,
                                       samples=settings.samples)
    # Three workbench servers, started side by side: the default ("auto", every section)
    # and batching off and on for the batching section. Health checks are off so idle
    # servers stay idle while another is measured.
    quiet = ["--AgentsWorkbenchApp.health_check_interval=0"]
    servers = {mode: WorkbenchServer(serve_root if mode == "auto" else fresh_root(
        root, logs / f"root-{mode}"), logs, batching=mode, extra=quiet).launch()
        for mode in ("auto", "off", "on")}
    workbench = servers["auto"]
    try:
        for server in servers.values():
            server.wait()
        say("(c) workbench: first connect")
        agent, first, paused = first_connects(workbench, servers["off"])
        say("HTTP: (b) minimal, (c) workbench, (d) Ray Serve")
        results["http"] = http_section(serve_root, logs, settings, workbench, agent)
        say("Connect-to-Deployed, warm")
        results["connect"] = connect_section(workbench, settings, first, paused)
        say(f"{settings.many} agents at once")
        results["many"] = many_section(workbench, settings, agent)
        say("dynamic batching")
        results["batching"] = batching_section(root, settings, servers)
        say(f"panel with {settings.panel_agents} agents")
        results["panel"] = panel_section(workbench, settings)
    finally:
        for server in servers.values():
            server.stop()
    if settings.llm:
        say("LLM (benchmarks/llm.py)")
        results["llm"] = llm_section(root, settings)
    else:
        results["llm"] = {"skipped": "--no-llm"}
    say("metrics on vs off")
    results["metrics"] = metrics_section(root, settings)
    say("Ray Serve backend scaling")
    results["ray_scaling"] = ray_scaling_section(root, settings)
    results["elapsed_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y-%m-%d")
    path = args.out / f"{stamp}{'-quick' if args.quick else ''}.md"
    path.write_text(render(results))
    say(f"wrote {path} in {results['elapsed_s']} s")
    print(path)
    return path


if __name__ == "__main__":
    main()
