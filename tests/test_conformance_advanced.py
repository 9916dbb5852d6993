"""Advanced Training agents (tiny LLM, supervised) through the real Arena client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from agilerl.arena.exceptions import ArenaInferenceError
from agilerl.arena.inference import Agent

from tests.servers import ServerProcess, copy_workspace, running_server

GREEDY = {"max_new_tokens": 12, "temperature": 0.0, "do_sample": False}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory,
                  advanced_experiments: Path) -> Iterator[ServerProcess]:
    """One server for the tests that only call agents (each deploys under its own name);
    the restart test has a server of its own."""
    root = copy_workspace(tmp_path_factory.mktemp("advanced-conformance"), advanced_experiments)
    with running_server(root) as server:
        yield server


@pytest.fixture(scope="module")
def llm(shared_server: ServerProcess) -> dict[str, Any]:
    """The tiny chat model (full checkpoint), deployed once for the module."""
    return shared_server.deploy("chat", "tiny-chat-sft")


def test_status_reports_llm(llm: dict[str, Any]) -> None:
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        assert agent.metadata is not None
        assert agent.metadata.agent is not None
        assert agent.metadata.agent.llm is True
        assert agent.metadata.agent.supervised is False


def test_generate_batched(llm: dict[str, Any]) -> None:
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        result = agent.generate(["hello", "what is two plus two?"], params=GREEDY)
    assert result.batch_size == 2
    assert [r.prompt for r in result.results] == ["hello", "what is two plus two?"]
    assert all(isinstance(r.completion, str) for r in result.results)
    assert result.inference_time_ms > 0
    assert result.tokens_per_second >= 0


# Serial: it compares arrival times. The tiny model writes its 60 tokens in about 0.06 s, and
# beside the parallel phase's load a stall of the server or its worker that long delivered
# every piece at once (ci18, ci20: first piece at 0.187 s, last at 0.190 s).
@pytest.mark.serial
def test_generate_stream_streams(llm: dict[str, Any]) -> None:
    params = {"max_new_tokens": 60, "temperature": 0.0, "do_sample": False}
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        started = time.perf_counter()
        arrivals: list[float] = []
        chunks: list[str] = []
        for chunk in agent.generate_stream("tell me something", params=params):
            arrivals.append(time.perf_counter() - started)
            chunks.append(chunk)
    assert len(chunks) >= 2, chunks
    # The first piece arrives well before the last: the answer is not sent all at the end.
    assert arrivals[0] < arrivals[-1] * 0.8


def test_sessions_continue_list_get_delete(llm: dict[str, Any]) -> None:
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        agent.generate("first question", params=GREEDY, session_id="conv-1")
        agent.generate("second question", params=GREEDY, session_id="conv-1")
        listed = agent.list_sessions()
        assert "conv-1" in [s.session_id for s in listed]
        detail = agent.get_session("conv-1")
        assert [m.role for m in detail.messages] == ["user", "assistant", "user", "assistant"]
        assert detail.messages[2].content == "second question"
        assert agent.delete_session("conv-1") is True
        assert agent.delete_session("conv-1") is False
        with pytest.raises(ArenaInferenceError) as info:
            agent.get_session("conv-1")
        assert info.value.status_code == 404


def test_sessions_survive_restart(advanced_server: ServerProcess) -> None:
    llm = advanced_server.deploy("chat", "tiny-chat-sft")
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        agent.generate("remember me", params=GREEDY, session_id="keep")
    advanced_server.stop()
    again = ServerProcess(advanced_server.root).start()
    try:
        back = again.wait_status("chat")
        with Agent(back["endpoint"], api_key=back["api_key"]) as agent:
            assert agent.get_session("keep").messages[0].content == "remember me"
    finally:
        again.stop()


@pytest.mark.parametrize(("params", "needle"), [
    ({"top_k": 5}, "Unknown sampling parameter"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_params_are_400(llm: dict[str, Any], params: dict[str, Any], needle: str) -> None:
    resp = requests.post(llm["endpoint"] + "/generate", timeout=30,
                         headers={"Authorization": f"Bearer {llm['api_key']}"},
                         json={"prompts": ["hi"], "params": params})
    assert resp.status_code == 400
    assert needle in resp.json()["error"]


@pytest.mark.parametrize("body", [{"prompts": []}, {"prompts": [""]}, {"prompts": "hi"}])
def test_bad_prompts_are_400(llm: dict[str, Any], body: dict[str, Any]) -> None:
    resp = requests.post(llm["endpoint"] + "/generate", timeout=30, json=body,
                         headers={"Authorization": f"Bearer {llm['api_key']}"})
    assert resp.status_code == 400


def test_prompt_longer_than_context_is_400(llm: dict[str, Any]) -> None:
    resp = requests.post(llm["endpoint"] + "/generate", timeout=60,
                         headers={"Authorization": f"Bearer {llm['api_key']}"},
                         json={"prompts": ["word " * 20000]})
    assert resp.status_code == 400
    assert "tokens" in resp.json()["error"]


def test_get_action_on_llm_is_400(llm: dict[str, Any]) -> None:
    resp = requests.post(llm["endpoint"] + "/get_action", timeout=30, json={"obs": None},
                         headers={"Authorization": f"Bearer {llm['api_key']}"})
    assert resp.status_code == 400
    assert "generate" in resp.json()["error"]


def test_lora_adapter_agent(shared_server: ServerProcess) -> None:
    experiments = {e["name"]: e for e in shared_server.api("GET", "experiments").json()
                   ["experiments"]}
    assert experiments["tiny-chat-lora"]["base_model"]
    lora = shared_server.deploy("chat-lora", "tiny-chat-lora")
    assert lora["base_model"] == experiments["tiny-chat-lora"]["base_model"]
    with Agent(lora["endpoint"], api_key=lora["api_key"]) as agent:
        result = agent.generate("hello", params=GREEDY)
    assert isinstance(result.results[0].completion, str)


def test_supervised_predict(shared_server: ServerProcess) -> None:
    model = shared_server.deploy("iris", "iris-classifier")
    experiments = {e["name"]: e for e in shared_server.api("GET", "experiments").json()
                   ["experiments"]}
    assert experiments["iris-classifier"]["tab"] == "advanced"
    with Agent(model["endpoint"], api_key=model["api_key"]) as agent:
        assert agent.metadata is not None
        assert agent.metadata.agent is not None
        assert agent.metadata.agent.supervised is True
        results, meta = agent.predict(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
                                               np.float32), batched=True)
        assert meta.batch_size == 2
        assert np.asarray(results).shape[0] == 2
        with pytest.raises(ArenaInferenceError) as info:
            agent.predict(np.zeros((1, 3), np.float32), batched=True)
    assert info.value.status_code == 400
    assert "4" in str(info.value)
    resp = requests.post(model["endpoint"] + "/generate", timeout=30, json={"prompts": ["x"]},
                         headers={"Authorization": f"Bearer {model['api_key']}"})
    assert resp.status_code == 400
    assert "predict" in resp.json()["error"]


def test_a_session_longer_than_the_context_goes_on(llm: dict[str, Any]) -> None:
    """The tiny model reads 128 tokens: after a few turns its oldest turns are left out of
    the model's input, and every turn is still answered and kept in the session."""
    prompt = "tell me about the capital of france and the capital of italy please"
    params = {"max_new_tokens": 40, "temperature": 0.0, "do_sample": False}
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        for _ in range(6):
            agent.generate(prompt, params=params, session_id="long-talk")
        kept = agent.get_session("long-talk").messages
    # Six turns of this prompt are past 128 tokens from the third turn on (without the
    # trimming, that turn was a 400 saying the prompt was 167 tokens long).
    assert [m.role for m in kept] == ["user", "assistant"] * 6
