"""Serve causal language models saved as Hugging Face folders (framework ``"transformers"``).

A checkpoint folder is one of:

* a full model: ``config.json`` + ``model.safetensors`` (or a sharded safetensors index) and
  tokenizer files;
* a PEFT adapter alone: ``adapter_config.json`` + ``adapter_model.safetensors``, at the top
  of the folder or in an ``actor/`` subfolder (how AgileRL saves LLM checkpoints). The base
  model is the experiment's ``base_model`` (else the adapter's ``base_model_name_or_path``):
  a path, relative to the workspace root when not absolute, or a Hugging Face id already in
  the local cache. The adapter is merged into the base once at load time.

Only safetensors weights are read and no repository code runs (``trust_remote_code`` stays
off); nothing is downloaded. Generation runs under one lock per runtime: on a CPU two
concurrent generations only slow each other down, and the tokenizer is not thread-safe.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server_extension.serving.runtimes import completions, decoding
from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
)
from workbench_core.store import Checkpoint, Experiment

# Read by huggingface_hub when it is first imported: the server must never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ADAPTER_SUBFOLDERS = ("actor",)
DEFAULT_MAX_NEW_TOKENS = 128
_STREAM_POLL_S = 0.1
_FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
# Fill-in-the-middle token triples (prefix, suffix, middle) of common code models.
_FIM_TOKENS = (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
               ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' progress bars and one known PEFT warning while loading or saving.

    PEFT 0.21 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with
    a FutureWarning on every adapter load; it says nothing about the model being loaded.
    """
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if bars_were_on:
        hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class Sampling:
    """Decoding settings taken from a request's (already validated) params.

    ``stop`` and ``seed`` come only from the OpenAI routes; the Arena contract has neither.
    """

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # how many top alternatives per token; None: no logprobs
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None  # "json" or a JSON schema's canonical text
    echo: bool = False  # the reply starts with the prompt's text

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Sampling:
        """Read ``max_new_tokens``, ``temperature``, ``top_p``, ``do_sample``, ``stop``, ``seed``,
        and the OpenAI routes' ``logprobs`` (top count), ``logit_bias`` ([[id, bias], ...]),
        ``grammar`` (``"json"`` or a JSON schema) and ``echo``.

        Temperature 0 or ``do_sample=False`` means greedy decoding (and ``seed`` is moot).
        """
        temperature = float(params.get("temperature", 1.0))
        do_sample = bool(params.get("do_sample", True)) and temperature > 0
        seed = params.get("seed")
        logprobs = params.get("logprobs")
        try:
            bias = tuple(sorted((int(t), float(b)) for t, b in params.get("logit_bias") or ()))
        except (TypeError, ValueError) as exc:
            raise RequestError("logit_bias must be a list of [token id, bias] pairs.") from exc
        return cls(
            max_new_tokens=max(1, int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))),
            do_sample=do_sample,
            temperature=temperature,
            top_p=float(params.get("top_p", 1.0)),
            stop=tuple(str(s) for s in params.get("stop") or () if s),
            seed=int(seed) if seed is not None and do_sample else None,
            logprobs=None if logprobs is None else min(int(logprobs),
                                                       decoding.MAX_TOP_LOGPROBS),
            logit_bias=bias,
            grammar=decoding.grammar_spec(params.get("grammar")),
            echo=bool(params.get("echo", False)),
        )

# The demo chat model's turn format, also the fallback for a tokenizer without a chat template
# of its own (the OpenAI routes need one). One turn is "<|role|>\n{content}<|end|>\n"; the
# generation prompt opens an assistant turn, so a reply ends with <|end|>, the EOS token that
# generation stops on. Kept here, not with the demo, because serving must not import demos.
#
# Tools, as any template must express them for the OpenAI routes' tool calls: the template
# receives ``tools`` (OpenAI's list of {"type": "function", "function": {name, description,
# parameters}}) and renders them where the model learnt to read them (here: one system turn,
# "tools: name(arg, ...)", kept short for a 128-token context); an assistant message's
# ``tool_calls`` (each {"type": "function", "function": {"name", "arguments": <object>}}) are
# rendered as the model writes calls, TOOL_CALL_OPEN + {"name": ..., "arguments": {...}} +
# TOOL_CALL_CLOSE; and a ``tool`` message (a call's result) is a turn of role "tool". A model
# that writes a call that way in its reply is understood (see ``completions.tool_calls``).
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{ '<|system|>\\ntools: ' }}"
    "{%- for tool in tools -%}"
    "{{ tool['function']['name'] + '(' + (tool['function'].get('parameters') or {})"
    ".get('properties', {}) | join(', ') + ')' }}{{ '; ' if not loop.last else '' }}"
    "{%- endfor -%}"
    "{{ '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}"
    "{{ raise_exception('Unknown chat role ' + message['role'] "
    "+ '; use system, user, assistant or tool.') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{{ '<tool_call>' + {'name': call['function']['name'], "
    "'arguments': call['function']['arguments']} | tojson + '</tool_call>' }}"
    "{%- endfor -%}"
    "{{ '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


class _StreamRow:
    """One row of a streamed batch: its text so far, what is held back, its logprobs."""

    def __init__(self, index: int, tokenizer: Any, sampling: Sampling, eos: set[int],
                 special: set[int]) -> None:
        self.index = index
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.eos = eos
        self.special = special
        self.text = decoding.RowText(tokenizer, special | eos)
        self.held = ""
        self.waiting: list[dict[str, Any]] = []  # token records whose logprobs are not sent
        self.count = 0
        self.ended = False

    def add(self, record: dict[str, Any]) -> Iterator[str]:
        """The events one generated token makes (none once the row has ended)."""
        if self.ended:
            return
        self.count += 1
        if record["id"] in self.eos:
            yield from self.finish(completions.STOP)
            return
        if record["id"] not in self.special:
            self.waiting.append(record)
        self.held += self.text.add(record["id"])
        stops, stopped, keep = self.sampling.stop, False, 0
        if stops:
            self.held, stopped = completions.cut_at_stop(self.held, stops)
            keep = 0 if stopped else completions.held_back(self.held, stops)
        ready, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
        if ready:
            yield self._event(ready)
        if stopped:
            self.waiting = []
            yield from self.finish(completions.STOP, at_stop=True)

    def finish(self, reason: str, *, at_stop: bool = False) -> Iterator[str]:
        """The row's last events: held-back text (unless a stop string ended it), then the
        finish reason and token count."""
        if self.ended:
            return
        self.ended = True
        rest = self.held if at_stop else self.held + self.text.rest()
        self.held = ""
        if rest or self.waiting:
            yield self._event(rest)
        yield json.dumps({"index": self.index, "finish_reason": reason,
                          "completion_tokens": self.count})

    def _event(self, text: str) -> str:
        item: dict[str, Any] = {"index": self.index, "text": text}
        if self.sampling.logprobs is not None:
            item["logprobs"] = [decoding.token_entry(self.tokenizer, r) for r in self.waiting]
            self.waiting = []
        return json.dumps(item)


class _Call:
    """A plain callable as a logits processor (transformers calls ``processor(ids, scores)``)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``fn``'s answer."""
        return self.fn(input_ids, scores)


def _cancel_criteria(*events: threading.Event) -> Any:
    """A StoppingCriteria that ends generation once any of ``events`` is set."""
    import torch
    from transformers import StoppingCriteria

    class _EventStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            stop = any(event.is_set() for event in events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool,
                              device=input_ids.device)

    return _EventStop()


class LLMRuntime(Runtime):
    """A loaded causal LM and its tokenizer, answering ``generate`` and ``generate_stream``.

    ``max_context`` is the most tokens (prompt plus reply) the model can attend to, or
    ``None`` when the model does not say. Prompts that leave no room for one new token are
    refused with a :class:`RequestError`; replies are cut where the context ends.
    """

    def __init__(self, model: Any, tokenizer: Any, *, algo: str, device: str) -> None:
        self.kind = AgentKind(algo=algo, llm=True)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.max_context = _max_context(model, tokenizer)
        # No token covers more characters than the vocabulary's longest entry (doubled, for
        # normalisation and added special tokens), so a prompt longer than this many
        # characters cannot fit the context: it is refused before the tokenizer reads it.
        self.max_prompt_chars = (None if self.max_context is None
                                 else self.max_context * (_longest_token(tokenizer) + 4) * 2)
        # The ids of the last few prompts: the stream route checks a prompt, then encodes it.
        self._recent_ids: OrderedDict[str, list[int]] = OrderedDict()
        self._ids_lock = threading.Lock()
        self._lock = threading.Lock()
        self._closed = False

    # -- prompts -------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]]) -> str:
        """Render chat ``messages`` as one prompt that ends where the assistant's turn starts.

        Uses the tokenizer's chat template when it has one, else a plain "Role: text" transcript.
        """
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list of {role, content} objects.")
        for index, message in enumerate(messages):
            if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                    or not isinstance(message.get("content"), str)):
                raise RequestError(
                    f"messages[{index}] must be an object with string 'role' and 'content'."
                )
        if getattr(self.tokenizer, "chat_template", None):
            from jinja2 import TemplateError

            try:
                text = self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            except TemplateError as exc:
                raise RequestError(f"This model's chat template refused the messages: {exc}") \
                    from exc
            return str(text)
        lines = [f"{_FALLBACK_ROLES.get(m['role'], m['role'].title())}: {m['content']}"
                 for m in messages]
        return "\n".join([*lines, "Assistant:"])

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        """Like :meth:`format_chat`, but a tokenizer without a chat template gets the demo chat
        model's turn format (``<|role|>\\n...<|end|>``) instead of a plain transcript: what the
        OpenAI routes promise (the Arena routes keep :meth:`format_chat`).

        ``tools`` (OpenAI's function list) go to the template as ``tools``; messages may carry
        ``tool_calls`` and have role ``tool`` (see ``CHAT_TEMPLATE`` for the convention).
        """
        self._check_messages(messages)
        template = None if getattr(self.tokenizer, "chat_template", None) else CHAT_TEMPLATE
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=template, tools=tools or None, tokenize=False,
                add_generation_prompt=True)
        except TemplateError as exc:
            raise RequestError(f"This model's chat template refused the messages: {exc}") \
                from exc
        return str(text)

    @staticmethod
    def _check_messages(messages: Any) -> None:
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list of {role, content} objects.")
        for index, message in enumerate(messages):
            if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                    or not isinstance(message.get("content"), str)):
                raise RequestError(
                    f"messages[{index}] must be an object with string 'role' and 'content'.")

    def fim_prompt(self, prompt: str, suffix: str) -> str:
        """A fill-in-the-middle prompt (the text between ``prompt`` and ``suffix``), for models
        whose tokenizer has FIM tokens; :class:`RequestError` for the others."""
        vocab = self.tokenizer.get_vocab()
        for pre, suf, mid in _FIM_TOKENS:
            if pre in vocab and suf in vocab and mid in vocab:
                return f"{pre}{prompt}{suf}{suffix}{mid}"
        raise RequestError("suffix needs a model trained for fill-in-the-middle (a tokenizer "
                           "with <|fim_prefix|>/<|fim_suffix|>/<|fim_middle|> tokens); this one "
                           "has none. Leave suffix out.")

    def count_tokens(self, prompt: str) -> int:
        """How many tokens ``prompt`` takes, counted the way :meth:`generate` encodes it."""
        return len(self._token_ids(prompt))

    def check_prompt(self, prompt: str) -> int:
        """The token count of ``prompt``; :class:`RequestError` if it leaves no room to reply."""
        self._check_chars(prompt, None)
        count = self.count_tokens(prompt)
        self._check_length(count, None)
        return count

    def _check_chars(self, prompt: Any, index: int | None) -> None:
        if (self.max_prompt_chars is not None and isinstance(prompt, str)
                and len(prompt) > self.max_prompt_chars):
            which = "The prompt" if index is None else f"Prompt {index}"
            raise RequestError(
                f"{which} is {len(prompt)} characters long; this model reads at most "
                f"{self.max_context} tokens, prompt and reply together, which no text over "
                f"{self.max_prompt_chars} characters fits. Shorten it.")

    def _token_ids(self, prompt: str) -> list[int]:
        # Always called the same way (no padding, no truncation): the fast tokenizer then never
        # changes its settings, which is what makes concurrent calls from threads safe.
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            vocab = len(self.tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise RequestError(f"The prompt holds token id {bad}, but this model's "
                                   f"vocabulary has ids 0 to {vocab - 1}.")
            return list(prompt)
        if not isinstance(prompt, str):
            raise RequestError(f"A prompt must be text, not {type(prompt).__name__}.")
        with self._ids_lock:
            cached = self._recent_ids.get(prompt)
        if cached is not None:
            return cached
        try:
            ids = list(self.tokenizer(prompt)["input_ids"])
        except UnicodeEncodeError as exc:  # a lone surrogate from JSON's \ud800
            raise RequestError(f"The prompt is not valid Unicode text: {exc.reason}.") from exc
        with self._ids_lock:
            self._recent_ids[prompt] = ids
            while len(self._recent_ids) > 8:
                self._recent_ids.popitem(last=False)
        return ids

    def _check_length(self, count: int, index: int | None) -> None:
        which = "The prompt" if index is None else f"Prompt {index}"
        if count == 0:
            raise RequestError(f"{which} is empty; send at least one character of text.")
        if self.max_context is not None and count >= self.max_context:
            raise RequestError(
                f"{which} is {count} tokens long but this model reads at most "
                f"{self.max_context} tokens, prompt and reply together; shorten it to "
                f"{self.max_context - 1} tokens or fewer (drop earlier chat turns, for example)."
            )

    def _encode(self, prompts: list[str]) -> tuple[dict[str, Any], int]:
        """Left-padded tensors for ``prompts`` and the room left for new tokens (-1: no limit)."""
        import torch

        for index, prompt in enumerate(prompts):
            self._check_chars(prompt, None if len(prompts) == 1 else index)
        encoded = [self._token_ids(prompt) for prompt in prompts]
        for index, ids in enumerate(encoded):
            self._check_length(len(ids), None if len(prompts) == 1 else index)
        width = max(len(ids) for ids in encoded)
        # Left padding: every row's last real token sits at the end, where generation goes on.
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id,
                               dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        room = -1 if self.max_context is None else self.max_context - width
        tensors = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        return tensors, room

    def _generation_config(self, sampling: Sampling, room: int) -> Any:
        # Start from the checkpoint's own settings: they carry its EOS ids (several, for some
        # chat models). Then make the request's settings the only sampling knobs in play.
        config = copy.deepcopy(self.model.generation_config)
        limit = sampling.max_new_tokens if room < 0 else min(sampling.max_new_tokens, room)
        config.max_new_tokens = limit
        config.max_length = None
        config.pad_token_id = self.tokenizer.pad_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        config.do_sample = sampling.do_sample
        if sampling.do_sample:
            config.temperature = sampling.temperature
            config.top_p = sampling.top_p
        else:
            config.temperature = None
            config.top_p = None
            config.top_k = None
        return config

    # -- routes --------------------------------------------------------------------------

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """One completion per prompt (the new text only), generated as one batch."""
        return [c["text"] for c in self.complete(prompts, params)["choices"]]

    def complete(self, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """:meth:`generate` with the details the OpenAI routes report, as plain JSON.

        Returns ``{"choices": [{"text", "finish_reason", "completion_tokens"}, ...],
        "prompt_tokens": [...]}``, one of each per prompt. ``finish_reason`` is ``"stop"`` (an
        end-of-turn token, or one of ``params["stop"]``, which is cut from the text) or
        ``"length"`` (``max_new_tokens`` or the context ran out). With ``params["seed"]`` a
        sampled reply is repeatable: the seed is set under the model's lock right before
        generating (the batcher runs seeded requests alone, since a batch changes the draws).
        """
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        if not prompts:
            return {"choices": [], "prompt_tokens": []}
        sampling = Sampling.from_params(params)
        enc, room = self._encode(list(prompts))
        width = enc["input_ids"].shape[1]
        extra: dict[str, Any] = {}
        if sampling.stop:
            extra["stopping_criteria"] = StoppingCriteriaList(
                [completions.stop_criteria(self.tokenizer, sampling.stop, width)])
        tap = (decoding.TokenTap(len(prompts), top=sampling.logprobs)
               if sampling.logprobs is not None else None)
        processors = self._processors(sampling, len(prompts), tap)
        if processors:
            extra["logits_processor"] = LogitsProcessorList(processors)
        if tap is not None:
            extra["streamer"] = tap
        with self._lock:
            self._check_open()
            config = self._generation_config(sampling, room)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            with torch.inference_mode():
                out = self.model.generate(**enc, generation_config=config, **extra)
            new_tokens = out[:, width:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        eos = completions.eos_ids(config, self.tokenizer)
        choices = []
        for row, (ids, text) in enumerate(zip(new_tokens.tolist(), texts, strict=True)):
            cut, stopped = completions.cut_at_stop(str(text), sampling.stop)
            count, finish = completions.row_outcome(
                ids, eos=eos, pad=self.tokenizer.pad_token_id, stopped=stopped)
            choice: dict[str, Any] = {"text": cut, "finish_reason": finish,
                                      "completion_tokens": count}
            if tap is not None:
                choice["logprobs"] = self._logprob_entries(tap.rows[row][:count], cut)
            if sampling.echo:
                choice["text"] = self._prompt_text(prompts[row]) + cut
            choices.append(choice)
        return {"choices": choices,
                "prompt_tokens": [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]}

    def _processors(self, sampling: Sampling, rows: int,
                    tap: decoding.TokenTap | None) -> list[Any]:
        """The request's logits processors: the logprob recorder first (it reads the raw
        logits), then logit_bias, then the grammar mask (which must see the biased logits)."""
        processors: list[Any] = []
        if tap is not None:
            processors.append(_Call(tap.recorder))
        if sampling.logit_bias:
            processors.append(decoding.LogitBias(sampling.logit_bias, len(self.tokenizer)))
        if sampling.grammar is not None:
            processors.append(self._grammars().processor(sampling.grammar, rows))
        return processors

    def _grammars(self) -> decoding.GrammarBook:
        book = getattr(self, "_grammar_book", None)
        if book is None:
            eos = completions.eos_ids(self.model.generation_config, self.tokenizer)
            book = decoding.GrammarBook(self.tokenizer, len(self.tokenizer), eos)
            self._grammar_book = book
        return book

    def _special_ids(self) -> set[int]:
        return {int(i) for i in self.tokenizer.all_special_ids}

    def _logprob_entries(self, records: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
        """OpenAI chat-shaped logprobs of the tokens that make ``text`` (no EOS, nothing a stop
        string cut off)."""
        special = self._special_ids()
        kept: list[dict[str, Any]] = []
        ids: list[int] = []
        for record in records:
            if record["id"] in special:
                continue
            if ids and len(self.tokenizer.decode(ids, skip_special_tokens=True)) >= len(text):
                break
            ids.append(record["id"])
            kept.append(decoding.token_entry(self.tokenizer, record))
        return kept

    def _prompt_text(self, prompt: Any) -> str:
        return prompt if isinstance(prompt, str) else str(self.tokenizer.decode(prompt))

    def stream(
        self, prompt: str, params: dict[str, Any], cancelled: Any
    ) -> Generator[str, None, None]:
        """Yield the completion of ``prompt`` in pieces (about a word each) as it is generated.

        The prompt is checked before this returns, so a bad one raises :class:`RequestError`
        here, not halfway through a response. Generation starts on its own thread at the first
        ``next()`` and stops at the next token once ``cancelled`` is set or the caller stops
        iterating (closes the generator). An error inside generation is raised from the
        iteration, after the pieces produced before it.
        """
        sampling = Sampling.from_params(params)
        enc, room = self._encode([prompt])
        with self._lock:
            self._check_open()
            config = self._generation_config(sampling, room)
        return self._stream(enc, config, cancelled)

    def stream_completion(
        self, prompts: Any, params: dict[str, Any], cancelled: Any
    ) -> Generator[str, None, None]:
        """:meth:`stream` for the OpenAI routes: JSON events as strings, in this order.

        ``prompts`` is one prompt (text or token ids) or a list of them, generated as one
        batch. ``{"prompt_tokens": n}`` (all prompts) once they are accepted, then
        ``{"index": row, "text": piece}`` as each row's reply grows (with ``"logprobs"``, in
        :meth:`complete`'s shape, when asked; never text a stop string of ``params["stop"]``
        cuts: a piece that may start one is held back until the next shows), and for each row
        ``{"index", "finish_reason", "completion_tokens"}`` as :meth:`complete` reports them.
        With ``params["echo"]`` each row opens with its prompt's text. A bad prompt raises
        :class:`RequestError` before the first event.
        """
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                        and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]
        sampling = Sampling.from_params(params)
        enc, room = self._encode(list(prompts))
        tap = decoding.TokenTap(len(prompts), top=sampling.logprobs, live=True,
                                timeout=_STREAM_POLL_S)
        processors = self._processors(sampling, len(prompts), tap)
        with self._lock:
            self._check_open()
            config = self._generation_config(sampling, room)
        return self._stream_events(list(prompts), enc, config, sampling, tap=tap,
                                   processors=processors, cancelled=cancelled)

    def _stream_events(
        self, prompts: list[Any], enc: dict[str, Any], config: Any, sampling: Sampling,
        *, tap: decoding.TokenTap, processors: list[Any], cancelled: Any,
    ) -> Generator[str, None, None]:
        eos = completions.eos_ids(config, self.tokenizer)
        yield json.dumps({"prompt_tokens": int(enc["attention_mask"].sum())})
        if sampling.echo:
            for index, prompt in enumerate(prompts):
                yield json.dumps({"index": index, "text": self._prompt_text(prompt)})
        rows = [_StreamRow(row, self.tokenizer, sampling, eos, self._special_ids())
                for row in range(len(prompts))]
        # The model stops each row at a stop string itself, as in complete(), so the token
        # counts match.
        extra = ([completions.stop_criteria(self.tokenizer, sampling.stop,
                                            enc["input_ids"].shape[1])]
                 if sampling.stop else [])
        steps = self._stream(enc, config, cancelled, streamer=tap, seed=sampling.seed,
                             criteria=extra, processors=processors)
        try:
            for step in steps:
                for stream_row, record in zip(rows, step, strict=True):
                    yield from stream_row.add(record)
        finally:
            steps.close()  # stops the model at its next token when the consumer left early
        for stream_row in rows:
            yield from stream_row.finish(completions.LENGTH)

    def _stream(
        self, enc: dict[str, Any], config: Any, cancelled: Any, *, streamer: Any = None,
        seed: int | None = None, criteria: list[Any] | None = None,
        processors: list[Any] | None = None,
    ) -> Generator[Any, None, None]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

        # A queue-polling timeout lets the loop notice cancellation while another request
        # still holds the model.
        if streamer is None:
            streamer = TextIteratorStreamer(
                self.tokenizer, skip_prompt=True, skip_special_tokens=True,
                timeout=_STREAM_POLL_S)
        abandoned = threading.Event()
        stopping = StoppingCriteriaList([_cancel_criteria(cancelled, abandoned), *(criteria or [])])
        failures: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self._check_open()
                    if cancelled.is_set() or abandoned.is_set():
                        streamer.end()
                        return
                    if seed is not None:
                        torch.manual_seed(seed)
                    self.model.generate(**enc, generation_config=config, streamer=streamer,
                                        stopping_criteria=stopping,
                                        logits_processor=LogitsProcessorList(processors or []))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer and re-raised there
                failures.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="llm-stream", daemon=True)
        worker.start()
        try:
            while not cancelled.is_set():
                try:
                    piece = next(streamer)
                except queue.Empty:
                    if not worker.is_alive() and streamer.text_queue.empty():
                        break
                    continue
                except StopIteration:
                    break
                if piece and not cancelled.is_set():
                    yield piece
        finally:
            abandoned.set()
        if failures and not cancelled.is_set():
            raise failures[0]

    def probe(self) -> None:
        """Generate one token greedily; raises if the model cannot."""
        prompt = "Hello"
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.format_chat([{"role": "user", "content": "Hello"}])
        self.generate([prompt], {"max_new_tokens": 1, "temperature": 0.0, "do_sample": False})

    def close(self) -> None:
        """Drop the model (and the GPU memory it held)."""
        with self._lock:
            self._closed = True
            self.model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("This runtime was closed; deploy the agent again to use it.")


def _longest_token(tokenizer: Any) -> int:
    """Characters of the longest vocabulary entry (byte-level entries count their bytes)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary: assume long tokens
        return 256
    return max((len(token) for token in vocab), default=256)


def _max_context(model: Any, tokenizer: Any) -> int | None:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    # Tokenizers without a real limit report a huge sentinel (about 1e30).
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10_000_000 else None


# -- loading ---------------------------------------------------------------------------------


def _pick_device(requested: str) -> str:
    import torch

    if requested.startswith("cuda") and torch.cuda.is_available():
        return requested
    return "cpu"


def _has_safetensors(folder: Path, stem: str) -> bool:
    return (folder / f"{stem}.safetensors").is_file() or (
        folder / f"{stem}.safetensors.index.json"
    ).is_file()


def _adapter_folder(folder: Path) -> Path | None:
    for candidate in (folder, *(folder / sub for sub in ADAPTER_SUBFOLDERS)):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def _load_model(source: str | Path, device: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    if isinstance(source, Path) and not _has_safetensors(source, "model"):
        pickled = sorted(p.name for p in source.glob("*.bin"))
        hint = (f" It has {', '.join(pickled)}: pickled weights, which the workbench will not "
                "load because unpickling can run code. Re-save the model with "
                "save_pretrained(..., safe_serialization=True).") if pickled else ""
        raise RuntimeLoadError(f"{source} has no model.safetensors.{hint}")
    dtype: Any = torch.float32 if device == "cpu" else "auto"
    with quiet_loading():
        return AutoModelForCausalLM.from_pretrained(
            source, use_safetensors=True, local_files_only=True, trust_remote_code=False,
            dtype=dtype,
        )


def _load_tokenizer(source: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source, local_files_only=True, trust_remote_code=False
    )
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RuntimeLoadError(
                f"The tokenizer in {source} has neither a pad nor an EOS token, so replies "
                "cannot be batched or ended; save it with eos_token set."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_base_model(experiment: Experiment, adapter_dir: Path) -> str | Path:
    """Where the base model of an adapter checkpoint is: a local folder or a cached Hub id.

    Relative paths are taken from the workspace root (the folder holding ``experiments/``).
    """
    import json

    reference = experiment.info.base_model
    if not reference:
        try:
            config = json.loads((adapter_dir / "adapter_config.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise RuntimeLoadError(f"{adapter_dir / 'adapter_config.json'} is unreadable: {exc}") \
                from exc
        reference = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not reference:
        raise RuntimeLoadError(
            f"Experiment {experiment.name!r} holds LoRA adapters but names no base model; set "
            "base_model in its experiment.json to the base model's folder or Hugging Face id."
        )
    path = Path(reference).expanduser()
    workspace = experiment.folder.parent.parent
    candidate = path if path.is_absolute() else workspace / path
    if candidate.is_dir():
        return candidate
    if path.is_absolute() or reference.startswith(".") or reference.count("/") > 1:
        raise RuntimeLoadError(
            f"Base model folder {candidate} (base_model {reference!r} of experiment "
            f"{experiment.name!r}) does not exist; restore it or point base_model at it."
        )
    return reference  # a Hub id such as "Qwen/Qwen2.5-0.5B", served from the local cache only


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> Runtime:
    """Load a full model or adapter checkpoint folder as an :class:`LLMRuntime`."""
    folder = checkpoint.path
    if not folder.is_dir():
        raise RuntimeLoadError(
            f"{folder} is a file, but LLM checkpoints are folders saved with save_pretrained "
            "(a full model, or a PEFT adapter)."
        )
    target = _pick_device(device)
    adapter_dir = _adapter_folder(folder)
    try:
        if adapter_dir is not None:
            model, tokenizer = _load_adapter(experiment, folder, adapter_dir, target)
        elif (folder / "config.json").is_file():
            if not _has_tokenizer(folder):
                raise RuntimeLoadError(
                    f"{folder} has a model but no tokenizer files; save the tokenizer into "
                    "the same folder with tokenizer.save_pretrained."
                )
            model, tokenizer = _load_model(folder, target), _load_tokenizer(folder)
        else:
            raise RuntimeLoadError(
                f"{folder} holds neither config.json (a full model) nor adapter_config.json "
                "(a PEFT adapter); it is not a Hugging Face checkpoint."
            )
        model.to(target)
        model.eval()
    except RuntimeLoadError:
        raise
    except Exception as exc:
        raise RuntimeLoadError(
            f"Could not load LLM checkpoint {folder}: {type(exc).__name__}: {exc}"
        ) from exc
    return LLMRuntime(model, tokenizer, algo=experiment.info.algorithm, device=target)


def _load_adapter(
    experiment: Experiment, folder: Path, adapter_dir: Path, device: str
) -> tuple[Any, Any]:
    from peft import PeftModel

    if not _has_safetensors(adapter_dir, "adapter_model"):
        raise RuntimeLoadError(
            f"{adapter_dir} has no adapter_model.safetensors; the workbench loads adapters "
            "only from safetensors (re-save with safe_serialization=True)."
        )
    base_source = resolve_base_model(experiment, adapter_dir)
    try:
        base = _load_model(base_source, device)
    except OSError as exc:
        raise RuntimeLoadError(
            f"Base model {base_source!s} could not be loaded: {exc}. The workbench does not "
            "download models: put the base model in the Hugging Face cache or a folder, and "
            "set base_model in experiment.json to it."
        ) from exc
    tokenizer_source: str | Path = base_source
    for candidate in (adapter_dir, folder):
        if _has_tokenizer(candidate):
            tokenizer_source = candidate
            break
    tokenizer = _load_tokenizer(tokenizer_source)
    with quiet_loading():
        peft_model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False,
                                               local_files_only=True)
    # Merged once, the adapter costs nothing per token.
    return peft_model.merge_and_unload(), tokenizer
