"""The OpenAI API of an LLM agent against in-process ``generate``: tokens/s, first token, answers.

The demo chat model (``tiny-chat-sft``, best step; trained into ``--root`` first if missing),
one question formatted by the model's chat template, greedy settings. In-process, the runtime
from ``server_extension.serving.runtimes.load_runtime`` is timed directly; over HTTP, a real
``jupyter server`` child process serves a copy of the checkpoint and the official ``openai`` client
calls ``<endpoint>/v1/chat/completions`` (one client, kept-alive connection), streamed and
not. Rounds alternate between the sides so drift in the machine's load hits both. Example::

    python -m benchmarks.openai_api --root ./workspace --repeats 20 --out figures.json

Figures (medians over ``repeats``): tokens/s (completion tokens over wall time around the
call: for HTTP the request, JSON or SSE framing and the client's parsing included; a stream is
timed to its last chunk) and time to the first streamed token (``runtime.stream``'s first
piece in-process, the first chunk with content over HTTP). Both sides produce the same text,
checked. Then the in-domain check: every ``--questions`` question of the training split is
asked at temperature 0, streamed and not, and compared with its data-set answer.

Targets (issue 18): HTTP >= 0.9x in-process tokens/s, streamed and not; first streamed token
within 50 ms of in-process. Not part of ``benchmarks.run``: it trains the full chat model when
the workspace has none (minutes).
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

from benchmarks.llm import _ensure_model
from benchmarks.openai_timing import timed_chat_stream

REPO = Path(__file__).resolve().parent.parent
# The demo model's longest greedy reply (35 tokens): per-request overhead weighs least.
QUESTION = "hello"
WARMUP = 2
AGENT = "bench-openai"


class _Sides:
    """The timed calls, in-process and through the OpenAI client, on one question."""

    def __init__(self, runtime: Any, client: Any, question: str, max_tokens: int) -> None:
        self.runtime, self.client = runtime, client
        self.messages = [{"role": "user", "content": question}]
        self.prompt = runtime.chat_prompt(self.messages)  # what the server feeds the model
        self.params = {"max_new_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0,
                       "do_sample": False}
        self.max_tokens = max_tokens

    def inproc_generate(self) -> tuple[float, str]:
        started = time.perf_counter()
        text = self.runtime.generate([self.prompt], self.params)[0]
        return time.perf_counter() - started, str(text)

    def inproc_first_piece(self) -> float:
        started = time.perf_counter()
        pieces = self.runtime.stream(self.prompt, self.params, threading.Event())
        next(pieces)
        elapsed = time.perf_counter() - started
        pieces.close()  # stops generation at the next token
        return elapsed

    def http_chat(self) -> tuple[float, str, int]:
        started = time.perf_counter()
        answer = self.client.chat.completions.create(
            model=AGENT, messages=self.messages, temperature=0, max_tokens=self.max_tokens)
        return (time.perf_counter() - started, answer.choices[0].message.content,
                answer.usage.completion_tokens)

    def http_stream(self) -> tuple[float, float, str]:
        """Seconds to the first content chunk, to the last chunk, and the text."""
        first, total, _, text = timed_chat_stream(
            self.client, model=AGENT, messages=self.messages, temperature=0,
            max_tokens=self.max_tokens)
        return first, total, text


def _in_domain(client: Any, questions: int) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers to training questions, streamed and not."""
    from server_extension.demos.data import load_chat_rows

    rows = load_chat_rows("train")[:questions]
    right = {"plain": 0, "streamed": 0}
    misses: list[str] = []
    for row in rows:
        messages = [{"role": "user", "content": row["question"]}]
        plain = client.chat.completions.create(model=AGENT, messages=messages, temperature=0,
                                               max_tokens=48).choices[0].message.content
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model=AGENT, messages=messages, temperature=0, max_tokens=48, stream=True)
            if c.choices)
        for side, text in (("plain", plain), ("streamed", streamed)):
            if text.strip() == row["answer"]:
                right[side] += 1
            elif len(misses) < 3:
                misses.append(f"{row['question']!r} -> {text!r} (want {row['answer']!r})")
    return {"openai_in_domain_questions": len(rows),
            "openai_in_domain_accuracy": round(right["plain"] / len(rows), 3),
            "openai_in_domain_accuracy_streamed": round(right["streamed"] / len(rows), 3),
            "openai_in_domain_misses": misses}


def measure_openai(root: Path, *, repeats: int, max_tokens: int = 64, threads: int = 1,
                   quick: bool = False, questions: int = 40) -> dict[str, Any]:
    """Measure the demo chat model in ``root`` (trained there first if missing).

    Returns a flat dict of named figures; times in milliseconds.
    """
    import openai
    import torch

    from benchmarks.servers import WorkbenchServer
    from server_extension.demos.llm import SFT_EXPERIMENT
    from server_extension.serving.runtimes import load_runtime
    from workbench_core.store import ExperimentStore

    root = Path(root).expanduser().resolve()
    _ensure_model(root, quick)
    experiment = ExperimentStore(root).get(SFT_EXPERIMENT)
    step = experiment.best_step()
    torch.set_num_threads(threads)
    runtime: Any = load_runtime(experiment, experiment.checkpoint(step))
    names = ("inproc", "http", "http_stream", "inproc_ttft", "http_ttft")
    samples: dict[str, list[float]] = {k: [] for k in names}
    tokens = 0
    with tempfile.TemporaryDirectory(prefix="awb-bench-openai-") as tmp:
        served = Path(tmp)
        shutil.copytree(experiment.folder, served / "experiments" / SFT_EXPERIMENT)
        server = WorkbenchServer(served, served, batching="auto", torch_threads=threads,
                                 extra=["--AgentsWorkbenchApp.health_check_interval=0"])
        server.start()
        try:
            agent = server.deploy(AGENT, SFT_EXPERIMENT, checkpoint=step)
            with openai.OpenAI(base_url=agent["endpoint"].rstrip("/") + "/v1",
                               api_key=agent["api_key"], max_retries=0, timeout=120) as client:
                sides = _Sides(runtime, client, QUESTION, max_tokens)
                for round_ in range(WARMUP + repeats):
                    inproc_s, expected = sides.inproc_generate()
                    http_s, text, tokens = sides.http_chat()
                    inproc_ttft = sides.inproc_first_piece()
                    http_ttft, stream_s, streamed = sides.http_stream()
                    if not text == streamed == expected:
                        raise AssertionError(
                            f"greedy answers differ: {text!r}, {streamed!r}, {expected!r}")
                    if round_ >= WARMUP:
                        for name, value in zip(names, (inproc_s, http_s, stream_s,
                                                       inproc_ttft, http_ttft), strict=True):
                            samples[name].append(value)
                accuracy = _in_domain(client, questions)
        finally:
            server.stop()
    runtime.close()

    median = {name: statistics.median(values) for name, values in samples.items()}
    inproc_tps = tokens / median["inproc"]
    return {
        "openai_model": f"{SFT_EXPERIMENT}@{step}",
        "openai_repeats": repeats,
        "openai_torch_threads": threads,
        "openai_max_tokens": max_tokens,
        "openai_completion_tokens": tokens,
        "openai_inproc_generate_ms": round(median["inproc"] * 1000, 3),
        "openai_chat_ms": round(median["http"] * 1000, 3),
        "openai_chat_stream_ms": round(median["http_stream"] * 1000, 3),
        "openai_inproc_tokens_per_s": round(inproc_tps, 1),
        "openai_chat_tokens_per_s": round(tokens / median["http"], 1),
        "openai_chat_stream_tokens_per_s": round(tokens / median["http_stream"], 1),
        "openai_chat_vs_inproc_tokens_per_s": round(median["inproc"] / median["http"], 3),
        "openai_chat_stream_vs_inproc_tokens_per_s": round(
            median["inproc"] / median["http_stream"], 3),
        "openai_inproc_first_piece_ms": round(median["inproc_ttft"] * 1000, 3),
        "openai_chat_first_token_ms": round(median["http_ttft"] * 1000, 3),
        "openai_chat_first_token_extra_ms": round(
            (median["http_ttft"] - median["inproc_ttft"]) * 1000, 3),
        **accuracy,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures as JSON (and write them with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "workspace",
                        help="workspace holding tiny-chat-sft (trained there if missing)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--questions", type=int, default=40,
                        help="training questions asked for the in-domain check")
    parser.add_argument("--quick", action="store_true",
                        help="if the model must be trained, train the seconds-long quick one")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = measure_openai(args.root, repeats=args.repeats, max_tokens=args.max_tokens,
                             threads=args.threads, quick=args.quick, questions=args.questions)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print("targets: tokens/s >= 0.9x in-process (streamed and not); first token <= +50 ms",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
