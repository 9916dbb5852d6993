"""Constrained decoding's cost: the OpenAI chat route with and without a JSON schema, side by side.

The demo chat model (``tiny-chat-sft``, best step; trained into ``--root`` first if missing) is
served by a real ``jupyter server`` child process and called with the official ``openai``
client. Each round asks the same question twice more: plain (free text) and with
``response_format`` ``json_schema`` (strict; xgrammar masks every step), each once whole and
once streamed; the rounds alternate the order so drift in the machine's load hits both sides.
Both sides sample (temperature 1, seeded per round) with the same ``max_tokens``. Example::

    python -m benchmarks.structured_output --root ./workspace --repeats 20 --out figures.json

Figures (medians over ``repeats``): tokens/s (completion tokens over the wall time of the whole
request, JSON or SSE framing and the client's parsing included) and time to the first streamed
content token. Every constrained answer is also validated against its schema (``valid``).
Goal (issue 32): the constrained side within 1.3x of the plain one, in tokens/s and in time to
the first token.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.llm import _ensure_model
from benchmarks.openai_timing import timed_chat, timed_chat_stream

REPO = Path(__file__).resolve().parent.parent
WARMUP = 2
AGENT = "bench-json"
QUESTION = "What is the capital of France?"
# Bounded fields only: every answer ends inside the demo model's 128-token context, even with
# the quick model's tokenizer (about a token per character).
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["country", "capital", "continent", "coastal"],
    "properties": {
        "country": {"type": "string", "maxLength": 8},
        "capital": {"type": "string", "maxLength": 8},
        "continent": {"type": "string", "enum": ["Africa", "Asia", "Europe", "Oceania"]},
        "coastal": {"type": "boolean"}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "country", "schema": SCHEMA,
                                                  "strict": True}}


def _valid(answer: str) -> int:
    """1 if ``answer`` parses and validates against the schema, else 0."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(answer), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return 0
    return 1


def measure(root: Path, *, repeats: int, max_tokens: int = 96, threads: int = 1,
            quick: bool = False) -> dict[str, Any]:
    """Serve the demo chat model of ``root`` and time both sides; a flat dict of figures."""
    import openai

    from benchmarks.servers import WorkbenchServer
    from server_extension.demos.llm import SFT_EXPERIMENT
    from workbench_core.store import ExperimentStore

    root = Path(root).expanduser().resolve()
    _ensure_model(root, quick)
    experiment = ExperimentStore(root).get(SFT_EXPERIMENT)
    step = experiment.best_step()
    sides = ("plain", "schema")
    rate: dict[str, list[float]] = {s: [] for s in sides}
    stream_rate: dict[str, list[float]] = {s: [] for s in sides}
    ttft: dict[str, list[float]] = {s: [] for s in sides}
    tokens: dict[str, list[int]] = {s: [] for s in sides}
    valid = total = 0
    with tempfile.TemporaryDirectory(prefix="awb-bench-json-") as tmp:
        served = Path(tmp)
        shutil.copytree(experiment.folder, served / "experiments" / SFT_EXPERIMENT)
        server = WorkbenchServer(served, served, batching="auto", torch_threads=threads,
                                 extra=["--AgentsWorkbenchApp.health_check_interval=0"])
        server.start()
        try:
            agent = server.deploy(AGENT, SFT_EXPERIMENT, checkpoint=step)
            with openai.OpenAI(base_url=agent["endpoint"].rstrip("/") + "/v1",
                               api_key=agent["api_key"], max_retries=0, timeout=120) as client:
                for round_ in range(WARMUP + repeats):
                    base = {"model": AGENT, "temperature": 1.0, "seed": round_,
                            "max_tokens": max_tokens,
                            "messages": [{"role": "user", "content": QUESTION}]}
                    order = sides if round_ % 2 == 0 else sides[::-1]
                    for side in order:
                        kwargs = {**base, "response_format": FORMAT} if side == "schema" \
                            else base
                        seconds, count, text = timed_chat(client, **kwargs)
                        first, stream_s, stream_count, streamed = timed_chat_stream(
                            client, **kwargs)
                        if side == "schema":
                            total += 2
                            valid += _valid(text) + _valid(streamed)
                        if round_ >= WARMUP:
                            rate[side].append(count / seconds)
                            stream_rate[side].append(stream_count / stream_s)
                            ttft[side].append(first)
                            tokens[side].append(count)
        finally:
            server.stop()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    figures: dict[str, Any] = {"model": f"{SFT_EXPERIMENT}@{step}", "repeats": repeats,
                               "torch_threads": threads, "max_tokens": max_tokens}
    for side in sides:
        figures[f"{side}_tokens_per_s"] = round(med(rate[side]), 1)
        figures[f"{side}_stream_tokens_per_s"] = round(med(stream_rate[side]), 1)
        figures[f"{side}_first_token_ms"] = round(med(ttft[side]) * 1000, 2)
        figures[f"{side}_completion_tokens_median"] = med([float(t) for t in tokens[side]])
    figures["plain_over_schema_tokens_per_s"] = round(
        figures["plain_tokens_per_s"] / figures["schema_tokens_per_s"], 3)
    figures["plain_over_schema_stream_tokens_per_s"] = round(
        figures["plain_stream_tokens_per_s"] / figures["schema_stream_tokens_per_s"], 3)
    figures["schema_over_plain_first_token"] = round(
        figures["schema_first_token_ms"] / figures["plain_first_token_ms"], 3)
    figures["schema_answers_valid"] = f"{valid}/{total}"
    return figures


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures as JSON (and write them with ``--out``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "workspace",
                        help="workspace holding tiny-chat-sft (trained there if missing)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    parser.add_argument("--quick", action="store_true",
                        help="if the model must be trained, train the seconds-long quick one")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = measure(args.root, repeats=args.repeats, max_tokens=args.max_tokens,
                      threads=args.threads, quick=args.quick)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print("goal: constrained within 1.3x of plain (tokens/s and first token)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
