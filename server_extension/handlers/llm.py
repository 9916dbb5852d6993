"""LLM routes of the inference API: generate, generate_stream and chat sessions.

Every prompt is a user turn of a conversation: a new one (recorded as a fresh session) or, with
``session_id``, the continuation of a stored one, whose earlier turns the model sees through
the tokenizer's chat template. Generation runs on worker threads; a stream hands each piece to
the event loop as it is produced and stops the model when the client goes away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
from typing import Any

from tornado.iostream import StreamClosedError

from server_extension.handlers.base import SESSIONS
from server_extension.handlers.inference import (
    NAME,
    InferenceError,
    InferenceHandler,
    bearer_key,
    guard,
)
from server_extension.serving.deployer import LiveDeployment
from server_extension.workspace.callers import visible_owner
from server_extension.workspace.sessions import MAX_PAGE_SIZE, PAGE_SIZE

PARAM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9, "do_sample": True,
}
MAX_NEW_TOKENS = 4096
MAX_TEMPERATURE = 10.0
# Below this, logits divided by the temperature overflow float32 (1e-300 makes every
# probability NaN): 0 already means greedy decoding.
MIN_TEMPERATURE = 1e-3
MAX_PROMPT_CHARS = 1_000_000
MAX_PROMPTS = 64
_SESSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def validate_params(raw: Any) -> dict[str, Any]:
    """The contract's sampling params with defaults filled in; 400 for anything else."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InferenceError(400, "params must be a JSON object of sampling parameters.")
    unknown = sorted(set(raw) - set(PARAM_DEFAULTS))
    if unknown:
        raise InferenceError(
            400, f"Unknown sampling parameter(s) {unknown}; allowed: {sorted(PARAM_DEFAULTS)}.")
    params = {**PARAM_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    tokens = params["max_new_tokens"]
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_NEW_TOKENS:
        raise InferenceError(
            400, f"max_new_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}, "
            f"got {tokens!r}.")
    temperature = params["temperature"]
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or not 0 <= temperature <= MAX_TEMPERATURE
            or 0 < temperature < MIN_TEMPERATURE):
        raise InferenceError(
            400, f"temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE:g} to "
            f"{MAX_TEMPERATURE:g}, got {temperature!r}.")
    top_p = params["top_p"]
    if (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
            or not math.isfinite(top_p) or not 0 < top_p <= 1):
        raise InferenceError(400, f"top_p must be a number in (0, 1], got {top_p!r}.")
    if not isinstance(params["do_sample"], bool):
        raise InferenceError(400, f"do_sample must be true or false, got {params['do_sample']!r}.")
    return params


def validate_session_id(raw: Any) -> str | None:
    """A usable session id, ``None`` when absent; 400 when malformed."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _SESSION_RE.match(raw.strip()):
        raise InferenceError(
            400, "session_id must be 1-128 letters, digits, '.', '_', ':' or '-'.")
    return raw.strip()


def check_prompt_text(prompt: Any, what: str = "prompt") -> str:
    """A non-empty prompt string of valid Unicode without NUL characters, or 400."""
    if not isinstance(prompt, str):
        raise InferenceError(400, f"{what} must be a string, got {type(prompt).__name__}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InferenceError(
            400, f"{what} is {len(prompt)} characters; send at most {MAX_PROMPT_CHARS}.")
    try:
        # JSON lets a client send "\ud800", a lone surrogate: no tokenizer, database or
        # UTF-8 answer can hold it.
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InferenceError(
            400, f"{what} is not valid Unicode text (a lone surrogate at character "
            f"{exc.start}); send UTF-8 text.") from exc
    if "\x00" in prompt:
        raise InferenceError(400, f"{what} holds a NUL character; remove it.")
    if not prompt.strip():
        raise InferenceError(400, f"{what} is empty; send some text.")
    return prompt


def page_args(handler: InferenceHandler) -> tuple[int, int]:
    """``?limit=&offset=`` of a paged listing; 400 unless whole numbers in range."""
    values = []
    for name, default, top in (("limit", PAGE_SIZE, MAX_PAGE_SIZE), ("offset", 0, 10**9)):
        raw = handler.get_query_argument(name, None)
        if raw is None:
            values.append(default)
            continue
        number = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 10 else -1
        if number < (0 if name == "offset" else 1) or number > top:
            raise InferenceError(400, f"{name} must be a whole number up to {top}, got {raw!r}.")
        values.append(number)
    return values[0], values[1]


def new_session_id() -> str:
    """A fresh session id for a conversation the caller did not name."""
    return "sess_" + secrets.token_hex(8)


class LLMHandler(InferenceHandler):
    """Shared pieces of the LLM routes: sessions and chat formatting."""

    @property
    def sessions(self) -> Any:
        """The server's :class:`~server_extension.workspace.sessions.SessionStore`."""
        return self.settings[SESSIONS]

    async def history(self, agent: str, session_id: str | None) -> list[dict[str, str]]:
        """The earlier turns of ``session_id`` (none for a new conversation)."""
        if not session_id:
            return []
        return list(await self.deployer.call(self.sessions.messages, agent, session_id) or [])

    def session_owner(self, agent: str) -> str | None:
        """Whose sessions this caller sees on ``agent`` (``None``: all; see callers.py)."""
        return visible_owner(self.caller, self.registry.get(agent).options.get("memory_scope"))

    def claim(self, agent: str, session_id: str | None) -> str | None:
        """``session_id``, or 403 when it is another caller's session (user memory scope)."""
        if session_id and self.sessions.taken(agent, session_id, self.session_owner(agent)):
            raise InferenceError(
                403, f"Session {session_id!r} belongs to another caller of this agent; "
                "start a new session (another session_id).")
        return session_id


class GenerateHandler(LLMHandler):
    """``POST generate``: batched completions."""

    route = "generate"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """Validate, generate on a worker thread, record each turn in its session."""
        self.check_route(live)
        body = self.body()
        prompts = body.get("prompts")
        if not isinstance(prompts, list) or not prompts:
            raise InferenceError(400, "prompts must be a non-empty list of strings.")
        if len(prompts) > MAX_PROMPTS:
            raise InferenceError(400, f"Send at most {MAX_PROMPTS} prompts per request.")
        prompts = [check_prompt_text(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        params = validate_params(body.get("params"))
        session_id = validate_session_id(body.get("session_id"))
        if session_id is not None and len(prompts) != 1:
            raise InferenceError(400, "session_id continues one conversation: send one prompt.")
        agent = live.name
        self.claim(agent, session_id)
        owner = self.caller.owner
        conversations = [[*await self.history(agent, session_id), {"role": "user", "content": p}]
                         for p in prompts]
        done = await self.deployer.invoke(live, "generate_turns", conversations, params)
        completions = [str(c) for c in done["completions"]]
        elapsed, tokens = float(done["elapsed"]), int(done["tokens"])
        self._tokens = tokens
        self._batch = len(prompts)
        for prompt, completion in zip(prompts, completions, strict=True):
            await self.deployer.call(self.sessions.append, agent, session_id or new_session_id(), [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": completion}], owner,
                self.request.remote_ip or "")
        self.finish(json.dumps({
            "results": [{"prompt": p, "completion": c}
                        for p, c in zip(prompts, completions, strict=True)],
            "batch_size": len(prompts),
            "inference_time_ms": round(elapsed * 1000, 3),
            "tokens_per_second": round(tokens / elapsed, 3) if elapsed > 0 else 0.0,
            "success": True,
        }))


log = logging.getLogger("agents_workbench.inference")


class GenerateStreamHandler(LLMHandler):
    """``POST generate_stream``: plain-text chunks as the model produces them."""

    route = "generate_stream"
    _closed = False

    def on_connection_close(self) -> None:
        """The client went away: the next piece's flush fails, which stops the model."""
        self._closed = True

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """Validate (JSON errors), then stream text (errors in-band as ``\\n[ERROR: ...]``)."""
        self.check_route(live)
        body = self.body()
        prompt = check_prompt_text(body.get("prompt"))
        params = validate_params(body.get("params"))
        agent = live.name
        session_id = self.claim(agent, validate_session_id(body.get("session_id"))
                                ) or new_session_id()
        turns = [*await self.history(agent, session_id), {"role": "user", "content": prompt}]
        model_input = await self.deployer.invoke(live, "stream_input", turns)
        self._batch = 1
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("X-Session-Id", session_id)
        produced: list[str] = []
        pieces = self.deployer.stream(live, "stream", model_input, params)
        try:
            async for piece in pieces:
                produced.append(piece)
                self.write(piece)
                await self.flush()
        except StreamClosedError:
            return  # the client went away; closing the iterator stopped the model
        except Exception as exc:  # noqa: BLE001 - reported in-band: the answer has begun
            log.warning("Stream of %s failed: %s", agent, exc)
            with contextlib.suppress(StreamClosedError):
                self.write(f"\n[ERROR: generation failed: {exc}]")
        finally:
            await pieces.aclose()
        completion = "".join(produced)
        try:
            if self._metrics is not None:
                self._tokens = int(await self.deployer.invoke(live, "count_text_tokens",
                                                              completion))
            if not self._closed:
                await self.deployer.call(self.sessions.append, agent, session_id, [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": completion}], self.caller.owner,
                    self.request.remote_ip or "")
        except Exception as exc:  # noqa: BLE001 - the answer has begun: report it in-band
            # (a full disk, say), in the documented stream error line, never a JSON object.
            log.warning("Stream of %s could not be recorded: %s", agent, exc)
            if not self._closed:
                with contextlib.suppress(StreamClosedError):
                    self.write(f"\n[ERROR: the answer could not be saved to the session: "
                               f"{type(exc).__name__}: {exc}]")
        if not self._closed:
            self.finish()


class SessionsHandler(LLMHandler):
    """``GET sessions``: the agent's conversations, newest first."""

    route = "sessions"

    @bearer_key
    async def get(self, live: LiveDeployment) -> None:
        """List sessions."""
        self.check_route(live)
        limit, offset = page_args(self)
        page = await self.deployer.call(self.sessions.page, live.name, limit, offset,
                                        self.session_owner(live.name))
        self.finish(json.dumps({**page, "success": True}))


class SessionHandler(LLMHandler):
    """``GET`` / ``DELETE sessions/{id}``."""

    route = "sessions"

    @bearer_key
    async def get(self, live: LiveDeployment, session_id: str) -> None:
        """One session with its messages; 404 if unknown."""
        self.check_route(live)
        found = await self.deployer.call(
            self.sessions.get, live.name, session_id, self.session_owner(live.name))
        if found is None:
            raise InferenceError(404, f"No session {session_id!r} for this agent.")
        self.finish(json.dumps(found))

    @bearer_key
    async def delete(self, live: LiveDeployment, session_id: str) -> None:
        """Delete a session: 204, or 404 when there was nothing to delete."""
        self.check_route(live)
        if not await self.deployer.call(
                self.sessions.delete, live.name, session_id, self.session_owner(live.name)):
            raise InferenceError(404, f"No session {session_id!r} for this agent.")
        self.set_status(204)
        self.finish()


SESSION = r"(?P<session_id>[^/]+)"

routes: list[tuple[str, type[InferenceHandler]]] = [
    (rf"/agents/d/{NAME}/generate", guard(GenerateHandler)),
    (rf"/agents/d/{NAME}/generate_stream", guard(GenerateStreamHandler)),
    (rf"/agents/d/{NAME}/sessions", guard(SessionsHandler)),
    (rf"/agents/d/{NAME}/sessions/{SESSION}", guard(SessionHandler)),
]
