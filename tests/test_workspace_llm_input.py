"""Hostile LLM input is a 4xx, never a 5xx: lone surrogates, denormal temperatures, control
characters, NULs, prompts too long to tokenize. One real server with the tiny chat model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from server_extension.demos.llm import SFT_EXPERIMENT, build_llm_demo
from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.base import RequestError
from server_extension.serving.runtimes.llm import LLMRuntime
from tests.servers import ServerProcess
from workbench_core.store import ExperimentStore

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 2, "temperature": 0.0, "do_sample": False}


@pytest.fixture(scope="module")
def chat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llm-input")
    build_llm_demo(root, quick=True)
    return root


@pytest.fixture(scope="module")
def chat(chat_root: Path) -> Iterator[dict[str, Any]]:
    server = ServerProcess(chat_root, extra_args=[
        "--AgentsWorkbenchApp.sessions_per_caller=5"]).start()
    try:
        agent = server.deploy("chat", SFT_EXPERIMENT, "final")
        yield {"server": server, "endpoint": agent["endpoint"],
               "headers": {"Authorization": f"Bearer {agent['api_key']}"}}
    finally:
        server.stop()


def post(chat: dict[str, Any], route: str, body: Any) -> requests.Response:
    return requests.post(f"{chat['endpoint']}/{route}", json=body, headers=chat["headers"],
                         timeout=60)


@pytest.mark.parametrize(("body", "needle"), [
    ({"prompts": ["\ud800"]}, "Unicode"),
    ({"prompts": ["ok", "tail \udfff"]}, "Unicode"),
    ({"prompts": ["a\x00b"]}, "NUL"),
    ({"prompts": ["hi"], "params": {"temperature": 1e-300, "do_sample": True}}, "temperature"),
    ({"prompts": ["hi"], "params": {"temperature": 5e-324}}, "temperature"),
    ({"prompts": ["hi"], "params": {"top_p": 1e-300, "temperature": 1e308}}, "temperature"),
    ({"prompts": ["x" * 1_000_001]}, "characters"),
    ({"prompts": ["hi"], "session_id": "\ud800"}, "session_id"),
])
def test_generate_refuses_hostile_text_and_params(chat: dict[str, Any], body: dict[str, Any],
                                                  needle: str) -> None:
    answer = post(chat, "generate", {"params": GREEDY, **body} if "params" not in body
                  else body)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["error"]


@pytest.mark.parametrize("prompt", ["\ud800", "x\x00", "y" * 1_000_001])
def test_stream_refuses_hostile_text(chat: dict[str, Any], prompt: str) -> None:
    answer = post(chat, "generate_stream", {"prompt": prompt, "params": GREEDY})
    assert answer.status_code == 400, answer.text


def test_control_characters_and_tiny_top_p_are_served(chat: dict[str, Any]) -> None:
    answer = post(chat, "generate", {"prompts": ["\x01\x07\x1b[31mred\x7f\u200b\ufeff"],
                                     "params": {**GREEDY}})
    assert answer.status_code == 200, answer.text
    sampled = post(chat, "generate", {"prompts": ["hi"], "params": {
        "max_new_tokens": 2, "temperature": 0.001, "top_p": 1e-300, "do_sample": True}})
    assert sampled.status_code == 200, sampled.text
    streamed = post(chat, "generate_stream", {"prompt": "\x1b\x08tab\there", "params": GREEDY})
    assert streamed.status_code == 200, streamed.text


class CountingTokenizer:
    """The real tokenizer, counting how many characters it was asked to read."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.chars_read = 0

    def __call__(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.chars_read += len(text)
        return self.inner(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_prompt_length_is_checked_before_tokenizing_and_once(chat_root: Path) -> None:
    experiment = ExperimentStore(chat_root).get(SFT_EXPERIMENT)
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.final_step()),
                           device="cpu")
    assert isinstance(runtime, LLMRuntime)
    assert runtime.max_prompt_chars is not None
    counting = CountingTokenizer(runtime.tokenizer)
    runtime.tokenizer = counting
    try:
        with pytest.raises(RequestError, match="characters"):
            runtime.check_prompt("z" * (runtime.max_prompt_chars + 1))
        assert counting.chars_read == 0
        prompt = "How tall is the tallest mountain?"
        runtime.check_prompt(prompt)
        list(runtime.stream(prompt, GREEDY, _Never()))
        assert counting.chars_read == len(prompt)  # checked and encoded from one reading
    finally:
        runtime.close()


class _Never:
    def is_set(self) -> bool:
        return False


def test_sessions_are_capped_per_caller_and_paged(chat: dict[str, Any]) -> None:
    for i in range(8):
        assert post(chat, "generate", {"prompts": [f"q{i}"], "params": GREEDY}
                    ).status_code == 200
    pages, offset = [], 0
    while offset is not None:
        answer = requests.get(f"{chat['endpoint']}/sessions", params={"limit": 2,
                              "offset": offset}, headers=chat["headers"], timeout=30).json()
        assert answer["total"] == 5, answer
        pages.append(answer["sessions"])
        offset = answer["next_offset"]
    titles = [s["title"] for page in pages for s in page]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert titles == ["q7", "q6", "q5", "q4", "q3"]  # newest kept, oldest expired
    for bad in ("0", "-1", "x", "501", "\u00b2", "9" * 30):
        answer = requests.get(f"{chat['endpoint']}/sessions", params={"limit": bad},
                              headers=chat["headers"], timeout=30)
        assert answer.status_code == 400, (bad, answer.text)
