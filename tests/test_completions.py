"""Pure helpers behind the OpenAI routes: stop strings, finish reasons, request checks."""

from __future__ import annotations

from typing import Any

import pytest

from server_extension.handlers.openai_schema import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    MAX_TOKENS,
    OpenAIError,
    parse_chat,
    parse_completion,
)
from server_extension.serving.runtimes.completions import cut_at_stop, held_back, row_outcome

CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


def test_cut_at_the_earliest_stop_string() -> None:
    assert cut_at_stop("a, b. c", (".", ",")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
    assert cut_at_stop("abc", ()) == ("abc", False)


@pytest.mark.parametrize(("text", "stops", "kept"), [
    ("Paris\nUs", ("\nUser:",), 3),  # "\nUs" may grow into the stop string
    ("Paris\n", ("\nUser:",), 1),
    ("Paris", ("\nUser:",), 0),
    ("ab", ("bc", "abx"), 2),  # the longest possible start wins
    ("", ("x",), 0),
])
def test_stream_holds_back_what_may_start_a_stop_string(text: str, stops: tuple[str, ...],
                                                        kept: int) -> None:
    assert held_back(text, stops) == kept


def test_row_outcome_counts_to_the_end_of_turn_token() -> None:
    assert row_outcome([5, 6, 2, 0, 0], eos={2}, pad=0, stopped=False) == (3, "stop")
    assert row_outcome([5, 6, 7], eos={2}, pad=0, stopped=False) == (3, "length")
    # A row a stop string ended is padded to the batch's width; the padding is not counted.
    assert row_outcome([5, 6, 0, 0], eos={2}, pad=0, stopped=True) == (2, "stop")


def test_chat_defaults_and_aliases() -> None:
    request = parse_chat(dict(CHAT), model_id="m")
    assert request.params == {"max_new_tokens": MAX_TOKENS, "temperature": 1.0, "top_p": 1.0,
                              "do_sample": True, "stop": []}
    assert (request.n, request.stream, request.include_usage) == (1, False, False)
    greedy = parse_chat({**CHAT, "temperature": 0, "max_completion_tokens": 5, "stop": "x",
                         "seed": 7, "n": None}, model_id="m")
    assert greedy.params == {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0,
                             "do_sample": False, "stop": ["x"], "seed": 7}
    assert parse_chat({**CHAT, "max_tokens": 5, "max_completion_tokens": 5},
                      model_id="m").params["max_new_tokens"] == 5
    developer = parse_chat({**CHAT, "messages": [{"role": "developer", "content": "Be brief"}]},
                           model_id="m")
    assert developer.messages == [{"role": "system", "content": "Be brief"}]
    completion = parse_completion({"model": "m", "prompt": "Hi"}, model_id="m")
    assert completion.params["max_new_tokens"] == COMPLETIONS_DEFAULT_MAX_TOKENS
    assert completion.prompts == ["Hi"]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "max_completion_tokens"),
    ({"model": None}, 400, "model"),
    ({"model": "other"}, 404, "model"),
    ({"stream": "yes"}, 400, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, 400, "stream_options"),
    ({"stream": True, "stream_options": {"chunk_size": 3}}, 400, "stream_options"),
    ({"messages": [{"role": "user", "content": None}]}, 400, "messages[0].content"),
    # Tool calls are supported now: a malformed one is refused naming the item.
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{}]}]}, 400,
     "messages[0].tool_calls[0]"),
    ({"tools": [{"type": "function"}]}, 400, "tools[0]"),
])
def test_chat_refusals_name_the_parameter(body: dict[str, Any], status: int,
                                          param: str) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_chat({**CHAT, **body}, model_id="m")
    assert (info.value.status, info.value.param) == (status, param)
    assert set(info.value.to_json()["error"]) == {"message", "type", "param", "code"}


# Token ids ([1, 2, 3]) are prompts now; a list mixing ids and text is not.
@pytest.mark.parametrize("prompt", [None, [], [1, "a"], [" "], ["a"] * 65])
def test_completion_prompts_are_text(prompt: Any) -> None:
    with pytest.raises(OpenAIError) as info:
        parse_completion({"model": "m", "prompt": prompt}, model_id="m")
    assert info.value.param == "prompt"


def test_prompts_times_n_is_bounded() -> None:
    parse_completion({"model": "m", "prompt": ["a"] * 4, "n": 16}, model_id="m")
    with pytest.raises(OpenAIError, match="at most 64 completions"):
        parse_completion({"model": "m", "prompt": ["a"] * 5, "n": 16}, model_id="m")
