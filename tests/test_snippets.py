"""Deployment snippets: every tab of every variant runs, as the user runs it, and gets answers.

One live server (module-scoped) holds an agent of each kind: gym (CartPole DQN), recurrent
(memory PPO), parallel multi-agent (spread MADDPG), turn-based multi-agent (tic-tac-toe IPPO),
LLM (tiny chat), supervised (iris) and LatentPPO. Each snippet is executed in a fresh process
(``python -c`` or ``bash -c``) with ``ARENA_BASE_URL`` as the snippet itself says and
``ARENA_API_KEY`` holding an access token: the Arena client tab through ``ArenaClient``, the
Arena CLI tab through the installed ``arena`` console script, Manual HTTP through requests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents_widget.client import ExperimentInfo
from agents_widget.snippets import BASE_URL_ENV, KEY_ENV, TITLES, build_snippets, snippet_kind
from tests.arena_support import arena_env
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow
pytest_plugins = ["tests.classic_fixtures"]

AGENTS = {  # agent name -> (experiment, kind)
    "cartpole": ("cartpole-dqn", "gym"),
    "memory": ("cartpole-memory-ppo", "recurrent"),
    "spread": ("spread-maddpg", "parallel"),
    "ttt": ("tictactoe-ippo", "turn_based"),
    "chat": ("tiny-chat-sft", "llm"),
    "iris": ("iris-classifier", "supervised"),
    "latent": ("iris-latent-ppo", "supervised"),
}
# What a successful run prints, per kind and tab.
EXPECTED = {
    "gym": ("episode return:", "action:", "action:"),
    "recurrent": ("episode return:", "action:", "last action:"),
    "parallel": ("returns:", "actions:", "actions:"),
    "turn_based": ("final rewards:", "move:", "move:"),
    "llm": (None, None, None),  # free text: checked for being non-empty
    "supervised": ("prediction:", "prediction:", "prediction:"),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path,
           advanced_experiments: Path, classic_experiments: Path,
           ) -> Iterator[tuple[ServerProcess, str, dict[str, tuple[dict[str, Any],
                                                                   ExperimentInfo]]]]:
    root = tmp_path_factory.mktemp("snippets") / "ws"
    shutil.copytree(demo_experiments, root / "experiments")
    for source in (advanced_experiments, classic_experiments):
        for folder in source.iterdir():
            shutil.copytree(folder, root / "experiments" / folder.name)
    server = ServerProcess(root).start()
    try:
        token = server.api("POST", "tokens", json={"name": "snippets"}).json()["token"]
        experiments = {e["name"]: ExperimentInfo.from_json(e)
                       for e in server.api("GET", "experiments").json()["experiments"]}
        agents = {name: (server.deploy(name, experiment, timeout=180), experiments[experiment])
                  for name, (experiment, _) in AGENTS.items()}
        yield server, token, agents
    finally:
        server.stop()


def run(code: str, language: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = (["python", "-c", code] if language == "python"
               else [shutil.which("bash") or "bash", "-c", code])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          check=False)


def told_base_url(code: str) -> str:
    """The ``ARENA_BASE_URL`` the snippet tells the user to export."""
    match = re.search(rf'export {BASE_URL_ENV}="([^"]+)"', code)
    assert match, code
    return match.group(1)


@pytest.mark.parametrize("tab", TITLES)
@pytest.mark.parametrize("name", list(AGENTS))
def test_every_tab_of_every_variant_runs(served: Any, name: str, tab: str,
                                         tmp_path: Path) -> None:
    server, token, agents = served
    agent, experiment = agents[name]
    kind = AGENTS[name][1]
    assert snippet_kind(experiment) == kind
    snippet = build_snippets(agent["endpoint"], experiment)[tab]
    assert agent["api_key"] not in snippet.code
    assert token not in snippet.code
    env = arena_env(server, tmp_path / "home", token)
    if tab != "Manual HTTP":
        assert told_base_url(snippet.code) == server.url + "agents/arena"
        env[BASE_URL_ENV] = told_base_url(snippet.code)
    started = time.time()
    done = run(snippet.code, snippet.language, env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    expected = EXPECTED[kind][TITLES.index(tab)]
    if expected is not None:
        assert expected in done.stdout, done.stdout
    else:
        # Sampled free text may be blank (the tiny model's first token is its end about once in
        # 40 samples), so the check is that something was printed and that the agent answered
        # this run's own call.
        assert done.stdout, done.stderr
        log = server.api("GET", f"agents/{name}/requests", params={"limit": 20}).json()
        answered = [r for r in log["requests"] if r["time"] >= started - 1]
        assert answered, log
        assert all(r["status"] == 200 for r in answered), log
    if kind == "gym" and tab == "Arena client":
        assert float(done.stdout.rsplit(":", 1)[1]) >= 1.0
    if kind == "llm" and tab == "Arena CLI":
        assert "Started session" in done.stdout
        assert "Session Id" in done.stdout  # the sessions table after two prompts


def test_manual_http_also_takes_the_deployment_key(served: Any, tmp_path: Path) -> None:
    server, _token, agents = served
    agent, experiment = agents["cartpole"]
    snippet = build_snippets(agent["endpoint"], experiment)["Manual HTTP"]
    done = run(snippet.code, "python", arena_env(server, tmp_path, agent["api_key"]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("action:")
    refused = run(snippet.code, "python", arena_env(server, tmp_path, "wrong-key"))
    assert refused.returncode != 0
    assert "401" in refused.stderr


def experiment(**fields: Any) -> ExperimentInfo:
    base: dict[str, Any] = {"name": "x", "tab": "classic", "environment": "CartPole-v1"}
    return ExperimentInfo.from_json({**base, **fields})


@pytest.mark.parametrize(("fields", "kind", "must_have"), [
    ({}, "gym", ["gym.make(\"CartPole-v1\")", "agent.get_action(obs"]),
    ({"recurrent": True}, "recurrent", ["hidden_state=hidden_state", "hidden_state = None"]),
    ({"recurrent": True, "extra": {"env": {"kind": "gymnasium", "id": "CartPole-v1",
                                           "observation": {"keep": [0, 2]}}}},
     "recurrent", ["KEEP = [0, 2]", "TransformObservation", "hidden_state=hidden_state"]),
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
    endpoint = "http://127.0.0.1:1/base/agents/d/demo"
    snippets = build_snippets(endpoint, info)
    assert TITLES == ("Arena client", "Arena CLI", "Manual HTTP")
    # LLM agents get a fourth tab, the OpenAI client (tests/test_openai_api.py runs it).
    assert tuple(snippets) == (*TITLES, "OpenAI client") if kind == "llm" else TITLES
    client = snippets["Arena client"].code
    assert "from agilerl.arena.client import ArenaClient" in client
    assert 'client.open_inference_agent("demo")' in client
    assert f'export {BASE_URL_ENV}="http://127.0.0.1:1/base/agents/arena"' in client
    assert KEY_ENV in client
    for text in must_have:
        assert text in client, text
    cli = snippets["Arena CLI"].code
    assert "arena agent run demo" in cli
    if kind == "llm":
        assert 'arena agent generate --prompt' in cli
        assert "python -" not in cli
    else:
        assert "ArenaClient().open_inference_agent(\"demo\")" in cli  # the call the CLI lacks
    route = {"llm": "generate", "supervised": "predict"}.get(kind, "get_action")
    assert f'"{endpoint}/{route}"' in snippets["Manual HTTP"].code  # the full URL
    assert "def serialize" in snippets["Manual HTTP"].code
    for snippet in snippets.values():
        if snippet.language == "python":
            compile(snippet.code, snippet.title, "exec")
        else:
            subprocess.run(["bash", "-n", "-c", snippet.code], check=True)
