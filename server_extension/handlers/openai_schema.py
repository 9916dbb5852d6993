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

import json
import math
import re
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
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
         "tool": "tool"}
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"  # how models write a call

MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's legacy completions limit
SEED_RANGE = (-2**63, 2**63)  # a signed 64-bit integer, as OpenAI's spec and vLLM take

_COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream",
           "stream_options", "user", "logit_bias", "logprobs"}
_CHAT = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                   "tools", "tool_choice", "parallel_tool_calls"}
_COMPLETION = _COMMON | {"prompt", "echo", "suffix"}
# Parameters of the OpenAI API this server does not implement, with the values that ask for
# nothing beyond what it does (frameworks often send them explicitly); anything else is a 400.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "store": (False,),
    "metadata": ({},), "service_tier": ("auto", "default"), "best_of": (1,),
    "modalities": (["text"],), "reasoning_effort": (), "prediction": (),
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
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat only
    prompts: list[Any] = field(default_factory=list)  # completions only: text or token ids
    logprobs: bool = False  # answer with logprobs (params["logprobs"] is the top count)
    tools: list[dict[str, Any]] = field(default_factory=list)  # chat only
    # "none" (no calls), "auto" (the model decides, read from its reply), or "forced": the
    # reply is one call, constrained to the tools' schemas (tool_choice required or named).
    tool_mode: str = "none"
    suffix: str | None = None  # completions only


def parse_chat(body: dict[str, Any], *, model_id: str) -> Request:
    """A ``POST /v1/chat/completions`` body checked; :class:`OpenAIError` if it is not usable."""
    _check_names(body, _CHAT)
    request = _common(body, model_id, default_max=MAX_TOKENS,
                      max_names=("max_completion_tokens", "max_tokens"))
    request.messages = _messages(body.get("messages"))
    logprobs = body.get("logprobs")
    top = body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise _bad("logprobs", f"logprobs must be true or false, got {logprobs!r}.")
    if top is not None:
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise _bad("top_logprobs", f"top_logprobs must be a whole number from 0 to "
                       f"{MAX_TOP_LOGPROBS}, got {top!r}.")
        if not logprobs:
            raise _bad("top_logprobs", "top_logprobs needs logprobs set to true.")
    if logprobs:
        request.logprobs = True
        request.params["logprobs"] = top or 0
    grammar = _response_format(body.get("response_format"))
    request.tools = _tools(body.get("tools"))
    request.tool_mode, forced = _tool_choice(body.get("tool_choice"), request.tools)
    if forced is not None:
        if grammar is not None:
            raise _bad("response_format", "A forced tool call (tool_choice required or a named "
                       "function) is already JSON; leave response_format out.")
        grammar = forced
    if grammar is not None:
        request.params["grammar"] = grammar
    return request


def parse_completion(body: dict[str, Any], *, model_id: str) -> Request:
    """A ``POST /v1/completions`` body checked; :class:`OpenAIError` if it is not usable."""
    _check_names(body, _COMPLETION)
    request = _common(body, model_id, default_max=COMPLETIONS_DEFAULT_MAX_TOKENS,
                      max_names=("max_tokens",))
    prompts = _prompts(body.get("prompt"))
    if len(prompts) * request.n > MAX_PROMPTS:
        raise _bad("prompt", f"Ask for at most {MAX_PROMPTS} completions per request (prompts "
                   f"times n); this one asks for {len(prompts) * request.n}.")
    request.prompts = prompts
    logprobs = body.get("logprobs")
    if logprobs is not None and logprobs is not False:
        if (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS):
            raise _bad("logprobs", f"logprobs must be a whole number from 0 to "
                       f"{MAX_COMPLETION_LOGPROBS} (how many alternatives per token), "
                       f"got {logprobs!r}.")
        request.logprobs = True
        request.params["logprobs"] = logprobs
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _bad("echo", f"echo must be true or false, got {echo!r}.")
    if echo:
        if request.logprobs:
            raise _bad("echo", "echo with logprobs would need the prompt's logprobs, which "
                       "this server does not compute; drop one of them.", "unsupported_value")
        request.params["echo"] = True
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _bad("suffix", f"suffix must be a string, got {suffix!r}.")
    if suffix:
        if not all(isinstance(p, str) for p in prompts):
            raise _bad("suffix", "suffix needs text prompts, not token ids.")
        request.suffix = suffix
    return request


def _prompts(prompt: Any) -> list[Any]:
    """Text, a list of texts, token ids, or a list of token-id lists, as a list of prompts."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(p, str) or (isinstance(p, list) and p and all(_is_id(t) for t in p))
            for p in prompt):
        prompts = list(prompt)
    else:
        raise _bad("prompt", "prompt must be a string, a list of strings, a list of token ids "
                   "or a list of token-id lists (none of them empty).")
    if any(isinstance(p, str) and not p.strip() for p in prompts):
        raise _bad("prompt", "prompt is empty; send some text.")
    return prompts


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _response_format(value: Any) -> Any:
    """The grammar ``response_format`` asks for: None (text), ``"json"``, or a JSON schema."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in ("text", "json_object",
                                                                 "json_schema"):
        raise _bad("response_format", "response_format must be {\"type\": \"text\"}, "
                   "{\"type\": \"json_object\"} or {\"type\": \"json_schema\", "
                   "\"json_schema\": {\"name\": ..., \"schema\": {...}}}.")
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return "json"
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise _bad("response_format", "response_format.json_schema must be an object with a "
                   "name and a schema.")
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise _bad("response_format", "response_format.json_schema.schema must be a JSON "
                   "schema object.")
    return schema


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("tools", "tools must be a list of {\"type\": \"function\", \"function\": "
                   "{name, description, parameters}} objects.")
    tools = []
    for index, tool in enumerate(value):
        where = f"tools[{index}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not function["name"]):
            raise _bad(where, f"{where} must be {{\"type\": \"function\", \"function\": "
                       "{\"name\": ..., \"parameters\": {...}}} (function tools only).")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise _bad(where, f"{where}.function.parameters must be a JSON schema object.")
        tools.append({"type": "function", "function": {
            "name": function["name"], "description": function.get("description") or "",
            "parameters": parameters}})
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> tuple[str, Any]:
    """The tool mode and, when a call is forced, the grammar its reply must follow."""
    if value is None:
        value = "auto" if tools else "none"
    if value == "none":
        return "none", None
    if not tools:
        raise _bad("tool_choice", f"tool_choice {value!r} needs tools; send tools or leave "
                   "tool_choice out.")
    if value == "auto":
        return "auto", None
    if value == "required":
        chosen = tools
    elif (isinstance(value, dict) and value.get("type") == "function"
          and isinstance(value.get("function"), dict)):
        name = value["function"].get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise _bad("tool_choice", f"tool_choice names {name!r}, which is not among tools.")
    else:
        raise _bad("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or "
                   "{\"type\": \"function\", \"function\": {\"name\": ...}}.")
    calls = [{"type": "object", "properties": {
        "name": {"const": t["function"]["name"]}, "arguments": t["function"]["parameters"]},
        "required": ["name", "arguments"], "additionalProperties": False} for t in chosen]
    return "forced", calls[0] if len(calls) == 1 else {"anyOf": calls}


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
    params: dict[str, Any] = {"max_new_tokens": max_tokens, "temperature": temperature,
                              "top_p": top_p, "do_sample": temperature > 0,
                              "stop": _stops(body.get("stop"))}
    seed = body.get("seed")
    if seed is not None:
        low, high = SEED_RANGE
        if isinstance(seed, bool) or not isinstance(seed, int) or not low <= seed < high:
            raise _bad("seed", f"seed must be a whole number from {low} to {high - 1}, "
                       f"got {seed!r}.")
        params["seed"] = seed
    bias = _logit_bias(body.get("logit_bias"))
    if bias:
        params["logit_bias"] = bias
    return Request(model=model, params=params, n=n, stream=stream,
                   include_usage=_include_usage(body.get("stream_options"), stream))


def _logit_bias(value: Any) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise _bad("logit_bias", "logit_bias must be an object mapping token ids to biases.")
    pairs: list[list[float]] = []
    for key, bias in value.items():
        if not str(key).isdigit():
            raise _bad("logit_bias", f"logit_bias key {key!r} is not a token id.")
        if (isinstance(bias, bool) or not isinstance(bias, (int, float))
                or not math.isfinite(bias) or not -100 <= bias <= 100):
            raise _bad("logit_bias", f"logit_bias[{key}] must be a number from -100 to 100, "
                       f"got {bias!r}.")
        pairs.append([int(key), float(bias)])
    return pairs


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


def _messages(raw: Any) -> list[dict[str, Any]]:
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
                       "system, developer, user, assistant and tool messages.")
        allowed = {"role", "content", "name"} | (
            {"tool_calls", "refusal"} if role == "assistant" else
            {"tool_call_id"} if role == "tool" else set())
        extra = sorted(set(message) - allowed)
        extra = [k for k in extra if message[k] not in (None, [], "")]
        if extra:
            raise _bad(f"{where}.{extra[0]}", f"{where}.{extra[0]} is not supported: this "
                       "server takes text messages, assistant tool_calls and tool results.",
                       "unsupported_parameter")
        calls = message.get("tool_calls") if role == "assistant" else None
        content = message.get("content")
        if content is None and (calls or role == "assistant"):
            content = ""
        item: dict[str, Any] = {"role": ROLES[role], "content": _text(content, where)}
        if calls:
            item["tool_calls"] = _history_calls(calls, where)
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise _bad(f"{where}.tool_call_id", f"{where} is a tool result and needs the "
                           "tool_call_id of the call it answers.")
            item["tool_call_id"] = message["tool_call_id"]
        messages.append(item)
    return messages


def _history_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls``, with arguments parsed (what templates expect)."""
    if not isinstance(calls, list):
        raise _bad(f"{where}.tool_calls", f"{where}.tool_calls must be a list.")
    parsed = []
    for index, call in enumerate(calls):
        at = f"{where}.tool_calls[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(at, f"{at} must be {{\"id\", \"type\": \"function\", \"function\": "
                       "{\"name\", \"arguments\"}}.")
        arguments = function.get("arguments") or "{}"
        try:
            value = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError as exc:
            raise _bad(at, f"{at}.function.arguments is not valid JSON: {exc}.") from exc
        parsed.append({"id": call.get("id") or "", "type": "function",
                       "function": {"name": function["name"], "arguments": value}})
    return parsed


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


def read_tool_calls(text: str, request: Request) -> tuple[str | None, list[dict[str, Any]]]:
    """A reply's content and the tool calls in it (OpenAI's shape, arguments as JSON text).

    Forced calls are the whole reply (JSON {"name", "arguments"}, grammar-constrained); with
    ``auto`` the model writes each call between ``<tool_call>`` and ``</tool_call>`` (the
    template convention of ``serving.runtimes.llm.CHAT_TEMPLATE``), the text before the first
    one being the content. A call that does not parse, or names no given tool, stays text.
    """
    if request.tool_mode == "none" or not request.tools:
        return text, []
    names = {t["function"]["name"] for t in request.tools}
    if request.tool_mode == "forced":
        bodies, content = [text], None
    else:
        start = text.find(TOOL_CALL_OPEN)
        if start < 0:
            return text, []
        pattern = re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)"
        bodies = re.findall(pattern, text[start:], flags=re.DOTALL)
        content = text[:start].strip() or None
    calls = []
    for body in bodies:
        try:
            call = json.loads(body)
        except ValueError:
            return text, []
        if (not isinstance(call, dict) or call.get("name") not in names
                or not isinstance(call.get("arguments", {}), dict)):
            return text, []
        calls.append({"id": new_id("call"), "type": "function",
                      "function": {"name": call["name"],
                                   "arguments": json.dumps(call.get("arguments", {}))}})
    return content, calls


def chat_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """A choice's ``logprobs`` object from the runtime's token entries (None: not asked)."""
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict[str, Any]] | None, offset: int = 0,
                        ) -> dict[str, Any] | None:
    """The legacy completions ``logprobs`` object (tokens, token_logprobs, top_logprobs,
    text_offset) from the runtime's token entries."""
    if entries is None:
        return None
    offsets, at = [], offset
    for entry in entries:
        offsets.append(at)
        at += len(entry["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                             for e in entries],
            "text_offset": offsets}


def chat_answer(model_id: str, result: dict[str, Any], request: Request) -> dict[str, Any]:
    """A ``chat.completion`` from the runtime's ``complete`` result (n choices, one prompt)."""
    choices = []
    for index, choice in enumerate(result["choices"]):
        content, calls = read_tool_calls(choice["text"], request)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        finish = choice["finish_reason"]
        if calls:
            message["tool_calls"] = calls
            finish = "tool_calls"
        choices.append({"index": index, "message": message,
                        "logprobs": chat_logprobs(choice.get("logprobs")),
                        "finish_reason": finish})
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
        "model": model_id, "system_fingerprint": None, "choices": choices,
        "usage": usage(result["prompt_tokens"][0] if result["prompt_tokens"] else 0,
                       sum(c["completion_tokens"] for c in result["choices"])),
    }


def completion_answer(model_id: str, result: dict[str, Any], n: int) -> dict[str, Any]:
    """A ``text_completion`` from ``complete`` over each prompt repeated ``n`` times."""
    choices = result["choices"]
    prompt_tokens = sum(result["prompt_tokens"][::n])  # each prompt counted once, as OpenAI does
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
        "model": model_id, "system_fingerprint": None,
        "choices": [{"index": i, "text": c["text"],
                     "logprobs": completion_logprobs(c.get("logprobs")),
                     "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
        "usage": usage(prompt_tokens, sum(c["completion_tokens"] for c in choices)),
    }


def chat_chunk(answer_id: str, created: int, model_id: str, delta: dict[str, Any],
               finish_reason: str | None = None, *, index: int = 0,
               logprobs: dict[str, Any] | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream (``usage`` null when usage is asked for)."""
    chunk: dict[str, Any] = {
        "id": answer_id, "object": "chat.completion.chunk", "created": created,
        "model": model_id, "system_fingerprint": None,
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def completion_chunk(answer_id: str, created: int, model_id: str, text: str,
                     finish_reason: str | None = None, *, index: int = 0,
                     logprobs: dict[str, Any] | None = None,
                     with_usage: bool = False) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    chunk: dict[str, Any] = {
        "id": answer_id, "object": "text_completion", "created": created, "model": model_id,
        "system_fingerprint": None,
        "choices": [{"index": index, "text": text, "logprobs": logprobs,
                     "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk
