"""Deployment snippets: every variant for a deployed CartPole agent runs and gets an answer.

Each snippet is executed as the user would run it (``python -c`` or ``bash -c`` in a fresh
process, the key in ``ARENA_API_KEY``) against a live workbench server. The other kinds
(recurrent, multi-agent, LLM, supervised) are checked for the calls they must make and for
being valid Python or shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents_widget.client import ExperimentInfo
from agents_widget.snippets import KEY_ENV, build_snippets, snippet_kind
from tests.panel_support import start_server


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory,
             demo_experiments: Path) -> Iterator[tuple[dict[str, Any], ExperimentInfo]]:
    server = start_server(tmp_path_factory.mktemp("snippets") / "ws", demo_experiments)
    try:
        agent = server.deploy("cartpole", "cartpole-dqn")
        experiments = server.api("GET", "experiments").json()["experiments"]
        experiment = next(e for e in experiments if e["name"] == "cartpole-dqn")
        yield agent, ExperimentInfo.from_json(experiment)
    finally:
        server.stop()


def run_snippet(code: str, language: str, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, KEY_ENV: key}
    command = [sys.executable, "-c", code] if language == "python" else ["bash", "-c", code]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("title", ["Python client", "CLI", "Manual HTTP"])
def test_cartpole_snippet_runs_and_gets_an_answer(
        deployed: tuple[dict[str, Any], ExperimentInfo], title: str) -> None:
    agent, experiment = deployed
    snippet = build_snippets(agent["endpoint"], experiment)[title]
    assert agent["api_key"] not in snippet.code
    assert agent["endpoint"] in snippet.code
    done = run_snippet(snippet.code, snippet.language, agent["api_key"])
    assert done.returncode == 0, done.stderr
    if title == "Python client":
        assert "episode return:" in done.stdout
        assert float(done.stdout.rsplit(":", 1)[1]) >= 1.0
    elif title == "CLI":
        status, answer = (json.loads(line) for line in done.stdout.strip().splitlines())
        assert status["agent"]["algo"] == "DQN"
        assert answer["success"] is True
        assert answer["action"]
    else:
        assert done.stdout.startswith("action:")


def test_snippets_without_the_key_are_refused(
        deployed: tuple[dict[str, Any], ExperimentInfo]) -> None:
    agent, experiment = deployed
    snippet = build_snippets(agent["endpoint"], experiment)["Manual HTTP"]
    done = run_snippet(snippet.code, "python", "wrong-key")
    assert done.returncode != 0
    assert "401" in done.stderr


def experiment(**fields: Any) -> ExperimentInfo:
    base: dict[str, Any] = {"name": "x", "tab": "classic", "environment": "CartPole-v1"}
    return ExperimentInfo.from_json({**base, **fields})


@pytest.mark.parametrize(("fields", "kind", "must_have"), [
    ({}, "gym", ["gym.make(\"CartPole-v1\")", "agent.get_action(obs"]),
    ({"recurrent": True}, "recurrent", ["hidden_state=hidden_state", "hidden_state = None"]),
    ({"multi_agent": True, "environment": "simple_spread_v3"}, "parallel",
     ["parallel_env(", "action_mask", "env_defined_actions", "while env.agents"]),
    ({"multi_agent": True, "environment": "tictactoe_v3"}, "turn_based",
     ["env.agent_iter()", "action_mask"]),
    ({"multi_agent": True, "environment": "my_custom_env"}, "parallel",
     ["NotImplementedError", "env_defined_actions"]),
    ({"tab": "advanced", "framework": "transformers", "base_model": "gpt2",
      "environment": None, "dataset": "chat"}, "llm", ["agent.generate(", "generate_stream"]),
    ({"tab": "advanced", "framework": "torch", "environment": None, "dataset": "iris"},
     "supervised", ["agent.predict(inputs)"]),
    ({"tab": "advanced", "framework": "latent_ppo", "algorithm": "LatentPPO",
      "base_model": "decoder-run", "environment": None}, "supervised",
     ["agent.predict(inputs)"]),
])
def test_each_kind_gets_fitting_code(fields: dict[str, Any], kind: str,
                                     must_have: list[str]) -> None:
    info = experiment(**fields)
    assert snippet_kind(info) == kind
    endpoint = "http://127.0.0.1:1/agents/d/demo"
    snippets = build_snippets(endpoint, info)
    client = snippets["Python client"].code
    assert "from agilerl.arena.inference import Agent" in client
    assert f'Agent("{endpoint}", api_key=os.environ["{KEY_ENV}"])' in client
    for text in must_have:
        assert text in client, text
    route = {"llm": "generate", "supervised": "predict"}.get(kind, "get_action")
    assert f'"{endpoint}/{route}"' in snippets["Manual HTTP"].code  # the full URL
    assert "def serialize" in snippets["Manual HTTP"].code
    assert f"$ENDPOINT/{route}" in snippets["CLI"].code
    for snippet in snippets.values():
        if snippet.language == "python":
            compile(snippet.code, snippet.title, "exec")
        else:
            subprocess.run(["bash", "-n", "-c", snippet.code], check=True)
