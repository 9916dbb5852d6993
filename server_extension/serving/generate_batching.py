"""Batching for LLM ``generate``: concurrent requests with the same settings share one call.

An LLM runtime holds its model behind a lock, so without this N concurrent ``generate``
requests run one after another. The model's ``generate`` takes a batch of left-padded prompts,
and on a CPU or GPU a step over several rows costs far less than that many steps over one.
:class:`GenerateBatchingRuntime` gathers the requests that arrive while a call is running
and sends them as the next call, then hands each caller its own completions.

Like :mod:`server_extension.serving.batching` it gathers with
:mod:`server_extension.serving.gathering`: no timer, a lone request runs at once and batches
grow only as requests pile up behind a running one. Requests are batched together
only when their decoding settings are the same (``Sampling``: max_new_tokens, do_sample,
temperature, top_p, stop strings), never when sampling with a seed (a batch changes the
draws), and when the batch leaves every prompt the same room to reply as it
would have alone (the context limit applies to the longest prompt of a batch). If a
batched call fails, each request is run alone, so a caller only ever sees its own error.

Greedy completions equal the unbatched ones (left padding with an attention mask; checked
on the demo model in ``tests/test_runtime_llm.py``). Sampled ones are random anyway.

What is batched is the runtime's ``complete`` (``generate`` with finish reasons and token
counts), so Arena ``generate`` and OpenAI chat/completions requests share calls.
``generate_stream`` is not batched: a stream is one prompt whose pieces go out as they are
produced. Everything else goes to the wrapped runtime unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from server_extension.serving.gathering import Gatherer, Pending
from server_extension.serving.runtimes.base import WrappedRuntime
from server_extension.serving.runtimes.llm import LLMRuntime, Sampling


@dataclass
class _Request(Pending):
    prompts: list[str]
    sampling: Sampling
    params: dict[str, Any]
    longest: int  # tokens in its longest prompt
    result: dict[str, Any] | None = None  # what LLMRuntime.complete returns for its prompts


class GenerateBatchingRuntime(WrappedRuntime):
    """Wraps an :class:`LLMRuntime` so concurrent ``generate`` calls run as one batch.

    ``batches`` and ``batched_requests`` count what was gathered, for tests and benchmarks.
    """

    def __init__(self, inner: LLMRuntime, *, max_prompts: int = 32) -> None:
        super().__init__(inner)
        self.inner: LLMRuntime = inner
        self.max_prompts = max(1, max_prompts)
        self._gatherer = Gatherer(self._pick, self._run)
        self.batches = 0
        self.batched_requests = 0

    # -- what the LLM handlers use, passed through ----------------------------------------

    @property
    def max_context(self) -> int | None:
        """The wrapped model's context length."""
        return self.inner.max_context

    def format_chat(self, messages: list[dict[str, str]]) -> str:
        """See :meth:`LLMRuntime.format_chat`."""
        return self.inner.format_chat(messages)

    def count_tokens(self, prompt: str) -> int:
        """See :meth:`LLMRuntime.count_tokens`."""
        return self.inner.count_tokens(prompt)

    def check_prompt(self, prompt: str) -> int:
        """See :meth:`LLMRuntime.check_prompt`."""
        return self.inner.check_prompt(prompt)

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        """See :meth:`LLMRuntime.chat_prompt`."""
        return self.inner.chat_prompt(messages, tools)

    def fim_prompt(self, prompt: str, suffix: str) -> str:
        """See :meth:`LLMRuntime.fim_prompt`."""
        return self.inner.fim_prompt(prompt, suffix)

    def stream_completion(self, prompt: Any, params: dict[str, Any],
                          cancelled: Any) -> Iterator[str]:
        """See :meth:`LLMRuntime.stream_completion` (not batched, like ``stream``)."""
        return self.inner.stream_completion(prompt, params, cancelled)

    # -- generate -------------------------------------------------------------------------

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """The completions of ``prompts``, computed in a batch shared with concurrent calls."""
        return [c["text"] for c in self.complete(prompts, params)["choices"]]

    def complete(self, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """:meth:`LLMRuntime.complete`, in a batch shared with concurrent calls."""
        if not prompts:
            return {"choices": [], "prompt_tokens": []}
        sampling = Sampling.from_params(params)
        if sampling.seed is not None:
            return self.inner.complete(prompts, params)
        try:
            longest = max(self.inner.count_tokens(p) for p in prompts)
        except Exception:  # noqa: BLE001 - let the model refuse it with its own message
            return self.inner.complete(prompts, params)
        request = _Request(list(prompts), sampling, params, longest)
        self._gatherer.wait_for(request)
        assert request.result is not None
        return request.result

    def _room(self, longest: int) -> int | None:
        """Tokens left to reply after a batch whose longest prompt is ``longest`` tokens."""
        limit = self.inner.max_context
        return None if limit is None else limit - longest

    def _fits(self, first: _Request, item: _Request, prompts: int, longest: int) -> bool:
        if item.sampling != first.sampling or prompts + len(item.prompts) > self.max_prompts:
            return False
        # The batch's context room is set by its longest prompt; join only when that room does
        # not cut anyone's reply shorter than it would be alone.
        room = self._room(max(longest, item.longest))
        return room is None or room >= first.sampling.max_new_tokens

    def _pick(self, queue: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """The head of the queue and the requests that can join it."""
        first = queue[0]
        batch: list[_Request] = [first]
        prompts, longest = len(first.prompts), first.longest
        rest: list[_Request] = []
        for item in queue[1:]:
            if self._fits(first, item, prompts, longest):
                batch.append(item)
                prompts += len(item.prompts)
                longest = max(longest, item.longest)
            else:
                rest.append(item)
        return batch, rest

    def _run(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        self.batches += 1
        self.batched_requests += len(batch)
        try:
            result = self.inner.complete(
                [p for item in batch for p in item.prompts], batch[0].params)
        except Exception:  # noqa: BLE001 - one bad request must not fail the others
            for item in batch:
                self._run_alone(item)
            return
        start = 0
        for item in batch:
            end = start + len(item.prompts)
            item.result = {key: result[key][start:end] for key in ("choices", "prompt_tokens")}
            start = end

    def _run_alone(self, item: _Request) -> None:
        try:
            item.result = self.inner.complete(item.prompts, item.params)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's own thread
            item.error = exc
