"""The OpenAI API's request and response shapes, as the LLM agents' ``/v1`` routes serve them.

Pure functions of JSON values, no Tornado and no model: :func:`parse_chat` and
:func:`parse_completion` check a request body and turn it into sampling params for the LLM
runtime (``max_new_tokens``, ``temperature``, ``top_p``, ``do_sample``, ``stop``, ``seed``),
raising :class:`OpenAIError` (a 4xx in OpenAI's ``{"error": {...}}`` shape) for anything
unknown, unsupported or malformed. The builders at the bottom shape the answers. Example::

    request = parse_chat({"model": "chat", "messages": [{"role": "user", "content": "Hi"}]},
                         model_id="chat")
    request.params        # {"max_new_tokens": 4096, "temperature": 1.0, ...}

The model id of an agent is its name: one agent, one model.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

MAX_TOKENS = 4096  # the Arena contract's max_new_tokens limit; the context usually ends sooner
MAX_TEMPERATURE = 2.0  # OpenAI's range
MAX_N = 16
MAX_STOPS = 4  # OpenAI's limit
MAX_PROMPTS = 64  # the Arena generate limit
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # what OpenAI's legacy completions default to
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}

_COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
           "stream_options", "user"}
_CHAT = _COMMON | {"messages", "max_completion_tokens"}
_COMPLETION = _COMMON | {"prompt"}
# Parameters of the OpenAI API this server does not implement, with the values that ask for
# nothing beyond what it does (frameworks often send them explicitly); anything else is a 400.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,),
    "top_logprobs": (0,), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
    "parallel_tool_calls": (), "response_format": ({"type": "text"},), "store": (False,),
    "metadata": ({},), "service_tier": ("auto", "default"), "echo": (False,), "suffix": ("",),
    "best_of": (1,), "modalities": (["text"],), "reasoning_effort": (), "prediction": (),
    "audio": (), "functions": ([],), "function_call": ("none",), "web_search_options": (),
}


class OpenAIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        """The error body."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def _bad(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


@dataclass
class Request:
    """A checked chat or completions request."""

    model: str
    params: dict[str, Any]  # sampling params for the runtime
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)  # chat only
    prompts: list[str] = field(default_factory=list)  # completions only


def parse_chat(body: dict[str, Any], *, model_id: str) -> Request:
    """A ``POST /v1/chat/completions`` body checked; :class:`OpenAIError` if it is not usable."""
    _check_names(body, _CHAT)
    request = _common(body, model_id, default_max=MAX_TOKENS,
                      max_names=("max_completion_tokens", "max_tokens"))
    request.messages = _messages(body.get("messages"))
    return request


def parse_completion(body: dict[str, Any], *, model_id: str) -> Request:
    """A ``POST /v1/completions`` body checked; :class:`OpenAIError` if it is not usable."""
    _check_names(body, _COMPLETION)
    request = _common(body, model_id, default_max=COMPLETIONS_DEFAULT_MAX_TOKENS,
                      max_names=("max_tokens",))
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if (not isinstance(prompts, list) or not prompts
            or not all(isinstance(p, str) for p in prompts)):
        raise _bad("prompt", "prompt must be a string or a non-empty list of strings (token "
                   "id prompts are not supported).")
    if len(prompts) * request.n > MAX_PROMPTS:
        raise _bad("prompt", f"Ask for at most {MAX_PROMPTS} completions per request (prompts "
                   f"times n); this one asks for {len(prompts) * request.n}.")
    if any(not p.strip() for p in prompts):
        raise _bad("prompt", "prompt is empty; send some text.")
    if request.stream and len(prompts) > 1:
        raise _bad("prompt", "Streaming serves one prompt per request; send one, or set "
                   "stream to false.", "unsupported_value")
    request.prompts = prompts
    return request


def _check_names(body: dict[str, Any], allowed: set[str]) -> None:
    for name, value in body.items():
        if name in allowed:
            continue
        if name in _NEUTRAL:
            if value is None or value in _NEUTRAL[name]:
                continue
            raise OpenAIError(
                400, f"{name}={value!r} is not supported by this server; it serves text "
                f"completions with max_tokens, temperature, top_p, stop, seed, n and stream. "
                f"Leave {name} out.", param=name, code="unsupported_parameter")
        raise OpenAIError(
            400, f"Unrecognized request argument supplied: {name}", param=name,
            code="unknown_parameter")


def _common(body: dict[str, Any], model_id: str, *, default_max: int,
            max_names: tuple[str, ...]) -> Request:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", f"model is required: this endpoint serves the model {model_id!r}.",
                   "missing_required_parameter")
    if model != model_id:
        raise OpenAIError(
            404, f"The model {model!r} does not exist here; this endpoint serves one model, "
            f"{model_id!r} (GET /v1/models lists it).", param="model", code="model_not_found")
    given = {name: body[name] for name in max_names if body.get(name) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise _bad(max_names[0], f"{' and '.join(given)} disagree; send one of them.")
    max_tokens = next(iter(given.values()), default_max)
    name = next(iter(given), max_names[0])
    if (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
            or not 1 <= max_tokens <= MAX_TOKENS):
        raise _bad(name, f"{name} must be a whole number from 1 to {MAX_TOKENS}, "
                   f"got {max_tokens!r}.")
    temperature = _number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise _bad("top_p", "top_p must be greater than 0 and at most 1.")
    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", f"stream must be true or false, got {stream!r}.")
    n = body.get("n")
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise _bad("n", f"n must be a whole number from 1 to {MAX_N}, got {n!r}.")
    if stream and n > 1:
        raise _bad("n", "Streaming serves one choice per request (n=1); set stream to false "
                   "for several choices.", "unsupported_value")
    params: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": temperature,
                              "top_p": top_p, "do_sample": temperature > 0,
                              "stop": _stops(body.get("stop"))}
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise _bad("seed", f"seed must be a non-negative whole number, got {seed!r}.")
        params["seed"] = seed
    return Request(model=model, params=params, n=n, stream=stream,
                   include_usage=_include_usage(body.get("stream_options"), stream))


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not low <= value <= high):
        raise _bad(name, f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    return float(value)


def _stops(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and s for s in stops)):
        raise _bad("stop", f"stop must be a non-empty string or a list of at most {MAX_STOPS} "
                   "non-empty strings.")
    return stops


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise _bad("stream_options", "stream_options is only allowed when stream is true.")
    if not isinstance(options, dict):
        raise _bad("stream_options", "stream_options must be an object.")
    unknown = sorted(set(options) - {"include_usage", "include_obfuscation"})
    if unknown:
        raise OpenAIError(400, f"Unrecognized stream_options: {', '.join(unknown)}",
                          param="stream_options", code="unknown_parameter")
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise _bad("stream_options", "stream_options.include_usage must be true or false.")
    return usage


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise _bad("messages", "messages must be a non-empty list of {role, content} objects.",
                   "missing_required_parameter" if raw is None else "invalid_value")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, f"{where} must be an object with role and content.")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"{where}.role is {role!r}; this server takes "
                       "system, developer, user and assistant messages (no tools).")
        extra = sorted(set(message) - {"role", "content", "name"})
        extra = [k for k in extra if message[k] not in (None, [], "")]
        if extra:
            raise _bad(f"{where}.{extra[0]}", f"{where}.{extra[0]} is not supported: this "
                       "server takes text messages only.", "unsupported_parameter")
        messages.append({"role": ROLES[role], "content": _text(message.get("content"), where)})
    return messages


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise _bad(f"{where}.content[{index}]", f"{where}.content[{index}] must be a "
                           "text part ({\"type\": \"text\", \"text\": ...}); this model reads "
                           "text only.")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where}.content", f"{where}.content must be a string or a list of text parts.")


# -- answers ---------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """An id for one answer (``chatcmpl-...``, ``cmpl-...``)."""
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_object(model_id: str, created: float) -> dict[str, Any]:
    """One entry of ``GET /v1/models``."""
    return {"id": model_id, "object": "model", "created": int(created),
            "owned_by": "agents-workbench"}


def chat_answer(model_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` from the runtime's ``complete`` result (n choices, one prompt)."""
    choices = result["choices"]
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
        "model": model_id, "system_fingerprint": None,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"],
                                             "refusal": None},
                     "logprobs": None, "finish_reason": c["finish_reason"]}
                    for i, c in enumerate(choices)],
        "usage": usage(result["prompt_tokens"][0] if result["prompt_tokens"] else 0,
                       sum(c["completion_tokens"] for c in choices)),
    }


def completion_answer(model_id: str, result: dict[str, Any], n: int) -> dict[str, Any]:
    """A ``text_completion`` from ``complete`` over each prompt repeated ``n`` times."""
    choices = result["choices"]
    prompt_tokens = sum(result["prompt_tokens"][::n])  # each prompt counted once, as OpenAI does
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
        "model": model_id, "system_fingerprint": None,
        "choices": [{"index": i, "text": c["text"], "logprobs": None,
                     "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, sum(c["completion_tokens"] for c in choices)),
    }


def chat_chunk(answer_id: str, created: int, model_id: str, delta: dict[str, Any],
               finish_reason: str | None = None, *,
               with_usage: bool = False) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream (``usage`` null when usage is asked for)."""
    chunk: dict[str, Any] = {
        "id": answer_id, "object": "chat.completion.chunk", "created": created,
        "model": model_id, "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def completion_chunk(answer_id: str, created: int, model_id: str, text: str,
                     finish_reason: str | None = None, *,
                     with_usage: bool = False) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    chunk: dict[str, Any] = {
        "id": answer_id, "object": "text_completion", "created": created, "model": model_id,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None,
                     "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk
