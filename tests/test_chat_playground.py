"""The chat playground against a live server with the tiny LLM deployed (no fakes).

Widgets talk to the recording front end of ``tests.panel_support``, so the tests read every
update a browser would have received; the HTTP goes to a real ``jupyter server`` child
process, and its answers are checked against the real Arena client.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from agilerl.arena.inference import Agent

from agents_widget.chat_playground import ChatPlayground, split_stream_error, transcript_html
from agents_widget.client import AgentInfo, ExperimentInfo, WorkbenchError
from agents_widget.details import DeploymentDetails
from tests.panel_support import (
    browser_sends,
    custom_replies,
    front_end,
    saved_state_json,
    start_server,
)
from tests.servers import ServerProcess

__all__ = ["front_end"]  # a fixture used by name below
pytestmark = pytest.mark.slow

GREEDY = {"max_new_tokens": 60, "temperature": 0.0, "top_p": 0.9, "do_sample": False}
_ASSISTANT = re.compile(
    r"<div class='awb-chat-role'>Assistant</div>(.*?)(?:<div class='awb-chat-error'>|</div>)",
    re.S)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         advanced_experiments: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("chat") / "ws", advanced_experiments)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def llm(live: ServerProcess) -> dict[str, Any]:
    """The tiny chat model (full SFT checkpoint), Deployed."""
    return live.deploy("chat", "tiny-chat-sft")


def greedy_playground(agent: dict[str, Any], tokens: int = 60) -> ChatPlayground:
    chat = ChatPlayground(agent["endpoint"], key=lambda: agent["api_key"])
    chat.max_new_tokens.value = tokens
    chat.do_sample.value = False
    assert chat.wait(30)
    return chat


def server_session(agent: dict[str, Any], session_id: str) -> requests.Response:
    return requests.get(f"{agent['endpoint']}/sessions/{session_id}", timeout=30,
                        headers={"Authorization": f"Bearer {agent['api_key']}"})


def assistant_texts(values: list[str]) -> list[str]:
    """The assistant text each rendered view showed (unescaped)."""
    found = [_ASSISTANT.findall(v) for v in values]
    return [html.unescape(texts[-1]) for texts in found if texts]


def updates_of(sent: list[dict[str, Any]], widget: Any, trait: str) -> list[Any]:
    """The values of ``trait`` that the kernel sent to ``widget``'s front end, in order."""
    return [m["data"]["state"][trait] for m in sent
            if m["comm_id"] == widget.comm.comm_id and m["data"].get("method") == "update"
            and trait in m["data"].get("state", {})]


def test_reply_streams_into_the_view_off_the_kernel_thread(
        llm: dict[str, Any], front_end: list[dict[str, Any]]) -> None:
    chat = greedy_playground(llm)
    setters: list[tuple[threading.Thread, str]] = []
    chat.live.observe(lambda c: setters.append((threading.current_thread(), c["new"])), "value")

    chat.send("tell me something").result(60)
    assert chat.last_error is None, chat.last_error

    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        expected = agent.generate("tell me something", params=GREEDY).results[0].completion
    assert chat.messages == [{"role": "user", "content": "tell me something"},
                             {"role": "assistant", "content": expected}]
    assert html.escape(expected) in chat.transcript.value
    assert chat.live.value == ""

    # Several views of the growing reply reached the front end before the finished turn.
    partial = [t for t in assistant_texts(updates_of(front_end, chat.live, "value"))
               if t != "…"]
    assert len(set(partial)) >= 2, partial
    assert all(expected.startswith(t) for t in partial)
    assert len(partial[0]) < len(expected)
    # Only the placeholder is set by send() itself; the streamed text comes from the worker.
    streamed = [thread for thread, value in setters if assistant_texts([value]) != ["…"]]
    assert streamed
    assert threading.current_thread() not in streamed
    chat.close()


def test_second_message_continues_the_session(llm: dict[str, Any]) -> None:
    chat = greedy_playground(llm, tokens=8)
    chat.send("first question").result(60)
    first = chat.session_id
    assert first
    chat.prompt.value = "second question"
    chat.send_button.click()
    assert chat.wait(60)
    assert chat.session_id == first
    assert chat.prompt.value == ""

    stored = server_session(llm, first).json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][2]["content"] == "second question"
    assert stored["messages"] == chat.messages
    assert first in [value for _label, value in chat.sessions.options]
    assert chat.sessions.value == first
    assert chat.transcript.value.count("awb-chat-user") == 2
    chat.close()


def test_new_session_clears_the_view_and_starts_another(llm: dict[str, Any]) -> None:
    chat = greedy_playground(llm, tokens=8)
    chat.send("hello there").result(60)
    old = chat.session_id
    chat.new_button.click()
    assert chat.wait(30)
    assert chat.messages == []
    assert chat.session_id is None
    assert chat.transcript.value == transcript_html([])
    assert chat.sessions.value is None  # the old session is no longer the one highlighted

    chat.send("a fresh start").result(60)
    assert chat.session_id not in (None, old)
    assert len(server_session(llm, str(old)).json()["messages"]) == 2
    assert len(server_session(llm, str(chat.session_id)).json()["messages"]) == 2
    listed = [value for _label, value in chat.sessions.options]
    assert {old, chat.session_id} <= set(listed)
    assert chat.sessions.value == chat.session_id  # the list highlights the new session
    chat.close()


def test_load_continue_and_delete_a_past_session(llm: dict[str, Any]) -> None:
    first = greedy_playground(llm, tokens=8)
    first.send("remember this").result(60)
    session_id = str(first.session_id)
    first.close()

    chat = greedy_playground(llm, tokens=8)  # a later visit: starts empty, lists the past
    assert chat.messages == []
    labels = dict((value, label) for label, value in chat.sessions.options)
    assert labels[session_id].startswith("remember this")

    chat.sessions.value = session_id
    chat.load_button.click()
    assert chat.wait(30)
    assert chat.session_id == session_id
    assert next(m["content"] for m in chat.messages) == "remember this"
    assert "remember this" in chat.transcript.value

    chat.send("and this").result(60)
    assert chat.session_id == session_id
    assert len(server_session(llm, session_id).json()["messages"]) == 4

    chat.sessions.value = session_id
    chat.delete_button.click()
    assert chat.wait(30)
    assert server_session(llm, session_id).status_code == 404
    assert session_id not in [value for _label, value in chat.sessions.options]
    assert chat.messages == []
    assert chat.session_id is None

    chat.delete_session(session_id).result(30)
    assert "already gone" in chat.status.value
    chat.load_session(session_id).result(30)
    assert "404" in str(chat.last_error)
    chat.close()


def test_sampling_controls_reach_the_server(llm: dict[str, Any]) -> None:
    chat = greedy_playground(llm, tokens=1)
    chat.send("tell me something").result(60)
    one = chat.messages[-1]["content"]
    with Agent(llm["endpoint"], api_key=llm["api_key"]) as agent:
        longer = agent.generate("tell me something", params=GREEDY).results[0].completion
        single = agent.generate("tell me something",
                                params={**GREEDY, "max_new_tokens": 1}).results[0].completion
    assert one == single
    assert len(one) < len(longer)

    # Sampling on, with the widgets' values: what comes back is still a stored turn.
    chat.do_sample.value = True
    chat.temperature.value = 1.5
    chat.top_p.value = 0.5
    chat.max_new_tokens.value = 5
    assert chat.params() == {"max_new_tokens": 5, "temperature": 1.5, "top_p": 0.5,
                             "do_sample": True}
    chat.send("again").result(60)
    assert chat.last_error is None
    assert len(server_session(llm, str(chat.session_id)).json()["messages"]) == 4
    chat.close()


def test_greedy_is_the_default_and_sampling_one_click_away(llm: dict[str, Any]) -> None:
    chat = ChatPlayground(llm["endpoint"], key=lambda: llm["api_key"])
    try:
        assert chat.params()["do_sample"] is False
        assert chat.temperature.disabled
        assert chat.top_p.disabled
        chat.do_sample.value = True
        assert chat.params()["do_sample"] is True
        assert not chat.temperature.disabled
        assert not chat.top_p.disabled
    finally:
        chat.close()


def test_stop_keeps_the_turn_out_of_the_conversation(llm: dict[str, Any]) -> None:
    chat = greedy_playground(llm, tokens=60)
    chat.send("first question").result(60)
    before = list(chat.messages)
    future = chat.send("tell me something long")
    chat.stop_button.click()  # before the first piece arrives: the worker stops at it
    future.result(60)
    assert chat.messages == before
    assert "stopped; this turn is not saved" in chat.transcript.value
    assert "tell me something long" in chat.transcript.value
    assert not chat.send_button.disabled
    assert chat.stop_button.disabled
    chat.close()


def test_errors_are_shown_in_the_view(llm: dict[str, Any]) -> None:
    wrong = ChatPlayground(llm["endpoint"], key=lambda: "awb_not-the-key")
    assert wrong.wait(30)
    assert "401" in str(wrong.last_error)
    wrong.send("hello").result(30)
    assert "HTTP 401" in wrong.status.value
    assert "rotated" in wrong.status.value
    assert wrong.messages == []
    assert wrong.live.value == ""
    assert wrong.prompt.value == "hello"  # kept, to send again
    assert not wrong.send_button.disabled
    wrong.close()

    gone = ChatPlayground(llm["endpoint"], key=lambda: None)
    gone.send("hello").result(30)
    assert "not Deployed" in gone.status.value
    gone.close()

    chat = greedy_playground(llm)
    chat.send("word " * 300).result(60)  # longer than the model's 128-token context: 400
    assert "HTTP 400" in chat.status.value
    assert "tokens" in str(chat.last_error)
    assert chat.messages == []
    chat.send("   ").result(5)
    assert "Type a prompt first" in chat.status.value
    chat.close()


def test_in_band_stream_errors_are_split_from_the_reply() -> None:
    text, error = split_stream_error("Paris is\n[ERROR: generation failed: out of memory]")
    assert (text, error) == ("Paris is", "ERROR: generation failed: out of memory")
    assert split_stream_error("Paris.") == ("Paris.", None)


def test_details_of_an_llm_agent_hold_the_playground_and_never_send_the_key(
        live: ServerProcess, llm: dict[str, Any], front_end: list[dict[str, Any]]) -> None:
    key = llm["api_key"]
    listed = live.api("GET", "experiments").json()["experiments"]
    experiment = ExperimentInfo.from_json(next(e for e in listed if e["name"] == "tiny-chat-sft"))
    details = DeploymentDetails(AgentInfo.from_json(llm), experiment, key=lambda: key,
                                on_rotate=lambda _name: None)
    assert details.playground_box is not None
    assert details.playground_box.get_title(0) == "Chat playground"
    details.playground_box.selected_index = 0
    chat = details.playground_box.children[0].children[0]
    assert isinstance(chat, ChatPlayground)
    assert not {"key", "_key", "api_key"} & set(chat.trait_names())

    chat.do_sample.value = False
    chat.max_new_tokens.value = 8
    chat.send("is this private?").result(60)
    chat.load_session(str(chat.session_id)).result(30)
    assert chat.last_error is None, chat.last_error
    browser_sends(details.secret, {"type": "request", "id": "reveal"})
    assert custom_replies(front_end, details.secret)[-1]["text"] == key

    assert key not in saved_state_json()
    carrying = [m for m in front_end if key in json.dumps(m["data"], default=str)]
    assert carrying, "the reveal should have sent the key once"
    assert all(m["comm_id"] == details.secret.comm.comm_id
               and m["data"].get("method") == "custom" for m in carrying)
    details.close()  # the panel closes whole trees: the playground's worker stops too
    assert chat.comm is None
    with pytest.raises(WorkbenchError):
        chat.refresh_sessions().result(5)


def test_json_mode_and_a_tool_call_with_its_result(llm: dict[str, Any]) -> None:
    chat = greedy_playground(llm, tokens=100)
    chat.mode.value = "JSON"
    assert chat.wait(30)
    assert chat.json_panel.layout.display == "flex"
    assert chat.tools_panel.layout.display == "none"
    schema = {"type": "object", "properties": {"capital": {"enum": ["Paris", "Lima"]}},
              "required": ["capital"], "additionalProperties": False}
    chat.schema.value = json.dumps(schema)
    chat.send("What is the capital of France?").result(60)
    assert chat.last_error is None, chat.last_error
    assert json.loads(chat.messages[-1]["content"])["capital"] in ("Paris", "Lima")
    chat.schema.value = "{nope"
    chat.send("again").result(60)
    assert "schema does not parse" in str(chat.last_error)

    chat.mode.value = "Tools"  # a new conversation, with the demo's country_facts tool
    assert chat.wait(30)
    assert chat.messages == []
    assert chat.tools_panel.layout.display == "flex"
    assert "country_facts" in chat.tools.value
    # The quick model has not learnt to call by itself, nor to end a free string: the call is
    # forced and the country an enum, so it is a whole call.
    tools = json.loads(chat.tools.value)
    tools[0]["function"]["parameters"]["properties"]["country"]["enum"] = ["France", "Peru"]
    chat.tools.value = json.dumps(tools)
    chat.tool_choice.value = "required"
    chat.send("Look up France.").result(60)
    call = chat.pending_call
    assert call is not None, chat.last_error
    assert call["name"] == "country_facts"
    assert "country" in json.loads(call["arguments"])
    assert chat.tool_result.layout.display == "flex"
    assert "calls country_facts(" in chat.transcript.value
    chat.tool_choice.value = "none"
    chat.send_tool_result("The capital of France is Paris.").result(60)
    assert chat.last_error is None, chat.last_error
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "assistant"]
    assert chat.messages[2] == {"role": "tool", "tool_call_id": call["id"],
                                "content": "The capital of France is Paris."}
    assert "Tool result" in chat.transcript.value
    assert chat.pending_call is None
    chat.close()
