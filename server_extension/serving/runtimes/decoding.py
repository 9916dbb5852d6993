"""Per-token controls of LLM decoding for the OpenAI routes: logit bias, logprobs, grammars.

Each piece plugs into ``transformers``' ``generate``:

* :class:`LogitBias` - a logits processor adding a fixed bias to chosen token ids;
* :class:`Grammar` - a logits processor masking every token that would break a grammar (a JSON
  schema, or any JSON object), one matcher per row, built with ``xgrammar``;
* :class:`TokenTap` - a streamer that sees each step's chosen token of every row, pairs it with
  the log-probabilities a :class:`TokenTap.recorder` saw of the model's raw logits, and keeps
  (or queues, for a stream) one record per token.

Why xgrammar rather than llguidance (both installed and measured on this 2-core CPU with the
demo chat model's 512-token byte-level BPE tokenizer, a 3-field JSON schema, 20 random walks):
xgrammar took 0.8 ms to compile the schema and 0.02-0.04 ms per token (fill mask, apply,
accept); llguidance 2.8 ms and 0.06-0.16 ms per token, with one 120 ms/token cold start on its
first grammar. Both are far below a model step; xgrammar is the cheaper of the two, and the
one vLLM and SGLang default to. Its cost is a heavy install (it requires triton).
"""

from __future__ import annotations

import json
import queue
import threading
from collections import OrderedDict
from typing import Any

from server_extension.serving.runtimes.base import RequestError

MAX_TOP_LOGPROBS = 20
_GRAMMAR_CACHE = 32


class LogitBias:
    """Add ``bias[token]`` to that token's logit at every step (OpenAI's ``logit_bias``)."""

    def __init__(self, bias: tuple[tuple[int, float], ...], vocab: int) -> None:
        import torch

        for token, _ in bias:
            if not 0 <= token < vocab:
                raise RequestError(f"logit_bias names token {token}, but this model's "
                                   f"vocabulary has ids 0 to {vocab - 1}.")
        self.ids = torch.tensor([t for t, _ in bias], dtype=torch.long)
        self.values = torch.tensor([b for _, b in bias], dtype=torch.float32)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``scores`` with the biases added."""
        scores[:, self.ids.to(scores.device)] += self.values.to(scores.device, scores.dtype)
        return scores


class GrammarBook:
    """Compiled grammars of one tokenizer, the last few kept (a schema compiles in ~1 ms)."""

    def __init__(self, tokenizer: Any, vocab: int, eos: set[int]) -> None:
        import xgrammar

        self._xgr = xgrammar
        self.vocab = vocab
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab,
                                                       stop_token_ids=sorted(eos) or None)
        self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, spec: str) -> Any:
        """The compiled grammar of ``spec``: ``"json"`` or a JSON schema's text."""
        with self._lock:
            hit = self._compiled.get(spec)
            if hit is not None:
                self._compiled.move_to_end(spec)
                return hit
        try:
            if spec == "json":  # any JSON object (OpenAI's json_object mode), no free whitespace
                compiled = self._compiler.compile_json_schema(
                    '{"type": "object"}', strict_mode=False, any_whitespace=False)
            else:
                compiled = self._compiler.compile_json_schema(spec, strict_mode=True,
                                                              any_whitespace=False)
        except Exception as exc:  # xgrammar raises plain RuntimeErrors
            raise RequestError(f"The JSON schema could not be turned into a grammar: {exc}") \
                from exc
        with self._lock:
            self._compiled[spec] = compiled
            while len(self._compiled) > _GRAMMAR_CACHE:
                self._compiled.popitem(last=False)
        return compiled

    def processor(self, spec: str, rows: int) -> Grammar:
        """A fresh :class:`Grammar` over ``rows`` rows (processors keep per-request state)."""
        return Grammar(self._xgr, self.compile(spec), rows, self.vocab)


class Grammar:
    """Mask, row by row, every token that the grammar does not allow next.

    A row whose grammar is complete may only end (its EOS token); a row that already ended
    (padding after EOS) is left alone.
    """

    def __init__(self, xgr: Any, compiled: Any, rows: int, vocab: int) -> None:
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(rows)]
        self.mask = xgr.allocate_token_bitmask(rows, vocab)
        self.vocab = vocab
        self._started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``scores`` with the disallowed tokens at minus infinity."""
        if self._started:
            last = input_ids[:, -1].tolist()
            for matcher, token in zip(self.matchers, last, strict=True):
                if not matcher.is_terminated():
                    matcher.accept_token(int(token))
        self._started = True
        for row, matcher in enumerate(self.matchers):
            if matcher.is_terminated():
                self.mask[row].fill_(-1)  # every token allowed: the row is padding now
            else:
                matcher.fill_next_token_bitmask(self.mask, row)
        width = scores.shape[-1]
        if width > self.vocab:  # an embedding padded past the tokenizer: never those ids
            scores[:, self.vocab:] = float("-inf")
        self._xgr.apply_token_bitmask_inplace(scores[:, :self.vocab], self.mask.to(scores.device))
        return scores


class TokenTap:
    """A ``generate`` streamer keeping each row's chosen tokens (and their logprobs).

    With ``top`` not None, :attr:`recorder` (a logits processor that must run first, on the
    raw logits) keeps each step's log-softmax, and every token gets
    ``{"id", "logprob", "top": [[id, logprob], ...]}`` (``top`` most likely, highest first).
    With ``live`` set, each step is also queued as a list of row records, read by iterating
    (``queue.Empty`` after ``timeout`` seconds, ``StopIteration`` at the end), which is how
    a stream sends tokens as they come.
    """

    def __init__(self, rows: int, *, top: int | None, live: bool = False,
                 timeout: float = 0.1) -> None:
        self.rows = [[] for _ in range(rows)]  # type: list[list[dict[str, Any]]]
        self.top = top
        self.live = live
        self.timeout = timeout
        self.text_queue: queue.Queue[Any] = queue.Queue()
        self._pending: Any = None
        self._prompt_seen = False

    def recorder(self, input_ids: Any, scores: Any) -> Any:
        """Note the log-probabilities of this step's raw logits; scores pass unchanged."""
        if self.top is not None:
            self._pending = scores.float().log_softmax(dim=-1)
        return scores

    def put(self, value: Any) -> None:
        """Called by ``generate``: first with the prompt (skipped), then each step's tokens."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = [int(t) for t in value.reshape(-1).tolist()]
        step = []
        for row, token in enumerate(tokens):
            record: dict[str, Any] = {"id": token}
            if self._pending is not None:
                dist = self._pending[row]
                record["logprob"] = float(dist[token])
                if self.top:
                    values, ids = dist.topk(min(self.top, dist.shape[-1]))
                    record["top"] = [[int(i), float(v)] for i, v in
                                     zip(ids.tolist(), values.tolist(), strict=True)]
                else:
                    record["top"] = []
            self.rows[row].append(record)
            step.append(record)
        self._pending = None
        if self.live:
            self.text_queue.put(step)

    def end(self) -> None:
        """Called by ``generate`` when it is done (or by the stream on a failure)."""
        if self.live:
            self.text_queue.put(None)

    def __iter__(self) -> TokenTap:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        step = self.text_queue.get(timeout=self.timeout)
        if step is None:
            raise StopIteration
        return list(step)


class RowText:
    """The text of one row's reply, decoded as its tokens come, in safe increments.

    A byte-level token can end in the middle of a character; the text after it is held back
    until the character is whole.
    """

    def __init__(self, tokenizer: Any, special: set[int]) -> None:
        self.tokenizer = tokenizer
        self.special = special
        self.ids: list[int] = []
        self.sent = 0

    def add(self, token: int) -> str:
        """The new text that ``token`` completes (maybe empty)."""
        if token in self.special:
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        new, self.sent = text[self.sent:], len(text)
        return new

    def rest(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        new, self.sent = text[self.sent:], len(text)
        return new


def token_entry(tokenizer: Any, record: dict[str, Any]) -> dict[str, Any]:
    """One token's logprobs in OpenAI's chat shape (``token``, ``logprob``, ``bytes``,
    ``top_logprobs``)."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token])
        return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}

    entry = one(record["id"], record["logprob"])
    entry["top_logprobs"] = [one(t, lp) for t, lp in record.get("top", [])]
    return entry


def _finite(value: float) -> float:
    # JSON has no -Infinity; OpenAI clients accept a very negative number.
    return value if value > -9999.0 else -9999.0


def grammar_spec(grammar: Any) -> str | None:
    """The grammar key of a request's ``params["grammar"]``: ``"json"``, a schema's canonical
    text, or None when the request has no grammar."""
    if grammar is None:
        return None
    if grammar == "json":
        return "json"
    if isinstance(grammar, dict):
        return json.dumps(grammar, sort_keys=True)
    raise RequestError("grammar must be \"json\" or a JSON schema object.")
