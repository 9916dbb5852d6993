"""Tokens per second of the demo chat model: in-process against through the HTTP endpoint.

The same checkpoint (``tiny-chat-sft``, best step), the same prompt formatted the way the
server formats a new chat turn, the same greedy parameters. In-process, the runtime from
``server_extension.serving.runtimes.load_runtime`` is timed directly; over HTTP, a real
``jupyter server`` child process serves a copy of the checkpoint and is called with
``requests`` on a kept-alive connection. Rounds alternate between the two so that drift in
the machine's load hits both alike. Example::

    python -m benchmarks.llm --root ./workspace --repeats 20

or, from Python (``benchmarks/run.py`` does this)::

    from benchmarks.llm import measure_llm
    figures = measure_llm(Path("workspace"), repeats=20)
    figures["llm_http_vs_inproc_tokens_per_s"]       # target: >= 0.9

Figures (medians over ``repeats``): tokens/s of ``generate`` (wall time around the call, so
HTTP pays for the request, JSON, the session write and the response), and time to the first
streamed piece (``runtime.stream`` in-process, the first chunk of ``POST generate_stream``
over HTTP). Both sides produce identical text, checked, so their token counts match.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The demo model stops at its end-of-turn token; this prompt draws its longest greedy reply
# (35 tokens), so per-request overhead weighs least. An untrained (--quick) model never stops
# early and always makes max_new_tokens.
PROMPT = "hello"
WARMUP = 2


def _ensure_model(root: Path, quick: bool) -> None:
    from server_extension.demos.llm import SFT_EXPERIMENT, build_llm_demo
    from workbench_core.store import ExperimentStore, StoreError

    try:
        ExperimentStore(root).get(SFT_EXPERIMENT).best_step()
    except (StoreError, OSError, ValueError):
        print(f"training the demo chat model into {root} (quick={quick})…", file=sys.stderr)
        build_llm_demo(root, quick=quick)


class _Timers:
    """The four timed calls, in-process and over HTTP, on one prompt and one set of params."""

    def __init__(self, runtime: Any, http: Any, endpoint: str, prompt: str,
                 params: dict[str, Any]) -> None:
        self.runtime, self.http, self.endpoint = runtime, http, endpoint
        self.prompt, self.params = prompt, params
        # What the server feeds the model for a new chat turn, built the same way.
        self.model_input = runtime.format_chat([{"role": "user", "content": prompt}])

    def inproc_generate(self) -> tuple[float, str]:
        started = time.perf_counter()
        text = self.runtime.generate([self.model_input], self.params)[0]
        return time.perf_counter() - started, str(text)

    def http_generate(self) -> tuple[float, str, float]:
        started = time.perf_counter()
        response = self.http.post(f"{self.endpoint}/generate", timeout=120,
                                  json={"prompts": [self.prompt], "params": self.params})
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        body = response.json()
        return elapsed, body["results"][0]["completion"], float(body["tokens_per_second"])

    def inproc_first_piece(self) -> float:
        started = time.perf_counter()
        pieces = self.runtime.stream(self.model_input, self.params, threading.Event())
        next(pieces)
        elapsed = time.perf_counter() - started
        pieces.close()  # stops generation at the next token
        return elapsed

    def http_first_chunk(self) -> float:
        started = time.perf_counter()
        with self.http.post(f"{self.endpoint}/generate_stream", stream=True, timeout=120,
                            json={"prompt": self.prompt, "params": self.params}) as response:
            response.raise_for_status()
            next(response.iter_content(chunk_size=None))
            elapsed = time.perf_counter() - started
            # Read to the end, so the next request finds an idle model and a reusable
            # connection.
            for _rest in response.iter_content(chunk_size=None):
                pass
        return elapsed


def measure_llm(root: Path, *, repeats: int, max_new_tokens: int = 64, threads: int = 1,
                quick: bool = False, prompt: str = PROMPT) -> dict[str, float | int | str]:
    """Measure the demo chat model in ``root`` (trained there first if missing).

    ``threads`` is torch's thread count on both sides (the server gets it through
    ``AgentsWorkbenchApp.torch_threads``); ``quick`` only matters when the model has to be
    trained. Returns a flat dict of named figures; times in milliseconds.
    """
    import requests
    import torch

    from benchmarks.servers import WorkbenchServer
    from server_extension.demos.llm import SFT_EXPERIMENT
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    root = Path(root).expanduser().resolve()
    _ensure_model(root, quick)
    experiment = ExperimentStore(root).get(SFT_EXPERIMENT)
    step = experiment.best_step()
    params = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "top_p": 1.0,
              "do_sample": False}
    torch.set_num_threads(threads)
    runtime: Any = load_runtime(experiment, experiment.checkpoint(step))

    samples: dict[str, list[float]] = {k: [] for k in (
        "inproc", "http", "server_tps", "inproc_ttft", "http_ttft")}
    expected = ""
    # The server gets a workspace of its own (its registry, sessions and logs) holding a copy
    # of the same checkpoint folder, so the benchmark leaves ``root`` as it found it.
    with tempfile.TemporaryDirectory(prefix="awb-bench-llm-") as tmp:
        served = Path(tmp)
        shutil.copytree(experiment.folder, served / "experiments" / SFT_EXPERIMENT)
        server = WorkbenchServer(served, served, batching="auto", torch_threads=threads,
                                 extra=["--AgentsWorkbenchApp.health_check_interval=0"])
        server.start()
        try:
            agent = server.deploy("bench-llm", SFT_EXPERIMENT, checkpoint=step)
            with requests.Session() as http:
                http.headers["Authorization"] = f"Bearer {agent['api_key']}"
                timers = _Timers(runtime, http, agent["endpoint"].rstrip("/"), prompt, params)
                for round_ in range(WARMUP + repeats):
                    # Alternate sides each round so drift in the machine's load hits both.
                    inproc_s, expected = timers.inproc_generate()
                    http_s, text, reported = timers.http_generate()
                    if text != expected:
                        raise AssertionError(f"greedy answers differ: {text!r} != {expected!r}")
                    inproc_ttft = timers.inproc_first_piece()
                    http_ttft = timers.http_first_chunk()
                    if round_ >= WARMUP:
                        for name, value in (("inproc", inproc_s), ("http", http_s),
                                            ("server_tps", reported),
                                            ("inproc_ttft", inproc_ttft),
                                            ("http_ttft", http_ttft)):
                            samples[name].append(value)
        finally:
            server.stop()
    tokens = runtime.count_tokens(expected)
    runtime.close()

    median = {name: statistics.median(values) for name, values in samples.items()}
    inproc_tps = tokens / median["inproc"]
    http_tps = tokens / median["http"]
    return {
        "llm_model": f"{SFT_EXPERIMENT}@{step}",
        "llm_repeats": repeats,
        "llm_torch_threads": threads,
        "llm_max_new_tokens": max_new_tokens,
        "llm_tokens_generated": tokens,
        "llm_inproc_generate_ms": round(median["inproc"] * 1000, 3),
        "llm_http_generate_ms": round(median["http"] * 1000, 3),
        "llm_inproc_tokens_per_s": round(inproc_tps, 1),
        "llm_http_tokens_per_s": round(http_tps, 1),
        "llm_http_server_reported_tokens_per_s": round(median["server_tps"], 1),
        "llm_http_vs_inproc_tokens_per_s": round(http_tps / inproc_tps, 3),
        "llm_inproc_first_piece_ms": round(median["inproc_ttft"] * 1000, 3),
        "llm_http_first_chunk_ms": round(median["http_ttft"] * 1000, 3),
        "llm_http_first_chunk_extra_ms": round(
            (median["http_ttft"] - median["inproc_ttft"]) * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures as JSON (and write them with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "workspace",
                        help="workspace holding tiny-chat-sft (trained there if missing)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--quick", action="store_true",
                        help="if the model must be trained, train the seconds-long quick one")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = measure_llm(args.root, repeats=args.repeats, max_new_tokens=args.max_new_tokens,
                          threads=args.threads, quick=args.quick)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
