"""LLM generate batching: concurrent clients against one chat agent, batching on and off.

Two ``jupyter server`` processes serve copies of the same ``tiny-chat-sft`` checkpoint, one
with ``--AgentsWorkbenchApp.batching=auto`` (concurrent ``generate`` requests with the same
settings share one model call) and one with ``batching=off`` (they queue for the model one
by one). ``clients`` threads each send ``requests`` greedy ``generate`` requests, every one
with a different question, and the two servers are driven in alternating rounds so that
drift in the machine's load hits both alike. Completions are checked equal between the two
(greedy decoding, left padding). Example::

    python -m benchmarks.llm_batching --root ./workspace --clients 8 --rounds 3

Figures: completion tokens per second over the whole round (tokens the model produced,
counted with the model's tokenizer, over wall time), and the median and p95 latency of one
request, for each server; the ratio on/off of tokens per second is the gain.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.llm import REPO, _ensure_model

QUESTIONS = ("hello", "hi", "what is the capital of France?", "who are you?",
             "tell me a fact", "what is the capital of Peru?", "good morning", "thanks!")


def _round(endpoint: str, key: str, clients: int, requests_each: int,
           params: dict[str, Any]) -> tuple[float, list[float], dict[str, str]]:
    """One round: wall seconds, per-request latencies and each question's completion."""
    import requests

    completions: dict[str, str] = {}
    latencies: list[float] = []

    def client(index: int) -> None:
        with requests.Session() as http:
            http.headers["Authorization"] = f"Bearer {key}"
            for n in range(requests_each):
                question = QUESTIONS[(index + n) % len(QUESTIONS)]
                started = time.perf_counter()
                response = http.post(f"{endpoint}/generate", timeout=300,
                                     json={"prompts": [question], "params": params})
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                completions[question] = response.json()["results"][0]["completion"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result()
    return time.perf_counter() - started, latencies, completions


def measure_llm_batching(root: Path, *, clients: int = 8, requests_each: int = 4,
                         rounds: int = 3, max_new_tokens: int = 32, quick: bool = False,
                         ) -> dict[str, Any]:
    """Run the A/B and return flat figures (see the module docstring)."""
    import torch

    from benchmarks.servers import WorkbenchServer
    from server_extension.demos.llm import SFT_EXPERIMENT
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    root = Path(root).expanduser().resolve()
    _ensure_model(root, quick)
    experiment = ExperimentStore(root).get(SFT_EXPERIMENT)
    step = experiment.best_step()
    params = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "do_sample": False}
    torch.set_num_threads(1)
    counter: Any = load_runtime(experiment, experiment.checkpoint(step))  # to count tokens

    work = Path(tempfile.mkdtemp(prefix="awb-bench-llm-batching-"))
    servers: dict[str, WorkbenchServer] = {}
    tps: dict[str, list[float]] = {"on": [], "off": []}
    latency: dict[str, list[float]] = {"on": [], "off": []}
    try:
        for label, mode in (("on", "auto"), ("off", "off")):
            served = work / label
            shutil.copytree(experiment.folder, served / "experiments" / SFT_EXPERIMENT)
            servers[label] = WorkbenchServer(served, work, batching=mode, label=label, extra=[
                "--AgentsWorkbenchApp.health_check_interval=0"]).launch()
        agents = {}
        for label, server in servers.items():
            server.wait()
            agents[label] = server.deploy("chat", SFT_EXPERIMENT, step)
        answers: dict[str, dict[str, str]] = {}
        for number in range(rounds + 1):  # round 0 warms both up and is not counted
            order = ("on", "off") if number % 2 else ("off", "on")
            for label in order:
                agent = agents[label]
                wall, lat, texts = _round(agent["endpoint"].rstrip("/"), agent["api_key"],
                                          clients, requests_each, params)
                answers[label] = texts
                if number == 0:
                    continue
                tokens = sum(counter.count_tokens(texts[QUESTIONS[(i + n) % len(QUESTIONS)]])
                             for i in range(clients) for n in range(requests_each))
                tps[label].append(tokens / wall)
                latency[label].extend(lat)
        if answers["on"] != answers["off"]:
            raise AssertionError(f"greedy answers differ: {answers['on']} != {answers['off']}")
        batched = servers["on"].api("GET", "agents/chat/metrics").json()
    finally:
        for server in servers.values():
            server.stop()
        counter.close()
        shutil.rmtree(work, ignore_errors=True)

    def p95(values: list[float]) -> float:
        return sorted(values)[max(0, int(len(values) * 0.95) - 1)]

    on, off = statistics.median(tps["on"]), statistics.median(tps["off"])
    return {
        "llm_batch_clients": clients,
        "llm_batch_requests_per_round": clients * requests_each,
        "llm_batch_rounds": rounds,
        "llm_batch_max_new_tokens": max_new_tokens,
        "llm_batch_on_tokens_per_s": round(on, 1),
        "llm_batch_off_tokens_per_s": round(off, 1),
        "llm_batch_on_over_off": round(on / off, 3) if off else None,
        "llm_batch_on_p50_ms": round(statistics.median(latency["on"]) * 1000, 1),
        "llm_batch_off_p50_ms": round(statistics.median(latency["off"]) * 1000, 1),
        "llm_batch_on_p95_ms": round(p95(latency["on"]) * 1000, 1),
        "llm_batch_off_p95_ms": round(p95(latency["off"]) * 1000, 1),
        "llm_batch_requests_counted_on": batched.get("requests_total"),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "workspace",
                        help="workspace holding tiny-chat-sft (trained there if missing)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true",
                        help="if the model must be trained, train the seconds-long quick one")
    args = parser.parse_args(argv)
    print(json.dumps(measure_llm_batching(
        args.root, clients=args.clients, requests_each=args.requests, rounds=args.rounds,
        max_new_tokens=args.max_new_tokens, quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
