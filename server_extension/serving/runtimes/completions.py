"""What OpenAI-style completions need beyond plain ``generate``: stop strings, token counts and
finish reasons, worked out from the token ids the model produced.

Used by :class:`~server_extension.serving.runtimes.llm.LLMRuntime` (``complete`` and
``stream_completion``); nothing here holds state shared between threads. Example::

    text, stopped = cut_at_stop("Paris.\\nUser: next", ("\\nUser:",))   # ("Paris.", True)
    count, finish = row_outcome([11, 12, 2, 0, 0], eos={2}, pad=0, stopped=False)  # (3, "stop")
"""

from __future__ import annotations

from typing import Any

STOP = "stop"
LENGTH = "length"


def eos_ids(generation_config: Any, tokenizer: Any) -> set[int]:
    """The token ids that end a reply: the checkpoint's (several, for some chat models)."""
    ids = generation_config.eos_token_id
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in ids} if isinstance(ids, (list, tuple)) else {int(ids)}


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (which is left out), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop string.

    A stream keeps them back until the next piece shows whether a stop string follows, so the
    client never receives text that the stop string should have cut.
    """
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def row_outcome(ids: list[int], *, eos: set[int], pad: int | None,
                stopped: bool) -> tuple[int, str]:
    """Tokens generated for one row of a batch (its end-of-turn token included) and why it
    ended: ``"stop"`` at an end-of-turn token or stop string, ``"length"`` otherwise."""
    for index, token in enumerate(ids):
        if token in eos:
            return index + 1, STOP
    count = len(ids)
    # Rows that ended early (a stop string) are padded to the batch's width.
    while stopped and count and ids[count - 1] == pad:
        count -= 1
    return count, STOP if stopped else LENGTH


def stop_criteria(tokenizer: Any, stops: tuple[str, ...], prompt_width: int) -> Any:
    """A StoppingCriteria ending each row once its reply contains one of ``stops``.

    Only the last few tokens of each reply are decoded per step: a stop string spans at most
    one token per character, plus a few for partial characters.
    """
    import torch
    from transformers import StoppingCriteria

    window = max(len(s) for s in stops) + 4

    class _StopText(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            tails = input_ids[:, prompt_width:][:, -window:]
            texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool,
                                device=input_ids.device)

    return _StopText()


def counting_streamer(tokenizer: Any, eos: set[int], *, timeout: float) -> Any:
    """A ``TextIteratorStreamer`` (prompt and special tokens skipped) that also counts the
    tokens generated (``.generated``) and notes an end-of-turn token (``.saw_eos``)."""
    from transformers import TextIteratorStreamer

    class _Counting(TextIteratorStreamer):
        generated = 0
        saw_eos = False

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                ids = [int(i) for i in value.reshape(-1).tolist()]
                self.generated += len(ids)
                self.saw_eos = self.saw_eos or bool(eos.intersection(ids))
            super().put(value)

    return _Counting(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
