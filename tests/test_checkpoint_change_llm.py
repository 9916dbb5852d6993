"""An LLM agent's checkpoint split and change: sessions stick to one checkpoint and survive.

A quick tiny chat model (real transformers training, ``build_llm_demo(quick=True)``) with
two checkpoints is served by a real server. During a 50/50 split every session's calls go to
one checkpoint (read from the per-checkpoint traffic counters); after Promote the sessions
go on with their history intact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.servers import ServerProcess, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from server_extension.demos.llm import build_llm_demo

    root = tmp_path_factory.mktemp("llm-change")
    build_llm_demo(root, quick=True)
    server = ServerProcess(root, extra_args=[
        "--AgentsWorkbenchApp.health_check_interval=0"]).start()
    try:
        yield server
    finally:
        server.stop()


def counts(server: ServerProcess, name: str) -> dict[str, int]:
    rows = server.api("GET", f"agents/{name}/metrics").json()["checkpoints"]
    return {row["role"]: int(row["requests"]) for row in rows}


def test_sessions_stick_during_a_split_and_survive_promote(chat_server: ServerProcess) -> None:
    # About a minute on 2 shared cores: the LLM loads twice (the agent, then its canary).
    # The session ids are fixed and the split hashes them, so which side each takes is
    # deterministic: 10 of them land on both sides.
    from server_extension.demos.llm import SFT_EXPERIMENT

    steps = [c["step"] for c in next(
        e for e in chat_server.api("GET", "experiments").json()["experiments"]
        if e["name"] == SFT_EXPERIMENT)["checkpoints"]]
    assert len(steps) >= 2
    agent = chat_server.deploy("chat", SFT_EXPERIMENT, steps[0], timeout=180)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {agent['api_key']}"

    def say(session_id: str, prompt: str) -> None:
        reply = http.post(f"{agent['endpoint']}/generate", timeout=120, json={
            "prompts": [prompt], "session_id": session_id,
            "params": {"max_new_tokens": 4, "do_sample": False}})
        assert reply.status_code == 200, reply.text

    split = chat_server.api("POST", "agents/chat/split",
                            json={"checkpoint": steps[-1], "percent": 50})
    assert split.status_code == 202, split.text
    wait_until(lambda: (chat_server.api("GET", "agents/chat").json()["split"] or {})
               .get("outcome") == "canary", timeout=180, what="the canary to serve")
    sides = []
    for i in range(10):
        before = counts(chat_server, "chat")
        for turn in range(2):
            say(f"sticky-{i}", f"Hi {turn}")
        after = counts(chat_server, "chat")
        delta = {role: after[role] - before.get(role, 0) for role in after}
        # Both turns of one session on one checkpoint, none on the other.
        assert sorted(delta.values()) == [0, 2], delta
        sides.append(next(role for role, n in delta.items() if n))
    assert set(sides) == {"primary", "canary"}, sides  # 10 sessions at 50 %: both are used

    promoted = chat_server.api("POST", "agents/chat/promote")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["checkpoint"]["step"] == steps[-1]
    for i in range(10):
        say(f"sticky-{i}", "And now?")
    for i in range(10):
        history: Any = http.get(f"{agent['endpoint']}/sessions/sticky-{i}", timeout=30).json()
        messages = history["messages"]
        assert len(messages) == 6, history  # 3 turns of user and assistant, none lost
    assert chat_server.api("GET", "agents/chat").json()["status"] == "Deployed"
    http.close()


def test_stream_in_progress_finishes_across_a_change(chat_server: ServerProcess) -> None:
    """A streamed reply that started on the old checkpoint ends normally after the switch."""
    from server_extension.demos.llm import SFT_EXPERIMENT

    steps = [c["step"] for c in next(
        e for e in chat_server.api("GET", "experiments").json()["experiments"]
        if e["name"] == SFT_EXPERIMENT)["checkpoints"]]
    agent = chat_server.deploy("chat-stream", SFT_EXPERIMENT, steps[0], timeout=180)
    target = steps[-1]
    with requests.post(f"{agent['endpoint']}/generate_stream", stream=True, timeout=180,
                       headers={"Authorization": f"Bearer {agent['api_key']}"},
                       json={"prompt": "Tell me more", "params": {"max_new_tokens": 48}}
                       ) as reply:
        assert reply.status_code == 200
        pieces = reply.iter_content(None, decode_unicode=True)
        first = next(pieces)
        changed = chat_server.api("POST", "agents/chat-stream/checkpoint",
                                  json={"checkpoint": target})
        assert changed.status_code == 202, changed.text
        text = first + "".join(pieces)
    assert "[ERROR" not in text
    wait_until(lambda: chat_server.api("GET", "agents/chat-stream").json()["checkpoint"]
               ["step"] == target, timeout=180, what="the change to serve")
