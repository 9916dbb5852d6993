"""Worker processes (issue #14), side by side in one run, written to ``benchmarks/results/``.

    python -m benchmarks.workers                # about 6 minutes on 2 cores
    python -m benchmarks.workers --quick        # checks the harness

Sections (demo CartPole DQN unless said otherwise):

1. get_action at 1, 16 and 64 connections (wrk): the workbench with worker processes (the
   default), the same server with ``isolation=thread`` (the previous design), and the
   minimal Tornado app with a thread hop; rounds interleaved, medians
2. a neighbour's latency: agent B at one connection alone, then while agent A on the same
   server is flooded with oversized calls (rows past ``max_batch_rows``, and the largest
   batch that is allowed)
3. Connect -> Deployed: right after the server answers and right after Create (the template
   still importing), once the template is warm, and warm again
4. memory: the whole process tree (server, template, workers), RSS and PSS, before and after
   Connect + Disconnect of the chat model; and with 50 agents deployed at once, per agent,
   with throughput spread over all 50 against one
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .loadgen import LoadResult, have_wrk, run_wrk
from .policies import DEMO, body_for, ensure_workspace
from .run import fresh_root, machine, say, versions
from .servers import MinimalServer, WorkbenchServer, tree_memory

RESULTS = Path(__file__).resolve().parent / "results"
QUIET = ["--AgentsWorkbenchApp.health_check_interval=0"]


def _median(runs: list[LoadResult]) -> dict[str, Any]:
    return {"rps": round(statistics.median(r.rps for r in runs), 1),
            "p50_ms": round(statistics.median(r.p50_ms for r in runs), 3),
            "p99_ms": round(statistics.median(r.p99_ms for r in runs), 3),
            "errors": sum(r.errors for r in runs)}


def throughput(root: Path, logs: Path, seconds: float, repeats: int) -> dict[str, Any]:
    """Section 1."""
    body = body_for(DEMO)
    process = WorkbenchServer(fresh_root(root, logs / "root-process"), logs, batching="auto",
                              label="process", extra=QUIET).launch()
    thread = WorkbenchServer(fresh_root(root, logs / "root-thread"), logs, batching="auto",
                             label="thread",
                             extra=[*QUIET, "--AgentsWorkbenchApp.isolation=thread"]).launch()
    minimal = MinimalServer(root, DEMO, logs, threaded=True)
    try:
        minimal.start()
        urls = {"minimal": (minimal.url, minimal.key)}
        for label, server in (("process", process), ("thread", thread)):
            server.wait()
            agent = server.deploy("bench", DEMO)
            urls[label] = (agent["endpoint"].rstrip("/") + "/get_action", agent["api_key"])
        out: dict[str, Any] = {}
        for conns in (1, 16, 64):
            runs: dict[str, list[LoadResult]] = {k: [] for k in urls}
            for _ in range(repeats):
                for label, (url, key) in urls.items():
                    runs[label].append(run_wrk(url, body, key=key, connections=conns,
                                               seconds=seconds, threads=2 if conns > 16 else 1))
            row = {label: _median(r) for label, r in runs.items()}
            row["process_over_minimal"] = round(row["process"]["rps"] / row["minimal"]["rps"], 2)
            row["thread_over_minimal"] = round(row["thread"]["rps"] / row["minimal"]["rps"], 2)
            out[str(conns)] = row
        return out
    finally:
        for server in (process, thread, minimal):
            server.stop()


def neighbour(root: Path, logs: Path, seconds: float) -> dict[str, Any]:
    """Section 2."""
    import base64
    import io

    import numpy as np

    server = WorkbenchServer(fresh_root(root, logs / "root-neighbour"), logs, batching="auto",
                             label="neighbour", extra=QUIET).start()
    try:
        a = server.deploy("flooded", DEMO)
        b = server.deploy("neighbour", DEMO)
        b_url = b["endpoint"].rstrip("/") + "/get_action"
        a_url = a["endpoint"].rstrip("/") + "/get_action"
        body = body_for(DEMO)

        def measure() -> LoadResult:
            return run_wrk(b_url, body, key=b["api_key"], connections=1, seconds=seconds)

        out: dict[str, Any] = {"alone": measure().to_json()}
        for label, rows in (("past_max_batch_rows", 70_000), ("largest_allowed", 65_536)):
            buf = io.BytesIO()
            np.save(buf, np.zeros((rows, 4), np.float32), allow_pickle=False)
            big = json.dumps({"obs": base64.b64encode(buf.getvalue()).decode()})
            # The flood comes from wrk too (C, a fraction of a core), so what B feels is the
            # server's and A's worker's load, not a Python load generator's.
            flood: list[LoadResult] = []
            flooder = threading.Thread(target=lambda big=big, flood=flood: flood.append(run_wrk(
                a_url, big, key=a["api_key"], connections=4, seconds=seconds + 2)))
            flooder.start()
            time.sleep(1.0)
            try:
                out[label] = measure().to_json()
            finally:
                flooder.join(seconds + 60)
            out[label]["flood_body_mb"] = round(len(big) / 2**20, 2)
            out[label]["flood_rps"] = flood[0].rps if flood else None
            out[label]["p99_over_alone"] = round(out[label]["p99_ms"] / out["alone"]["p99_ms"], 2)
        return out
    finally:
        server.stop()


def connects(root: Path, logs: Path, warm: int) -> dict[str, Any]:
    """Section 3."""
    out: dict[str, Any] = {}
    fresh = WorkbenchServer(fresh_root(root, logs / "root-cold"), logs, label="cold",
                            extra=QUIET)
    started = time.perf_counter()
    fresh.start()
    out["server_up_s"] = round(time.perf_counter() - started, 2)
    try:
        fresh.create("first", DEMO)
        out["first_right_after_start_s"] = round(fresh.connect("first")[1], 3)
    finally:
        fresh.stop()
    paused = WorkbenchServer(fresh_root(root, logs / "root-paused"), logs, label="paused",
                             extra=QUIET).start()
    try:
        time.sleep(20)  # the template has imported torch and AgileRL by now
        paused.create("first", DEMO)
        out["first_template_warm_s"] = round(paused.connect("first")[1], 3)
        times = []
        for i in range(warm):
            paused.create(f"warm-{i}", DEMO)
            times.append(paused.connect(f"warm-{i}")[1])
            paused.disconnect(f"warm-{i}")
        out["warm_median_s"] = round(statistics.median(times), 3)
        out["warm_max_s"] = round(max(times), 3)
    finally:
        paused.stop()
    return out


def memory(root: Path, logs: Path, many: int, seconds: float) -> dict[str, Any]:
    """Section 4."""
    out: dict[str, Any] = {}
    server = WorkbenchServer(fresh_root(root, logs / "root-memory"), logs, label="memory",
                             extra=QUIET).start()
    try:
        time.sleep(20)  # let the template finish importing: it is part of "before"
        if (root / "experiments" / "tiny-chat-sft").exists():
            before = tree_memory(server.pid)
            server.deploy("chat", "tiny-chat-sft")
            during = tree_memory(server.pid)
            server.disconnect("chat")
            time.sleep(1.0)
            after = tree_memory(server.pid)
            out["chat"] = {"before": before, "deployed": during, "after": after,
                           "rss_after_over_before": round(after["rss_mb"] / before["rss_mb"], 3)}
        base = tree_memory(server.pid)
        single = server.deploy("one", DEMO)
        one = tree_memory(server.pid)
        agents = [server.deploy(f"many-{i:03d}", DEMO) for i in range(many - 1)]
        time.sleep(1.0)
        full = tree_memory(server.pid)
        body = body_for(DEMO)
        targets = [(urlsplit(a["endpoint"]).path.rstrip("/") + "/get_action", a["api_key"])
                   for a in [single, *agents]]
        one_url = single["endpoint"].rstrip("/") + "/get_action"
        alone = run_wrk(one_url, body, key=single["api_key"], connections=16, seconds=seconds)
        spread = run_wrk(one_url, body, key=None, connections=16, seconds=seconds,
                         targets=targets)
        out["many"] = {
            "agents": many, "before": base, "one": one, "all": full,
            "first_agent_rss_mb": round(one["rss_mb"] - base["rss_mb"], 1),
            "first_agent_pss_mb": round(one["pss_mb"] - base["pss_mb"], 1),
            "per_further_agent_rss_mb": round((full["rss_mb"] - one["rss_mb"]) / (many - 1), 1),
            "per_further_agent_pss_mb": round((full["pss_mb"] - one["pss_mb"]) / (many - 1), 1),
            "one_agent_rps": round(alone.rps, 1), "spread_rps": round(spread.rps, 1),
            "spread_over_one": round(spread.rps / alone.rps, 2) if alone.rps else None,
            "errors": alone.errors + spread.errors,
        }
    finally:
        server.stop()
    return out


def render(results: dict[str, Any]) -> str:
    """The results as Markdown (the JSON is kept at the end)."""
    lines = [f"# Worker processes benchmark, {results['date']}", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}", "", "## 1. get_action throughput (wrk)", "",
             "| connections | process req/s | thread req/s | minimal req/s | process/minimal | "
             "thread/minimal | p50 process / minimal (ms) |", "|---|---|---|---|---|---|---|"]
    for conns, row in results["throughput"].items():
        lines.append(f"| {conns} | {row['process']['rps']} | {row['thread']['rps']} | "
                     f"{row['minimal']['rps']} | {row['process_over_minimal']} | "
                     f"{row['thread_over_minimal']} | {row['process']['p50_ms']} / "
                     f"{row['minimal']['p50_ms']} |")
    n = results["neighbour"]
    lines += ["", "## 2. Neighbour latency (one connection) while another agent is flooded",
              "", "| case | p50 ms | p99 ms | p99 / alone |", "|---|---|---|---|",
              f"| alone | {n['alone']['p50_ms']} | {n['alone']['p99_ms']} | 1 |"]
    for key in ("past_max_batch_rows", "largest_allowed"):
        lines.append(f"| flood: {key} ({n[key]['flood_body_mb']} MiB bodies, 4 clients) | "
                     f"{n[key]['p50_ms']} | {n[key]['p99_ms']} | {n[key]['p99_over_alone']} |")
    c = results["connects"]
    lines += ["", "## 3. Connect -> Deployed", "", "| case | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in c.items()]
    m = results["memory"]
    lines += ["", "## 4. Memory (whole process tree)", "", "```",
              json.dumps(m, indent=1), "```", "", "## Raw", "", "```",
              json.dumps(results, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    """Run every section; return the results file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workspace", type=Path)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--many", type=int)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not have_wrk():
        raise SystemExit("wrk is not installed (apt-get install wrk); it generates the load.")
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    repeats = args.repeats or (1 if args.quick else 3)
    many = args.many or (5 if args.quick else 50)
    root = (args.workspace or Path(__file__).resolve().parent / ".workspace").resolve()
    ensure_workspace(root, say)
    if not (root / "experiments" / "tiny-chat-sft").exists():
        from server_extension.demos.llm import build_llm_demo

        say("training the quick tiny chat model (for the memory section)")
        build_llm_demo(root, quick=True)
    logs = Path(tempfile.mkdtemp(prefix="awb-bench-workers-"))
    results: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": "python -m benchmarks.workers " + shlex.join(
            argv if argv is not None else sys.argv[1:]),
        "machine": machine(), "versions": versions(),
    }
    say("1. throughput: process / thread / minimal")
    results["throughput"] = throughput(root, logs, seconds, repeats)
    say("2. neighbour latency under a flood")
    results["neighbour"] = neighbour(root, logs, seconds)
    say("3. Connect -> Deployed")
    results["connects"] = connects(root, logs, 2 if args.quick else 5)
    say("4. memory")
    results["memory"] = memory(root, logs, many, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (dt.datetime.now().strftime("%Y-%m-%d") +
                       ("-workers-quick" if args.quick else "-workers") + ".md")
    path.write_text(render(results))
    say(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
