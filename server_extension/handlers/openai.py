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

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

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
    completion_answer,
    completion_chunk,
    model_object,
    new_id,
    parse_chat,
    parse_completion,
    usage,
)
from server_extension.serving.deployer import AgentUnavailable, LiveDeployment, RequestTimeout
from server_extension.serving.runtimes.base import RequestError

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

    async def run_stream(self, live: LiveDeployment, prompt: str, request: Request,
                         chunk: Any) -> None:
        """Stream one completion of ``prompt`` as server-sent events.

        ``chunk(answer_id, created, text, finish_reason, with_usage)`` builds one event; with
        ``text`` None it builds the opening event, or returns None when the format has none.
        Nothing is sent before the model accepts the prompt, so a refused prompt is still a
        plain 400.
        """
        # An async generator (deployer.stream): aclose() is what tells the model to stop.
        events = cast(AsyncGenerator[str, None], self.deployer.stream(
            live, "stream_completion", prompt, request.params))
        try:
            try:
                first = json.loads(await anext(events))
            except RequestError as exc:
                raise OpenAIError(400, str(exc), code="invalid_value") from exc
            await self._send_events(events, int(first["prompt_tokens"]), request, chunk)
        finally:
            await events.aclose()  # stops the model at its next token if the client left

    async def _send_events(self, events: AsyncIterator[str], prompt_tokens: int,
                           request: Request, chunk: Any) -> None:
        answer_id = new_id("chatcmpl" if self.route == "v1/chat/completions" else "cmpl")
        created = int(time.time())
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold events back
        self._batch = 1
        # Each event is a small write: with Nagle's algorithm on, one waits for the client's
        # (delayed, up to 40 ms) ACK of the one before, which is how the first token came
        # ~45 ms late. Tornado switches it back on when the response ends.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        try:
            opening = chunk(answer_id, created, None, None, request.include_usage)
            if opening is not None:
                await self._send(opening)
            async for event in events:
                item = json.loads(event)
                if "text" in item:
                    await self._send(chunk(answer_id, created, item["text"], None,
                                           request.include_usage))
                    continue
                self._tokens = int(item["completion_tokens"])
                await self._send(chunk(answer_id, created, "", item["finish_reason"],
                                       request.include_usage))
                if request.include_usage:
                    final = chunk(answer_id, created, "", None, True)
                    final["choices"] = []
                    final["usage"] = usage(prompt_tokens, self._tokens)
                    await self._send(final)
            self.write("data: [DONE]\n\n")
            self.finish()
        except StreamClosedError:
            return  # the client went away; the caller's aclose() stops the model
        except Exception as exc:  # noqa: BLE001 - the status line is sent: report in-band
            error = _as_openai(exc if isinstance(exc, (OpenAIError, InferenceError)) else
                               OpenAIError(500, f"Generation failed: {exc}", kind="server_error"))
            self._error_text = error.message
            try:
                await self._send(error.to_json())
                self.finish()
            except StreamClosedError:
                return

    async def _send(self, event: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(event)}\n\n")
        await self.flush()


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
        """Format the messages with the model's chat template, then complete (or stream)."""
        self.check_llm(live)
        request = parse_chat(self.body_json(), model_id=live.name)
        prompt = await self.invoke(live, "chat_prompt", request.messages)
        if request.stream:
            model_id = live.name

            def chunk(answer_id: str, created: int, text: str | None, finish: str | None,
                      with_usage: bool) -> dict[str, Any]:
                # The opening chunk (text None) names the role, as OpenAI's streams do.
                delta = ({"role": "assistant", "content": ""} if text is None
                         else {"content": text} if text else {})
                return chat_chunk(answer_id, created, model_id, delta, finish,
                                  with_usage=with_usage)

            await self.run_stream(live, prompt, request, chunk)
            return
        result = await self.invoke(live, "complete", [prompt] * request.n, request.params)
        answer = chat_answer(live.name, result)
        self._batch = request.n
        self._tokens = answer["usage"]["completion_tokens"]
        self.finish(json.dumps(answer))


class CompletionsHandler(OpenAIHandler):
    """``POST v1/completions``: plain prompts, no chat template."""

    route = "v1/completions"

    @bearer_key
    async def post(self, live: LiveDeployment) -> None:
        """Complete each prompt ``n`` times in one batched call (or stream one)."""
        self.check_llm(live)
        request = parse_completion(self.body_json(), model_id=live.name)
        if request.stream:
            model_id = live.name

            def chunk(answer_id: str, created: int, text: str | None, finish: str | None,
                      with_usage: bool) -> dict[str, Any] | None:
                if text is None:
                    return None  # completion streams open with their first text
                return completion_chunk(answer_id, created, model_id, text, finish,
                                        with_usage=with_usage)

            await self.run_stream(live, request.prompts[0], request, chunk)
            return
        prompts = [p for p in request.prompts for _ in range(request.n)]
        result = await self.invoke(live, "complete", prompts, request.params)
        answer = completion_answer(live.name, result, request.n)
        self._batch = len(prompts)
        self._tokens = answer["usage"]["completion_tokens"]
        self.finish(json.dumps(answer))


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


routes: list[tuple[str, type[InferenceHandler]]] = [
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
