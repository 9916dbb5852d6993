"""Timed calls through the ``openai`` client, shared by the OpenAI benchmarks."""

from __future__ import annotations

import time
from typing import Any


def timed_chat(client: Any, **kwargs: Any) -> tuple[float, int, str]:
    """One chat completion: seconds, completion tokens and the text."""
    started = time.perf_counter()
    answer = client.chat.completions.create(**kwargs)
    return (time.perf_counter() - started, answer.usage.completion_tokens,
            answer.choices[0].message.content or "")


def timed_chat_stream(client: Any, **kwargs: Any) -> tuple[float, float, int, str]:
    """One streamed chat completion: seconds to the first content chunk and to the end,
    completion tokens (from the usage chunk) and the text."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    parts: list[str] = []
    for chunk in client.chat.completions.create(stream=True,
                                                stream_options={"include_usage": True},
                                                **kwargs):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        content = chunk.choices[0].delta.content if chunk.choices else None
        if content:
            if not parts:
                first = time.perf_counter() - started
            parts.append(content)
    return first, time.perf_counter() - started, tokens, "".join(parts)
