"""What agent frameworks need from an LLM agent's OpenAI API, driven by the real clients.

One real ``jupyter server`` serves the quick tiny chat model (barely trained: its free text is
noise, which is what makes constrained decoding visible - every schema-constrained answer must
still parse and validate). The clients are the official ``openai`` package, LangChain's
``ChatOpenAI`` and the OpenAI Agents SDK. Logprobs and greedy answers are checked against the
same checkpoint loaded in this process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
import requests
from pydantic import BaseModel, Field

from server_extension.demos.llm import SFT_EXPERIMENT
from server_extension.handlers.openai_schema import Request, read_tool_calls
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
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow

GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 8}


class Country(BaseModel):
    """A bounded answer: every string an enum, every number a small range, so a constrained
    reply always ends within the tiny model's 128-token context."""

    name: Literal["France", "Peru", "Chile"]
    capital: Literal["Paris", "Lima", "Santiago"]
    population_millions: int = Field(ge=0, le=99)
    coastal: bool


FACTS_TOOL = {"type": "function", "function": {
    "name": "country_facts", "description": "Look up facts about a country.",
    "parameters": {"type": "object", "properties": {
        "country": {"type": "string", "enum": ["France", "Peru", "Chile"]}},
        "required": ["country"], "additionalProperties": False}}}
FACTS = {"France": "Paris; 68M.",
         "Peru": "Lima; 34M.",
         "Chile": "Santiago; 20M."}


def country_schema() -> dict[str, Any]:
    return {**Country.model_json_schema(), "additionalProperties": False}


# -- structured output -------------------------------------------------------------------------


def test_fifty_schema_constrained_answers_all_validate(client: openai.OpenAI) -> None:
    schema = country_schema()
    format_ = {"type": "json_schema",
               "json_schema": {"name": "country", "schema": schema, "strict": True}}
    answers = []
    for index, country in enumerate(("France", "Peru", "Chile", "Japan", "Kenya")):
        reply = client.chat.completions.create(
            model=MODEL, n=10, temperature=1.0, seed=index - 3, max_tokens=100,
            response_format=format_,  # type: ignore[arg-type]
            messages=[{"role": "user", "content": f"Facts about {country} as JSON."}])
        answers += [c.message.content for c in reply.choices]
        assert {c.finish_reason for c in reply.choices} == {"stop"}
    assert len(answers) == 50
    for text in answers:
        assert text is not None
        jsonschema.validate(json.loads(text), schema)
    assert len(set(answers)) > 5  # sampled, not one canned answer


def test_parse_into_pydantic_and_stream_it(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(model=MODEL, messages=QUESTION, temperature=0,
                                           max_tokens=100, response_format=Country)
    answer = parsed.choices[0].message.parsed
    assert isinstance(answer, Country)
    with client.chat.completions.stream(model=MODEL, messages=QUESTION, temperature=0,
                                        max_tokens=100, response_format=Country) as stream:
        deltas = [e for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3  # streamed in pieces
    assert final.choices[0].message.parsed == answer


def test_json_object_mode_answers_an_object(client: openai.OpenAI,
                                            reference: LLMRuntime) -> None:
    vocab = reference.tokenizer.get_vocab()
    closers = {str(vocab['"']): 60, str(vocab["}"]): 30}  # a quote wins inside strings
    for stream in (False, True):
        kwargs: dict[str, Any] = {"model": MODEL, "messages": QUESTION, "temperature": 0,
                                  "max_tokens": 20, "response_format": {"type": "json_object"},
                                  # the untrained model would write one key forever; a bias
                                  # towards quotes and braces makes it close every string and
                                  # the object as soon as the grammar allows
                                  "logit_bias": closers}
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(stream=True, **kwargs) if c.choices)
        else:
            text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
        assert isinstance(json.loads(text), dict)


# -- tools -------------------------------------------------------------------------------------


def test_required_and_named_tool_calls_follow_the_schema(client: openai.OpenAI) -> None:
    other = {"type": "function", "function": {"name": "noop", "parameters": {
        "type": "object", "properties": {}}}}
    for choice in ("required", {"type": "function", "function": {"name": "country_facts"}}):
        reply = client.chat.completions.create(
            model=MODEL, messages=QUESTION, tools=[FACTS_TOOL, other],  # type: ignore[list-item]
            tool_choice=choice, temperature=1.0, seed=7, max_tokens=60)  # type: ignore[arg-type]
        (only,) = reply.choices
        assert only.finish_reason == "tool_calls"
        assert only.message.content is None
        (call,) = only.message.tool_calls or []
        assert call.id.startswith("call-")
        assert call.type == "function"
        name = call.function.name  # type: ignore[union-attr]
        assert name in ("country_facts", "noop")
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        if name == "country_facts":
            jsonschema.validate(arguments, FACTS_TOOL["function"]["parameters"])
        if choice != "required":
            assert name == "country_facts"


def test_streamed_tool_call_and_a_tool_result_in_the_history(
        client: openai.OpenAI, reference: LLMRuntime) -> None:
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[FACTS_TOOL],  # type: ignore[list-item]
        tool_choice="required", temperature=0, max_tokens=60, stream=True))
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (call,) = calls
    assert call.function is not None
    arguments = json.loads(call.function.arguments or "")
    history = [*QUESTION,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call.id, "type": "function",
                    "function": {"name": "country_facts", "arguments": json.dumps(arguments)}}]},
               {"role": "tool", "tool_call_id": call.id, "content": FACTS[arguments["country"]]}]
    reply = client.chat.completions.create(model=MODEL, messages=history,  # type: ignore[arg-type]
                                           tools=[FACTS_TOOL], **GREEDY)  # type: ignore[list-item]
    # The template rendered tools, the call and its result: the prompt the model saw.
    prompt = reference.chat_prompt(
        [QUESTION[0], {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "country_facts", "arguments": arguments}}]},
         {"role": "tool", "content": FACTS[arguments["country"]]}], [FACTS_TOOL])
    assert "tools: country_facts(country)" in prompt
    assert '<tool_call>{"name": "country_facts", "arguments": {"country": ' in prompt
    assert f"<|tool|>\n{FACTS[arguments['country']]}<|end|>" in prompt
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == reference.count_tokens(prompt)


def test_auto_reads_calls_the_model_writes_in_the_template_convention() -> None:
    request = Request(model=MODEL, params={}, tools=[FACTS_TOOL], tool_mode="auto")
    content, calls = read_tool_calls(
        'Let me look.<tool_call>{"name": "country_facts", "arguments": {"country": "Peru"}}'
        "</tool_call>", request)
    assert content == "Let me look."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("country_facts", {"country": "Peru"})]
    assert read_tool_calls("Lima.", request) == ("Lima.", [])
    # A call to an unknown tool, or one that does not parse, stays text.
    odd = '<tool_call>{"name": "rm", "arguments": {}}</tool_call>'
    assert read_tool_calls(odd, request) == (odd, [])
    assert read_tool_calls(odd, Request(model=MODEL, params={}, tools=[FACTS_TOOL])) == (odd, [])


# -- logprobs, logit_bias, n, prompts, seed ------------------------------------------------------


def test_chat_logprobs_are_the_models_own(client: openai.OpenAI, reference: LLMRuntime) -> None:
    import torch

    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, logprobs=True,
                                           top_logprobs=3, **GREEDY)
    choice = reply.choices[0]
    assert choice.logprobs is not None
    entries = choice.logprobs.content or []
    assert "".join(e.token for e in entries) == choice.message.content
    ids = reference.tokenizer(reference.chat_prompt(QUESTION))["input_ids"]
    for entry in entries:
        with torch.inference_mode():
            logits = reference.model(torch.tensor([ids])).logits[0, -1]
        want = logits.float().log_softmax(-1)
        token = int(want.argmax())
        assert reference.tokenizer.decode([token]) == entry.token  # greedy: the top one
        assert entry.logprob == pytest.approx(float(want[token]), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token
        assert len(entry.top_logprobs) == 3
        ids.append(token)
    streamed = [c for c in client.chat.completions.create(
        model=MODEL, messages=QUESTION, logprobs=True, top_logprobs=3, stream=True, **GREEDY)
        if c.choices and c.choices[0].logprobs]
    tokens = [e for c in streamed for e in c.choices[0].logprobs.content or []]  # type: ignore[union-attr]
    assert [(e.token, round(e.logprob, 4)) for e in tokens] == [
        (e.token, round(e.logprob, 4)) for e in entries]


def test_completions_logprobs_echo_token_ids_and_bias(client: openai.OpenAI,
                                                     reference: LLMRuntime) -> None:
    prompt = reference.chat_prompt(QUESTION)
    ids = reference.tokenizer(prompt)["input_ids"]
    text = client.completions.create(model=MODEL, prompt=prompt, logprobs=2, **GREEDY)
    by_ids = client.completions.create(model=MODEL, prompt=ids, logprobs=2, **GREEDY)
    assert by_ids.choices[0].text == text.choices[0].text
    logprobs = text.choices[0].logprobs
    assert logprobs is not None
    assert "".join(logprobs.tokens or []) == text.choices[0].text
    assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    streamed = list(client.completions.create(model=MODEL, prompt=[ids, ids], stream=True,
                                              logprobs=2, **GREEDY))
    for index in (0, 1):
        mine = [c.choices[0] for c in streamed if c.choices[0].index == index]
        assert "".join(c.text for c in mine) == text.choices[0].text
        assert [t for c in mine if c.logprobs for t in c.logprobs.tokens or []] == logprobs.tokens
    echoed = client.completions.create(model=MODEL, prompt="Hello", echo=True, **GREEDY)
    plain = client.completions.create(model=MODEL, prompt="Hello", **GREEDY)
    assert echoed.choices[0].text == "Hello" + plain.choices[0].text
    token = reference.tokenizer.convert_tokens_to_ids("X")
    biased = client.completions.create(model=MODEL, prompt="Hello", logit_bias={str(token): 100},
                                       **GREEDY)
    assert biased.choices[0].text == "X" * 8
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="def f(", suffix="return 1", **GREEDY)
    assert "fill-in-the-middle" in info.value.message


def test_streaming_several_choices_and_negative_seeds(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, **GREEDY)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=QUESTION, n=3, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    for index in range(3):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[0].message.content
        assert mine[-1].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == 3 * whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    sampled = {"model": MODEL, "messages": QUESTION, "temperature": 1.0, "max_tokens": 8}
    for seed in (-1, -2**63, 2**63 - 1):
        first, again = (client.chat.completions.create(seed=seed, **sampled)  # type: ignore[call-overload]
                        .choices[0].message.content for _ in range(2))
        assert first == again


# -- the workspace endpoint --------------------------------------------------------------------


def test_workspace_endpoint_serves_agents_by_model(
        served: tuple[ServerProcess, dict[str, Any]], agent: dict[str, Any]) -> None:
    server = served[0]
    other = server.deploy("chat2", SFT_EXPERIMENT)
    server.deploy("iris", "iris-classifier")
    token = server.api("POST", "tokens", json={"name": "frameworks"}).json()["token"]
    base = server.url + "agents/v1"
    with openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=60) as workspace:
        assert [m.id for m in workspace.models.list()] == ["chat", "chat2"]  # LLM agents only
        for name in ("chat", "chat2"):
            reply = workspace.chat.completions.create(model=name, messages=QUESTION, **GREEDY)
            assert reply.model == name
        with pytest.raises(openai.NotFoundError):
            workspace.chat.completions.create(model="iris", messages=QUESTION, **GREEDY)
        assert workspace.completions.create(model="chat2", prompt="Hello", **GREEDY).choices
    with openai.OpenAI(base_url=base, api_key=agent["api_key"], max_retries=0,
                       timeout=60) as keyed:
        assert [m.id for m in keyed.models.list()] == ["chat"]
        assert keyed.chat.completions.create(model="chat", messages=QUESTION, **GREEDY).choices
        with pytest.raises(openai.PermissionDeniedError) as denied:
            keyed.chat.completions.create(model="chat2", messages=QUESTION, **GREEDY)
        assert set(denied.value.body or {}) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    assert requests.get(base + "/models", timeout=10).status_code == 401
    wrong = requests.get(base + "/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert other["api_key"] != agent["api_key"]
    metrics = server.api("GET", "agents/chat2/metrics").json()
    assert metrics["by_route"]["v1/chat/completions"]["200"] >= 1


# -- frameworks --------------------------------------------------------------------------------


def test_langchain_structured_output_and_bound_tools(agent: dict[str, Any]) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model=MODEL, base_url=agent["endpoint"] + "/v1", api_key=agent["api_key"],
                      temperature=0, max_tokens=100, max_retries=0)
    answer = chat.with_structured_output(Country, method="json_schema").invoke(
        "Facts about Peru?")
    assert isinstance(answer, Country)

    @tool
    def country_facts(country: Literal["France", "Peru", "Chile"]) -> str:
        """Look up facts about a country."""
        return FACTS[country]

    message = chat.bind_tools([country_facts], tool_choice="country_facts").invoke(
        "Tell me about Chile.")
    (call,) = message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "country_facts"
    assert call["args"]["country"] in FACTS
    assert country_facts.invoke(call["args"]) == FACTS[call["args"]["country"]]


def test_openai_agents_sdk_runs_a_one_tool_agent(agent: dict[str, Any]) -> None:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # the SDK would otherwise send traces to OpenAI
    looked_up: list[str] = []

    @function_tool
    def country_facts(country: Literal["France", "Peru", "Chile"]) -> str:
        """Look up facts about a country."""
        looked_up.append(country)
        return FACTS[country]

    async def run() -> Any:
        client = openai.AsyncOpenAI(base_url=agent["endpoint"] + "/v1", api_key=agent["api_key"],
                                    max_retries=0)
        facts_agent = Agent(
            name="facts", instructions="Answer with the facts tool.", tools=[country_facts],
            model=OpenAIChatCompletionsModel(model=MODEL, openai_client=client),
            model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60),
            tool_use_behavior="stop_on_first_tool")
        try:
            return await Runner.run(facts_agent, "What is the capital of Peru?")
        finally:
            await client.close()

    result = asyncio.run(run())
    (country,) = looked_up
    assert result.final_output == FACTS[country]
