"""What one inference request does to a runtime, wherever the runtime lives.

Worker processes (``child.py``) and in-thread serving (``isolation="thread"``, the Ray
backend) both call these, so a request is decoded, checked, answered and encoded the same way
in both. Everything here runs off the Tornado event loop; arguments and results are JSON
values or bytes, because in a worker they crossed a socket.

Example::

    status, body, rows = relay(runtime, "get_action", request_body, Limits())
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from server_extension.serving.runtimes.base import RequestError, Runtime
from server_extension.serving.serde import batch_size, decode_tree, encode_tree


@dataclass(frozen=True)
class Limits:
    """What one call may cost, checked after decoding and before the model runs."""

    max_rows: int = 65536
    max_array_bytes: int = 256 * 1024 * 1024

    def check(self, tree: Any, what: str) -> None:
        """:class:`RequestError` naming the limit and its setting when ``tree`` exceeds one."""
        rows = _rows(tree)
        if rows > self.max_rows:
            raise RequestError(
                f"{what} has {rows} rows; this server takes at most {self.max_rows} per call "
                "(AgentsWorkbenchApp.max_batch_rows). Split the batch into smaller calls.")
        nbytes = _nbytes(tree)
        if nbytes > self.max_array_bytes:
            raise RequestError(
                f"{what} decodes to {nbytes} bytes; this server takes at most "
                f"{self.max_array_bytes} per call (AgentsWorkbenchApp.max_array_mb). "
                "Send a smaller batch.")


def _rows(tree: Any) -> int:
    # serde.batch_size already reads an empty container as 0 rows; None (field absent) too.
    return batch_size(tree) if tree is not None else 0


def _nbytes(tree: Any) -> int:
    if tree is None:
        return 0
    if isinstance(tree, dict):
        return sum(_nbytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_nbytes(v) for v in tree)
    return int(getattr(tree, "nbytes", 0))


def _body(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw or b"")
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"Request body is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict):
        raise RequestError("Request body must be a JSON object.")
    return data


def _decoded(body: dict[str, Any], field: str, limits: Limits, total: list[int]) -> Any:
    tree = decode_tree(body.get(field), field)
    limits.check(tree, field)
    total[0] += _nbytes(tree)
    if total[0] > limits.max_array_bytes:
        raise RequestError(
            f"The request's arrays decode to {total[0]} bytes; this server takes at most "
            f"{limits.max_array_bytes} per call (AgentsWorkbenchApp.max_array_mb).")
    return tree


def get_action(runtime: Runtime, raw: bytes, limits: Limits) -> tuple[dict[str, Any], int]:
    """The ``get_action`` answer for a request body, and the rows it held."""
    body = _body(raw)
    if body.get("obs") is None:
        raise RequestError("obs is required: base64 .npy observations with a batch axis.")
    total = [0]
    obs = _decoded(body, "obs", limits, total)
    action, hidden = runtime.get_action(
        obs,
        hidden_state=_decoded(body, "hidden_state", limits, total),
        action_mask=_decoded(body, "action_mask", limits, total),
        env_defined_actions=_decoded(body, "env_defined_actions", limits, total),
    )
    answer: dict[str, Any] = {"action": encode_tree(action), "success": True}
    if runtime.kind.recurrent:
        answer["hidden_state"] = encode_tree(hidden)
    return answer, _rows(obs)


def predict(runtime: Runtime, raw: bytes, limits: Limits) -> tuple[dict[str, Any], int]:
    """The ``predict`` answer for a request body, and the rows it held."""
    body = _body(raw)
    if body.get("inputs") is None:
        raise RequestError("inputs is required: a base64 .npy array with a batch axis.")
    inputs = _decoded(body, "inputs", limits, [0])
    started = time.perf_counter()
    results = runtime.predict(inputs)
    elapsed = (time.perf_counter() - started) * 1000
    rows = _rows(inputs)
    return ({"results": encode_tree(results), "batch_size": rows,
             "inference_time_ms": round(elapsed, 3), "success": True}, rows)


ROUTES: dict[str, Callable[[Runtime, bytes, Limits], tuple[dict[str, Any], int]]] = {
    "get_action": get_action,
    "predict": predict,
}


def relay(runtime: Runtime, route: str, raw: bytes, limits: Limits) -> tuple[int, bytes, int]:
    """(HTTP status, JSON answer, rows) for ``route``; caller mistakes are 400s here.

    Rows are counted from the decoded arrays, never from a client's own ``batch_size``.
    """
    try:
        answer, rows = ROUTES[route](runtime, raw, limits)
    except RequestError as exc:
        return 400, json.dumps({"success": False, "error": str(exc)}).encode(), 0
    except MemoryError:
        return 413, json.dumps({"success": False, "error": (
            "The call needed more memory than this agent's worker may use "
            "(AgentsWorkbenchApp.worker_memory_mb); send a smaller batch.")}).encode(), 0
    return 200, json.dumps(answer).encode(), rows


# -- LLM operations, reached by name through Deployer.invoke / Deployer.stream -------------

def model_input(runtime: Runtime, turns: list[dict[str, str]]) -> str:
    """The text the model sees for a conversation (its chat template, else the last turn).

    A session outgrows a small context after a few turns. Its oldest turns are then left out
    of the model's input (the session keeps them all), so that the conversation goes on,
    the way chat front ends do. The newest turn is never left out: one too long alone gets
    the usual 400.
    """
    formatter = getattr(runtime, "format_chat", None)
    if not formatter:
        return turns[-1]["content"]
    text = str(formatter(turns))
    context = getattr(runtime, "max_context", None)
    counter = getattr(runtime, "count_tokens", None)
    if not isinstance(context, int) or counter is None or len(turns) < 2:
        return text
    # Room for a reply of a useful length: a prompt that leaves less is trimmed down to half
    # the context, which leaves the reply the other half.
    if int(counter(text)) <= context - max(1, context // 4):
        return text
    kept = list(turns)
    while len(kept) > 1:
        kept = kept[1:]
        while len(kept) > 1 and kept[0].get("role") != "user":
            kept = kept[1:]  # a conversation the model sees starts with a user turn
        text = str(formatter(kept))
        if int(counter(text)) <= context // 2:
            break
    return text


def count_text_tokens(runtime: Runtime, text: str) -> int:
    """Tokens of ``text`` by the model's tokenizer (0 for models without one)."""
    counter = getattr(runtime, "count_tokens", None)
    return int(counter(text)) if counter else 0


def generate_turns(runtime: Runtime, conversations: list[list[dict[str, str]]],
                   params: dict[str, Any]) -> dict[str, Any]:
    """Complete each conversation's next assistant turn in one ``generate`` call."""
    inputs = [model_input(runtime, turns) for turns in conversations]
    started = time.perf_counter()
    completions = runtime.generate(inputs, params)
    elapsed = time.perf_counter() - started
    tokens = sum(count_text_tokens(runtime, c) for c in completions)
    return {"completions": list(completions), "tokens": tokens, "elapsed": elapsed}


def stream_input(runtime: Runtime, turns: list[dict[str, str]]) -> str:
    """The model input for a streamed turn, checked (400 for a prompt that cannot fit)."""
    text = model_input(runtime, turns)
    checker = getattr(runtime, "check_prompt", None)
    if checker is not None:
        checker(text)
    return text


def stream(runtime: Runtime, text: str, params: dict[str, Any], cancelled: Any) -> Iterator[str]:
    """The runtime's stream of pieces for ``text``."""
    return runtime.stream(text, params, cancelled)


def probe(runtime: Runtime) -> None:
    """The runtime's health probe."""
    runtime.probe()


# Operations a handler may name in Deployer.invoke/stream besides the runtime's own public
# methods; each takes the runtime first.
OPS: dict[str, Callable[..., Any]] = {
    "model_input": model_input,
    "count_text_tokens": count_text_tokens,
    "generate_turns": generate_turns,
    "stream_input": stream_input,
    "stream": stream,
    "probe": probe,
}


def resolve(runtime: Runtime, name: str) -> Callable[..., Any]:
    """The callable ``name`` names: an operation above (bound to ``runtime``) or a public
    method of the runtime. ``AttributeError`` for anything else."""
    if name in OPS:
        op = OPS[name]
        return lambda *args: op(runtime, *args)
    if name.startswith("_"):
        raise AttributeError(f"{name!r} is not a public runtime method")
    method = getattr(runtime, name)
    if not callable(method):
        raise AttributeError(f"{name!r} is not a runtime method")
    return method


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and tuples turned into JSON values."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value
