"""The OpenAI API of LLM agents (``<endpoint>/v1``), driven by the official ``openai`` package.

One real ``jupyter server`` child process serves the quick tiny chat model for the module.
Answers are checked against the same checkpoint loaded in this process: greedy decoding makes
them exact, so a wrong chat template, token count, stop cut or finish reason fails here.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

from agents_widget.client import ExperimentInfo
from agents_widget.snippets import KEY_ENV, OPENAI_TITLE, build_snippets
from server_extension.demos.llm import SFT_EXPERIMENT
from server_extension.serving.generate_batching import GenerateBatchingRuntime
from server_extension.serving.runtimes.llm import LLMRuntime
from tests.openai_support import (  # noqa: F401 (fixtures: pytest finds them by name here)
    MODEL,
    QUESTION,
    _one_thread,
    agent,
    client,
    reference,
    served,
)
from tests.servers import ServerProcess, wait_until

pytestmark = pytest.mark.slow

GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12}


def expected(reference: LLMRuntime, messages: list[dict[str, str]], max_tokens: int = 12,
             **params: Any) -> dict[str, Any]:
    """What the in-process runtime answers: the first choice plus ``prompt_tokens``."""
    prompt = reference.chat_prompt(messages)
    result = reference.complete([prompt], {"max_new_tokens": max_tokens, "temperature": 0.0,
                                           "do_sample": False, **params})
    return {**result["choices"][0], "prompt_tokens": result["prompt_tokens"][0]}


def stream_chat(client: openai.OpenAI, **kwargs: Any) -> tuple[list[Any], str]:
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


# -- models ------------------------------------------------------------------------------------


def test_models_lists_the_agent_as_the_one_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "agents-workbench"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


# -- chat --------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [
    QUESTION,
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "What is the capital of Peru?"},
     {"role": "assistant", "content": "The capital of Peru is Lima."},
     {"role": "developer", "content": "Stay on topic."},
     {"role": "user", "content": [{"type": "text", "text": "And of "},
                                  {"type": "text", "text": "Chile?"}]}],
])
def test_chat_answers_as_the_model_does_in_process(client: openai.OpenAI, reference: LLMRuntime,
                                                   messages: list[dict[str, Any]]) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=messages, **GREEDY)
    flat = [{"role": "system" if m["role"] == "developer" else m["role"],
             "content": m["content"] if isinstance(m["content"], str)
             else "".join(p["text"] for p in m["content"])} for m in messages]
    want = expected(reference, flat)
    (choice,) = answer.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == want["text"]
    assert choice.finish_reason == want["finish_reason"]
    assert answer.model == MODEL
    assert answer.id.startswith("chatcmpl-")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == want["prompt_tokens"]
    assert answer.usage.prompt_tokens == reference.count_tokens(reference.chat_prompt(flat))
    assert answer.usage.completion_tokens == want["completion_tokens"]
    assert answer.usage.total_tokens == want["prompt_tokens"] + want["completion_tokens"]


def test_streamed_chat_is_the_same_answer_in_openai_chunks(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, **GREEDY)
    chunks, text = stream_chat(client, messages=QUESTION, stream_options={"include_usage": True},
                               **GREEDY)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    *body, last = chunks
    assert last.choices == []  # the usage chunk
    assert last.usage is not None
    assert whole.usage is not None
    assert last.usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in body[:-1])
    assert len([c for c in body if c.choices[0].delta.content]) >= 2  # streamed, not one blob


def test_stream_is_server_sent_events_ending_in_done(agent: dict[str, Any]) -> None:
    with requests.post(agent["endpoint"] + "/v1/chat/completions", stream=True, timeout=60,
                       headers={"Authorization": f"Bearer {agent['api_key']}"},
                       json={"model": MODEL, "messages": QUESTION, "stream": True,
                             **GREEDY}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_client_that_leaves_mid_stream_frees_the_request(
        served: tuple[ServerProcess, dict[str, Any]], client: openai.OpenAI) -> None:
    server, agent = served
    with requests.post(agent["endpoint"] + "/v1/completions", stream=True, timeout=60,
                       headers={"Authorization": f"Bearer {agent['api_key']}"},
                       json={"model": MODEL, "prompt": "Hello", "stream": True,
                             "max_tokens": 4096}) as response:
        assert response.status_code == 200
        assert next(response.iter_lines()).startswith(b"data: ")
    # The answer is recorded (in_flight back to 0) and the model serves the next caller.
    wait_until(lambda: server.api("GET", f"agents/{MODEL}/metrics").json()["in_flight"] == 0,
               timeout=30, what="the abandoned stream to end")
    assert client.chat.completions.create(model=MODEL, messages=QUESTION, **GREEDY).choices


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        answer = client.chat.completions.create(
            model=MODEL, messages=QUESTION, temperature=0, **{name: 1})
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 1
    chunks, _ = stream_chat(client, messages=QUESTION, temperature=0, max_tokens=1,
                            stream_options={"include_usage": True})
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 1


def test_stop_string_cuts_the_reply(client: openai.OpenAI, reference: LLMRuntime) -> None:
    full = expected(reference, QUESTION)["text"]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full
    cut = full[:full.find(stop)]
    answer = client.chat.completions.create(model=MODEL, messages=QUESTION, stop=[stop, "§§"],
                                            **GREEDY)
    assert answer.choices[0].message.content == cut
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens < expected(reference, QUESTION)["completion_tokens"]
    chunks, text = stream_chat(client, messages=QUESTION, stop=stop,
                               stream_options={"include_usage": True}, **GREEDY)
    assert text == cut
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_seed_repeats_a_sampled_reply(client: openai.OpenAI) -> None:
    sampled = {"temperature": 1.0, "max_tokens": 12, "seed": 1234}
    first, again = (client.chat.completions.create(model=MODEL, messages=QUESTION, **sampled)
                    .choices[0].message.content for _ in range(2))
    assert first == again
    assert stream_chat(client, messages=QUESTION, **sampled)[1] == first
    others = {client.chat.completions.create(model=MODEL, messages=QUESTION,
                                             **{**sampled, "seed": s}).choices[0].message.content
              for s in range(5)}
    assert len(others) > 1  # the seed does pick the draws


def test_n_choices(client: openai.OpenAI) -> None:
    one = client.chat.completions.create(model=MODEL, messages=QUESTION, **GREEDY)
    three = client.chat.completions.create(model=MODEL, messages=QUESTION, n=3, **GREEDY)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert one.usage is not None
    assert three.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens


# -- completions -------------------------------------------------------------------------------


def test_completions_take_plain_prompts(client: openai.OpenAI, reference: LLMRuntime) -> None:
    prompts = [reference.chat_prompt(QUESTION), "Hello"]
    want = reference.complete(prompts, {"max_new_tokens": 12, "temperature": 0.0,
                                        "do_sample": False})
    answer = client.completions.create(model=MODEL, prompt=prompts, n=2, **GREEDY)
    assert answer.object == "text_completion"
    assert [c.text for c in answer.choices] == [want["choices"][i // 2]["text"] for i in range(4)]
    assert [c.finish_reason for c in answer.choices] == [
        want["choices"][i // 2]["finish_reason"] for i in range(4)]
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == sum(want["prompt_tokens"])
    streamed = list(client.completions.create(model=MODEL, prompt=prompts[0], stream=True,
                                              **GREEDY))
    assert "".join(c.choices[0].text for c in streamed) == want["choices"][0]["text"]
    assert streamed[-1].choices[0].finish_reason == want["choices"][0]["finish_reason"]
    # Without max_tokens, OpenAI's completions default of 16 tokens applies.
    default = client.completions.create(model=MODEL, prompt="Hello", temperature=0)
    assert default.usage is not None
    assert default.usage.completion_tokens <= 16


# -- credentials and errors --------------------------------------------------------------------


def test_wrong_or_missing_key_is_401(agent: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=agent["endpoint"] + "/v1", api_key="awb_wrong",
                       max_retries=0) as wrong, pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model=MODEL, messages=QUESTION)
    assert info.value.code == "invalid_api_key"
    response = requests.get(agent["endpoint"] + "/v1/models", timeout=10)
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert "Bearer" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"extra_body": {"top_k": 5}}, "top_k"),
    ({"n": 0}, "n"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"5": 300}}, "logit_bias"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"seed": 2**63}, "seed"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://x/y.png"}}]}]}, "messages[0].content[0]"),
    ({"messages": []}, "messages"),
])
def test_bad_parameters_are_openai_400s_naming_them(client: openai.OpenAI,
                                                    kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**{"model": MODEL, "messages": QUESTION, **kwargs})
    assert info.value.param == param
    assert isinstance(info.value.body, dict)
    assert set(info.value.body) == {"message", "type", "param", "code"}
    assert param.split("[", maxsplit=1)[0] in info.value.message


def test_neutral_values_of_unsupported_parameters_are_accepted(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL, messages=QUESTION, frequency_penalty=0, presence_penalty=0, logprobs=False,
        user="someone", response_format={"type": "text"}, **GREEDY)
    assert answer.choices[0].message.content is not None


def test_wrong_model_long_prompt_bad_json_and_unknown_route(client: openai.OpenAI,
                                                            agent: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert MODEL in missing.value.message
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=MODEL, prompt="word " * 20000)
    assert "tokens" in long.value.message
    headers = {"Authorization": f"Bearer {agent['api_key']}"}
    bad = requests.post(agent["endpoint"] + "/v1/chat/completions", data=b"{nope",
                        headers=headers, timeout=10)
    assert bad.status_code == 400
    assert "JSON" in bad.json()["error"]["message"]
    unknown = requests.post(agent["endpoint"] + "/v1/embeddings", json={}, headers=headers,
                            timeout=10)
    assert unknown.status_code == 404
    assert "v1/chat/completions" in unknown.json()["error"]["message"]


def test_a_lone_surrogate_is_a_400_naming_where(agent: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {agent['api_key']}",
               "Content-Type": "application/json"}
    for route, body in (
            ("chat/completions", f'{{"model": "{MODEL}", "messages": [{{"role": "user", '
                                 '"content": "hi \\ud800"}]}'),
            ("completions", f'{{"model": "{MODEL}", "prompt": "\\udfff"}}')):
        answer = requests.post(f"{agent['endpoint']}/v1/{route}", data=body.encode(),
                               headers=headers, timeout=30)
        assert answer.status_code == 400, (route, answer.text)
        assert "lone surrogate" in answer.json()["error"]["message"]
    assert requests.post(f"{agent['endpoint']}/v1/completions", timeout=60, headers=headers,
                         json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
                         ).status_code == 200


@pytest.mark.slow
def test_huge_llm_inputs_are_refused_and_the_agent_stays_deployed(
        served: tuple[ServerProcess, dict[str, Any]]) -> None:
    # LLM arguments used to travel JSON-escaped in the worker frame's 16 MiB header: these
    # requests killed the worker (503), and four of them left the agent Failed.
    server, agent = served
    headers = {"Authorization": f"Bearer {agent['api_key']}"}
    emoji = "\U0001F600" * 460_000  # 1.8 MB of UTF-8, 5.3 MiB as JSON escapes
    session = None
    for _ in range(4):  # one conversation: its history grows with each turn
        answer = requests.post(f"{agent['endpoint']}/generate", timeout=300, headers=headers,
                               json={"prompt": emoji, "session_id": session,
                                     "params": {"max_new_tokens": 1}})
        assert answer.status_code in (200, 400, 413), answer.text
        session = answer.headers.get("X-Session-Id") or session
    big = requests.post(f"{agent['endpoint']}/v1/chat/completions", timeout=300,
                        headers=headers, json={"model": MODEL, "messages": [
                            {"role": "user", "content": "a " * (8 * 2**20)}]})
    assert big.status_code in (400, 413), big.text
    assert "limit" in big.text or "at most" in big.text or "tokens" in big.text, big.text
    assert server.api("GET", f"agents/{MODEL}").json()["status"] == "Deployed"
    assert requests.post(f"{agent['endpoint']}/v1/completions", timeout=60, headers=headers,
                         json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
                         ).status_code == 200


def test_non_llm_agents_do_not_speak_it(served: tuple[ServerProcess, dict[str, Any]]) -> None:
    iris = served[0].deploy("iris", "iris-classifier")
    response = requests.get(iris["endpoint"] + "/v1/models", timeout=10,
                            headers={"Authorization": f"Bearer {iris['api_key']}"})
    assert response.status_code == 404
    assert "LLM agents only" in response.json()["error"]["message"]


def test_metrics_and_request_log_count_openai_routes(
        served: tuple[ServerProcess, dict[str, Any]], client: openai.OpenAI) -> None:
    server, agent = served

    def summary() -> dict[str, Any]:
        return server.api("GET", f"agents/{MODEL}/metrics").json()

    before = summary()
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, **GREEDY)
    stream_chat(client, messages=QUESTION, **GREEDY)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=0)
    after = summary()
    was = before["by_route"].get("v1/chat/completions", {})
    now = after["by_route"]["v1/chat/completions"]
    assert now.get("200", 0) - was.get("200", 0) == 2
    assert now.get("400", 0) - was.get("400", 0) == 1
    assert whole.usage is not None
    # Both answers' tokens, streamed or not, are counted as the model's tokenizer counts them.
    assert (after["tokens_generated"] - before["tokens_generated"]
            == 2 * whole.usage.completion_tokens)
    log = json.dumps(server.api("GET", f"agents/{MODEL}/requests").json())
    assert "v1/chat/completions" in log
    assert agent["api_key"] not in log


def test_a_tokenizer_without_template_gets_the_demo_chat_format(reference: LLMRuntime) -> None:
    """The demo tokenizer's template is the demo format, so dropping it changes nothing."""
    tokenizer = copy.deepcopy(reference.tokenizer)
    tokenizer.chat_template = None
    bare = LLMRuntime(reference.model, tokenizer, algo="SFT", device="cpu")
    assert bare.chat_prompt(QUESTION) == reference.chat_prompt(QUESTION)
    assert bare.chat_prompt(QUESTION).startswith("<|user|>\nWhat is the capital")
    assert bare.format_chat(QUESTION).startswith("User: ")  # the Arena routes keep theirs


# -- batching ----------------------------------------------------------------------------------


def test_concurrent_openai_requests_share_one_generate(reference: LLMRuntime) -> None:
    """What chat completions call (``complete``, with stop strings) is batched like generate;
    seeded sampling is not, since a batch would change its draws."""
    wrapper = GenerateBatchingRuntime(reference)
    prompt = reference.chat_prompt(QUESTION)
    params = {"max_new_tokens": 12, "temperature": 0.0, "do_sample": False, "stop": ["§"]}
    alone = reference.complete([prompt], params)
    seeded = {"max_new_tokens": 6, "temperature": 1.0, "do_sample": True, "seed": 3}
    calls = [params, params, params, params, seeded, seeded]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        with reference._lock:  # the first caller leads and waits for the model; the rest queue
            futures = [pool.submit(wrapper.complete, [prompt], p) for p in calls]
            deadline = time.monotonic() + 30
            while wrapper._gatherer.waiting < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
        results = [f.result(timeout=60) for f in futures]
    assert results[:4] == [alone] * 4
    assert (wrapper.batches, wrapper.batched_requests) == (1, 3)
    assert results[4] == results[5] == reference.complete([prompt], seeded)


# -- the snippet -------------------------------------------------------------------------------


def test_openai_snippet_runs_and_gets_an_answer(
        served: tuple[ServerProcess, dict[str, Any]], agent: dict[str, Any]) -> None:
    experiments = served[0].api("GET", "experiments").json()["experiments"]
    info = ExperimentInfo.from_json(next(e for e in experiments if e["name"] == SFT_EXPERIMENT))
    snippets = build_snippets(agent["endpoint"], info)
    assert list(snippets) == ["Arena client", "Arena CLI", "Manual HTTP", OPENAI_TITLE]
    code = snippets[OPENAI_TITLE].code
    assert agent["api_key"] not in code
    assert f'base_url="{agent["endpoint"]}/v1"' in code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, KEY_ENV: agent["api_key"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    refused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=False, env={**os.environ, KEY_ENV: "awb_wrong"})
    assert refused.returncode != 0
    assert "AuthenticationError" in refused.stderr
    classic = ExperimentInfo.from_json({"name": "x", "tab": "classic",
                                        "environment": "CartPole-v1"})
    assert OPENAI_TITLE not in build_snippets(agent["endpoint"], classic)
