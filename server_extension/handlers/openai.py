"""The OpenAI API of LLM agents, under ``<base_url>agents/d/<name>/v1/``.

``GET v1/models`` (the agent is the one model; its id is the agent's name), ``POST
v1/chat/completions`` and ``POST v1/completions``, streamed as server-sent events in OpenAI's
chunk format when asked. So ``openai.OpenAI(base_url=endpoint + "/v1", api_key=key)`` and
every framework built on it talk to an agent as they would to vLLM. Example::

    client = openai.OpenAI(base_url="http://127.0.0.1:8888/agents/d/chat/v1", api_key=key)
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}])

These are inference handlers like the Arena ones (:mod:`.inference`): the same credential
(``Authorization: Bearer <deployment key>``, which the OpenAI client sends), the same metrics
and request log, the same body limit. Only the error shape differs: OpenAI's
``{"error": {"message", "type", "param", "code"}}``. The model is reached through the
deployer's ``invoke``/``stream`` seam only; chat and completions go through the runtime's
batched ``complete``, so concurrent requests with the same settings share one ``generate``.
Request bodies are checked by :mod:`server_extension.handlers.openai_schema`.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado.iostream import StreamClosedError

from server_extension.handlers.inference import (
    NAME,
    InferenceError,
    InferenceHandler,
    bearer_key,
    guard,
)
from server_extension.handlers.llm import MAX_PROMPT_CHARS
from server_extension.handlers.openai_schema import (
    OpenAIError,
    Request,
    chat_answer,
    chat_chunk,
    chat_logprobs,
    completion_answer,
    completion_chunk,
    completion_logprobs,
    model_object,
    new_id,
    parse_chat,
    parse_completion,
    read_tool_calls,
    usage,
)
from server_extension.serving.deployer import AgentUnavailable, LiveDeployment, RequestTimeout
from server_extension.serving.runtimes.base import RequestError
from server_extension.workspace.callers import DEPLOYMENT_KEY, Caller
from server_extension.workspace.tokens import verify as verify_token

# Status -> OpenAI's error type and code for errors raised by the shared inference code
# (authentication, unknown agent, body limits) rather than by this module.
_SHAPES = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
           404: ("invalid_request_error", "not_found"),
           413: ("invalid_request_error", "request_too_large"), 504: ("timeout", "timeout")}


def _as_openai(error: Exception) -> OpenAIError:
    if isinstance(error, OpenAIError):
        return error
    if isinstance(error, InferenceError):
        kind, code = _SHAPES.get(error.status, ("server_error", None))
        return OpenAIError(error.status, error.message, kind=kind, code=code,
                           headers=error.headers)
    return OpenAIError(500, "Internal error while serving this request; the server log has the "
                       "details.", kind="server_error")


class OpenAIHandler(InferenceHandler):
    """Shared pieces: OpenAI's error shape, the LLM check and the calls into the model."""

    def fail(self, error: InferenceError) -> None:
        """Answer an error in OpenAI's shape (also for the shared auth and limit checks)."""
        self.fail_openai(_as_openai(error))

    def fail_openai(self, error: OpenAIError) -> None:
        """Answer ``error`` and stop."""
        self._error_text = error.message
        self.clear()
        self.set_status(error.status)
        for key, value in error.headers.items():
            self.set_header(key, value)
        self.finish(json.dumps(error.to_json()))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado-level failures (a wrong method, say) in OpenAI's shape too."""
        self._error_text = f"HTTP {status_code}"
        message = ("Internal error; the server log has the details." if status_code >= 500
                   else self._reason)
        kind = "server_error" if status_code >= 500 else "invalid_request_error"
        self.finish(json.dumps(OpenAIError(status_code, message, kind=kind).to_json()))

    async def _execute_verb(self, verb: Any) -> None:
        # The shared path reads the body in and maps the contract's errors (timeouts, a dead
        # worker, ...) through self.fail, which answers in OpenAI's shape.
        async def run() -> None:
            try:
                await verb()
            except OpenAIError as exc:
                self.fail_openai(exc)

        await super()._execute_verb(run)

    def check_llm(self, live: LiveDeployment) -> None:
        """404 unless the agent is an LLM: only those speak the OpenAI API."""
        kind = live.runtime.kind
        if not kind.llm:
            raise OpenAIError(
                404, f"Agent {live.name!r} is a {kind.algo} agent; the OpenAI API (v1/...) is "
                "served for LLM agents only. Use its Arena routes instead.", code="not_found")

    def body_json(self) -> dict[str, Any]:
        """The JSON object body, or an OpenAI-shaped 400 (also for a lone surrogate in any
        string, which JSON's ``\\ud800`` allows and no tokenizer or UTF-8 answer can hold)."""
        try:
            body = self.body()
        except InferenceError as exc:
            raise OpenAIError(400, exc.message, code="invalid_json") from exc
        where, chars = _lone_surrogate(body, "body")
        if where is not None:
            raise OpenAIError(400, f"{where} is not valid Unicode text (it holds a lone "
                              "surrogate); send UTF-8 text.", code="invalid_value")
        if chars > MAX_PROMPT_CHARS:
            # Refused here: a model's tokenizer would need gigabytes for it in the worker.
            raise OpenAIError(400, f"The request holds {chars} characters of text; send at "
                              f"most {MAX_PROMPT_CHARS}.", code="context_length_exceeded")
        return body

    async def invoke(self, live: LiveDeployment, method: str, *args: Any) -> Any:
        """``deployer.invoke``, with the model's refusals as OpenAI 400s."""
        try:
            return await self.deployer.invoke(live, method, *args)
        except RequestError as exc:
            raise OpenAIError(400, str(exc), code="invalid_value") from exc
        except RequestTimeout as exc:
            raise OpenAIError(504, str(exc), kind="timeout", code="timeout") from exc
        except AgentUnavailable as exc:  # no replica or worker to answer right now
            raise OpenAIError(503, str(exc), kind="server_error", code="unavailable",
                              headers={"Retry-After": "1"}) from exc

    async def run_stream(self, live: LiveDeployment, prompts: list[Any], request: Request,
                         chat: bool) -> None:
        """Stream the completions of ``prompts`` (one row each) as server-sent events.

        Nothing is sent before the model accepts the prompts, so a refused prompt is still a
        plain 400.
        """
        # An async generator (deployer.stream): aclose() is what tells the model to stop.
        events = cast(AsyncGenerator[str, None], self.deployer.stream(
            live, "stream_completion", prompts, request.params))
        try:
            try:
                first = json.loads(await anext(events))
            except RequestError as exc:
                raise OpenAIError(400, str(exc), code="invalid_value") from exc
            writer = _ChatEvents(live.name, request) if chat else _CompletionEvents(
                live.name, request)
            await self._send_events(events, int(first["prompt_tokens"]) // request.n,
                                    request, writer, rows=len(prompts))
        finally:
            await events.aclose()  # stops the model at its next token if the client left

    async def _send_events(self, events: AsyncIterator[str], prompt_tokens: int,
                           request: Request, writer: _Events, *, rows: int) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold events back
        self._batch = rows
        # Each event is a small write: with Nagle's algorithm on, one waits for the client's
        # (delayed, up to 40 ms) ACK of the one before, which is how the first token came
        # ~45 ms late. Tornado switches it back on when the response ends.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        try:
            try:
                for chunk in writer.opening(rows):
                    await self._send(chunk)
                async for event in events:
                    item = json.loads(event)
                    if "text" in item:
                        chunks = writer.text(item["index"], item["text"], item.get("logprobs"))
                    else:
                        self._tokens += int(item["completion_tokens"])
                        chunks = writer.finish(item["index"], item["finish_reason"])
                    for chunk in chunks:
                        await self._send(chunk)
                if request.include_usage:
                    final = writer.usage_chunk()
                    final["usage"] = usage(prompt_tokens, self._tokens)
                    await self._send(final)
            except StreamClosedError:
                raise
            except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-band
                error = _as_openai(
                    exc if isinstance(exc, (OpenAIError, InferenceError)) else
                    OpenAIError(500, f"Generation failed: {exc}", kind="server_error"))
                self._error_text = error.message
                await self._send(error.to_json())
            # A stream always ends with [DONE], after an error event too (what OpenAI's
            # clients and vLLM's tests expect), so a client never waits for more.
            self.write("data: [DONE]\n\n")
            self.finish()
        except StreamClosedError:
            return  # the client went away; the caller's aclose() stops the model

    async def _send(self, event: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(event)}\n\n")
        await self.flush()


class _Events:
    """Turns the runtime's stream events into one format's chunks (chat or completions)."""

    def __init__(self, model_id: str, request: Request, prefix: str) -> None:
        self.model_id = model_id
        self.request = request
        self.answer_id = new_id(prefix)
        self.created = int(time.time())

    def opening(self, rows: int) -> list[dict[str, Any]]:
        """Chunks sent before the first token."""
        return []

    def text(self, index: int, text: str, logprobs: Any) -> list[dict[str, Any]]:
        """Chunks for a piece of row ``index``'s reply."""
        raise NotImplementedError

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        """Chunks closing row ``index``."""
        raise NotImplementedError

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk's frame (no choices), for ``include_usage``."""
        raise NotImplementedError


class _ChatEvents(_Events):
    """Chat chunks. With tools, a row's reply is held until it ends: only then is it known
    whether it is a tool call (sent as one ``tool_calls`` delta) or text."""

    def __init__(self, model_id: str, request: Request) -> None:
        super().__init__(model_id, request, "chatcmpl")
        self.held: dict[int, str] = {}
        self.hold = request.tool_mode != "none"

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None,
               logprobs: Any = None) -> dict[str, Any]:
        return chat_chunk(self.answer_id, self.created, self.model_id, delta, finish,
                          index=index, logprobs=chat_logprobs(logprobs),
                          with_usage=self.request.include_usage)

    def opening(self, rows: int) -> list[dict[str, Any]]:
        """Each choice opens by naming its role, as OpenAI's streams do."""
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(rows)]

    def text(self, index: int, text: str, logprobs: Any) -> list[dict[str, Any]]:
        """A content delta (held back when tools may turn the reply into a call)."""
        if self.hold:
            self.held[index] = self.held.get(index, "") + text
            return []
        return [self._chunk(index, {"content": text} if text else {}, logprobs=logprobs)]

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        """The held reply (as text or tool calls) and the finish reason."""
        chunks = []
        if self.hold:
            content, calls = read_tool_calls(self.held.pop(index, ""), self.request)
            if calls:
                chunks.append(self._chunk(index, {"tool_calls": [
                    {"index": i, **call} for i, call in enumerate(calls)]}))
                reason = "tool_calls"
            if content:
                chunks.insert(0, self._chunk(index, {"content": content}))
        chunks.append(self._chunk(index, {}, reason))
        return chunks

    def usage_chunk(self) -> dict[str, Any]:
        """The usage chunk's frame."""
        final = self._chunk(0, {})
        final["choices"] = []
        return final


class _CompletionEvents(_Events):
    """Legacy completions chunks (they open with their first text)."""

    def __init__(self, model_id: str, request: Request) -> None:
        super().__init__(model_id, request, "cmpl")
        self.offsets: dict[int, int] = {}

    def _chunk(self, index: int, text: str, finish: str | None = None,
               logprobs: Any = None) -> dict[str, Any]:
        offset = self.offsets.get(index, 0)
        self.offsets[index] = offset + len(text)
        return completion_chunk(self.answer_id, self.created, self.model_id, text, finish,
                                index=index, logprobs=completion_logprobs(logprobs, offset),
                                with_usage=self.request.include_usage)

    def text(self, index: int, text: str, logprobs: Any) -> list[dict[str, Any]]:
        """A text chunk."""
        return [self._chunk(index, text, logprobs=logprobs)]

    def finish(self, index: int, reason: str) -> list[dict[str, Any]]:
        """An empty chunk with the finish reason."""
        return [self._chunk(index, "", reason)]

    def usage_chunk(self) -> dict[str, Any]:
        """The usage chunk's frame."""
        final = self._chunk(0, "")
        final["choices"] = []
        return final


async def answer_chat(handler: OpenAIHandler, live: LiveDeployment,
                      body: dict[str, Any]) -> None:
    """``POST chat/completions`` for ``live``: format the messages with the model's chat
    template (tools included), then complete or stream."""
    handler.check_llm(live)
    request = parse_chat(body, model_id=live.name)
    prompt = await handler.invoke(live, "chat_prompt", request.messages, request.tools or None)
    if request.stream:
        await handler.run_stream(live, [prompt] * request.n, request, chat=True)
        return
    result = await handler.invoke(live, "complete", [prompt] * request.n, request.params)
    answer = chat_answer(live.name, result, request)
    handler._batch = request.n
    handler._tokens = answer["usage"]["completion_tokens"]
    handler.finish(json.dumps(answer))


async def answer_completion(handler: OpenAIHandler, live: LiveDeployment,
                            body: dict[str, Any]) -> None:
    """``POST completions`` for ``live``: each prompt ``n`` times, in one batched call."""
    handler.check_llm(live)
    request = parse_completion(body, model_id=live.name)
    prompts = request.prompts
    if request.suffix:
        prompts = [await handler.invoke(live, "fim_prompt", p, request.suffix) for p in prompts]
    rows = [p for p in prompts for _ in range(request.n)]
    if request.stream:
        await handler.run_stream(live, rows, request, chat=False)
        return
    result = await handler.invoke(live, "complete", rows, request.params)
    answer = completion_answer(live.name, result, request.n)
    handler._batch = len(rows)
    handler._tokens = answer["usage"]["completion_tokens"]
    handler.finish(json.dumps(answer))


class ModelsHandler(OpenAIHandler):
    """``GET v1/models``: the agent, as the one model."""

    route = "v1/models"

    @bearer_key
    async def get(self, live: LiveDeployment) -> None:
        """A list of one model whose id is the agent's name."""
        self.check_llm(live)
        self.finish(json.dumps({"object": "list",
                                "data": [model_object(live.name, live.loaded_at)]}))


class ModelHandler(OpenAIHandler):
    """``GET v1/models/<id>``: the model, or 404 for any other id."""

    route = "v1/models"

    @bearer_key
    async def get(self, live: LiveDeployment, model: str) -> None:
        """The model object."""
        self.check_llm(live)
        if model != live.name:
            raise OpenAIError(404, f"The model {model!r} does not exist here; this endpoint "
                              f"serves one model, {live.name!r}.", param="model",
                              code="model_not_found")
        self.finish(json.dumps(model_object(live.name, live.loaded_at)))


class ChatCompletionsHandler(OpenAIHandler):
    """``POST v1/chat/completions``."""

    route = "v1/chat/completions"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """See :func:`answer_chat`."""
        await answer_chat(self, live, self.body_json())


class CompletionsHandler(OpenAIHandler):
    """``POST v1/completions``: plain prompts, no chat template."""

    route = "v1/completions"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """See :func:`answer_completion`."""
        await answer_completion(self, live, self.body_json())


class UnknownOpenAIRouteHandler(OpenAIHandler):
    """Any other ``v1/...`` path: an OpenAI-shaped 404 listing what there is."""

    route = "v1/unknown"

    @staticmethod
    def _unknown(rest: str) -> OpenAIError:
        return OpenAIError(404, f"Unknown OpenAI route v1/{rest}; this server answers GET "
                           "v1/models, POST v1/chat/completions and POST v1/completions.",
                           code="unknown_url")

    @bearer_key
    async def get(self, live: LiveDeployment, rest: str) -> None:
        """404."""
        raise self._unknown(rest)

    @bearer_key
    async def post(self, live: LiveDeployment, rest: str) -> None:
        """404."""
        raise self._unknown(rest)


def workspace_bearer(method: Any) -> Any:
    """Mark a workspace route's verb: it checks the Bearer credential itself (no Jupyter
    auth), once it knows which agent the body names."""
    wrapped = allow_unauthenticated(method)
    wrapped.auth_decision = "bearer"
    return wrapped


class WorkspaceHandler(OpenAIHandler):
    """The workspace's one OpenAI endpoint, ``<base_url>agents/v1``: ``model`` names the agent.

    A workspace access token reaches every Deployed LLM agent; a deployment key only its own
    agent (403 in OpenAI's shape for any other).
    """

    def workspace_credential(self) -> str | None:
        """The agent whose deployment key the request carries, or None for an access token;
        401 for neither."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise OpenAIError(401, "Missing credential: send 'Authorization: Bearer <token>' with "
                              "a workspace access token (or an agent's deployment key).",
                              code="invalid_api_key",
                              headers={"WWW-Authenticate": 'Bearer realm="agents-workbench"'})
        for record in self.registry.list():
            current = self.registry.credentials.get(record.name)
            if (current is not None and current.connected
                    and hmac.compare_digest(given.encode(), current.api_key.encode())):
                self.caller = DEPLOYMENT_KEY
                return record.name
        token = verify_token(self.registry, given)
        if token is None:
            raise OpenAIError(401, "Wrong access token or deployment key (revoked or rotated?). "
                              "Create a token in the panel's Access tokens section.",
                              code="invalid_api_key",
                              headers={"WWW-Authenticate": 'Bearer realm="agents-workbench"'})
        self.caller = Caller(token.id)
        return None

    def callable_agents(self, key_agent: str | None) -> list[LiveDeployment]:
        """The Deployed LLM agents the credential may call, by name."""
        names = [key_agent] if key_agent else [r.name for r in self.registry.list()]
        found = []
        for name in sorted(names):
            live = self.deployer.live(name)
            if live is not None and not live.failed and live.runtime.kind.llm:
                found.append(live)
        return found

    def resolve(self, body: dict[str, Any]) -> LiveDeployment:
        """The agent ``body["model"]`` names, once the credential may call it."""
        key_agent = self.workspace_credential()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "model is required: name a Deployed LLM agent (GET "
                              "agents/v1/models lists them).", param="model",
                              code="missing_required_parameter")
        if key_agent is not None and model != key_agent:
            raise OpenAIError(403, f"This deployment key belongs to agent {key_agent!r} and "
                              f"cannot call {model!r}; use a workspace access token to reach "
                              "every agent.", param="model", code="permission_denied",
                              kind="permission_error")
        live = self.deployer.live(model)
        if live is None or not live.runtime.kind.llm:
            raise OpenAIError(404, f"The model {model!r} is not a Deployed LLM agent of this "
                              "workspace; GET agents/v1/models lists those you may call.",
                              param="model", code="model_not_found")
        self._authenticated = True
        self._begin_metrics(model)
        return live


class WorkspaceModelsHandler(WorkspaceHandler):
    """``GET agents/v1/models``: every LLM agent the credential may call."""

    route = "v1/models"

    @workspace_bearer
    async def get(self) -> None:
        """The list."""
        agents = self.callable_agents(self.workspace_credential())
        self._authenticated = True
        self.finish(json.dumps({"object": "list", "data": [
            model_object(live.name, live.loaded_at) for live in agents]}))


class WorkspaceChatHandler(WorkspaceHandler):
    """``POST agents/v1/chat/completions``."""

    route = "v1/chat/completions"

    @workspace_bearer
    async def post(self) -> None:
        """See :func:`answer_chat`."""
        body = self.body_json()
        await answer_chat(self, self.resolve(body), body)


class WorkspaceCompletionsHandler(WorkspaceHandler):
    """``POST agents/v1/completions``."""

    route = "v1/completions"

    @workspace_bearer
    async def post(self) -> None:
        """See :func:`answer_completion`."""
        body = self.body_json()
        await answer_completion(self, self.resolve(body), body)


routes: list[tuple[str, type[InferenceHandler]]] = [
    (r"/agents/v1/models", guard(WorkspaceModelsHandler)),
    (r"/agents/v1/chat/completions", guard(WorkspaceChatHandler)),
    (r"/agents/v1/completions", guard(WorkspaceCompletionsHandler)),
    (rf"/agents/d/{NAME}/v1/models", guard(ModelsHandler)),
    (rf"/agents/d/{NAME}/v1/models/(?P<model>[^/]+)", guard(ModelHandler)),
    (rf"/agents/d/{NAME}/v1/chat/completions", guard(ChatCompletionsHandler)),
    (rf"/agents/d/{NAME}/v1/completions", guard(CompletionsHandler)),
    (rf"/agents/d/{NAME}/v1/(?P<rest>.*)", guard(UnknownOpenAIRouteHandler)),
]


def _lone_surrogate(value: Any, where: str) -> tuple[str | None, int]:
    """Where in ``value`` (a parsed JSON body) a string holds a lone surrogate (or ``None``),
    and how many characters its strings hold in all."""
    stack = [(value, where)]
    chars = 0
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            chars += len(item)
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return at, chars
        elif isinstance(item, dict):
            # repr: a key may itself hold the surrogate, and the message must stay UTF-8.
            stack.extend((v, f"{at}[{k!r}]") for k, v in item.items())
            stack.extend((k, f"a key of {at}") for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
    return None, chars
