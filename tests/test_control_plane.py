"""Conformance: the unchanged ``agilerl-arena`` SDK and ``arena`` CLI against the control plane.

One real ``jupyter server`` (module-scoped) over a workspace holding the quick Classic RL demo
and the Advanced Training experiments (tiny chat model, LoRA, iris). Every CLI command runs as
the user would run it: the installed console script, in a subprocess with its own ``HOME``,
``ARENA_BASE_URL=<server>agents/arena`` and ``ARENA_API_KEY=<access token>``. The SDK runs the
same way (a fresh interpreter per script), since it keeps its state under ``~/.arena``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.arena_support import arena, run_code
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path,
           advanced_experiments: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("arena") / "ws"
    shutil.copytree(demo_experiments, root / "experiments")
    for folder in advanced_experiments.iterdir():
        shutil.copytree(folder, root / "experiments" / folder.name)
    proc = ServerProcess(root).start()
    try:
        yield proc
    finally:
        proc.stop()


def new_token(server: ServerProcess, name: str) -> dict[str, Any]:
    created = server.api("POST", "tokens", json={"name": name})
    assert created.status_code == 201, created.text
    return dict(created.json())


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return str(new_token(server, "alice")["token"])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def ok(done: Any) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return str(done.stdout)


# -- projects and experiments ---------------------------------------------------------------------


def test_projects_and_experiments(server: ServerProcess, token: str, home: Path) -> None:
    out = ok(arena(server, home, token, "projects", "list"))
    assert "classic" in out
    assert "Classic RL" in out
    assert "advanced" in out
    classic = ok(arena(server, home, token, "experiments", "list", "--project", "classic"))
    assert "cartpole-dqn" in classic
    assert "tiny-chat-sft" not in classic
    advanced = ok(arena(server, home, token, "experiments", "list", "--project", "advanced"))
    assert "tiny-chat-sft" in advanced
    assert "iris-classifier" in advanced

    missing = arena(server, home, token, "experiments", "list", "--project", "nope")
    assert missing.returncode == 1
    assert "API error (404): No project named 'nope'" in missing.stderr
    # A default project, as the CLI stores it, feeds the next listings.
    assert "Default project set to 'classic'" in ok(
        arena(server, home, token, "projects", "set-default", "classic"))
    assert "cartpole-dqn" in ok(arena(server, home, token, "experiments", "list"))


def test_checkpoints_and_metrics(server: ServerProcess, token: str, home: Path,
                                 tmp_path: Path) -> None:
    experiment = next(e for e in server.api("GET", "experiments").json()["experiments"]
                      if e["name"] == "cartpole-dqn")
    out = ok(arena(server, home, token, "experiments", "checkpoints", "cartpole-dqn"))
    for checkpoint in experiment["checkpoints"]:
        assert f"step_{checkpoint['step']}" in out

    target = tmp_path / "m.csv"
    out = ok(arena(server, home, token, "experiments", "metrics", "cartpole-dqn",
                   "--output-file", str(target), "--preview-rows", "2"))
    assert "Metrics saved to" in out
    lines = target.read_text().splitlines()
    assert lines[0] == "step,training_score,evaluation_score"
    assert len(lines) > 2
    unknown = arena(server, home, token, "experiments", "metrics", "no-such-run",
                    "--output-file", str(tmp_path / "x.csv"))
    assert unknown.returncode == 1
    assert "Unknown experiment 'no-such-run'" in unknown.stderr


# -- agents ----------------------------------------------------------------------------------


def test_deploy_list_run_and_an_episode_through_the_sdk(server: ServerProcess, token: str,
                                                        home: Path) -> None:
    out = ok(arena(server, home, token, "agent", "deploy", "cartpole-dqn"))
    assert "Agent submitted for deployment from experiment cartpole-dqn (best checkpoint)" in out
    agent = server.wait_status("cartpole-dqn")
    assert agent["status"] == "Deployed"
    assert agent["options"] == {"memory_scope": "user"}
    listed = ok(arena(server, home, token, "agent", "list"))
    assert "cartpole-dqn" in listed
    assert "Deployed" in listed
    assert server.url + "agents/d/cartpole-dqn" in listed
    assert agent["api_key"] not in listed

    ok(arena(server, home, token, "agent", "run", "cartpole-dqn"))
    binding = json.loads((home / ".arena" / "inference.json").read_text())
    assert binding["deployments"]["cartpole-dqn"]["url"] == server.url + "agents/d/cartpole-dqn"
    assert binding["active_agent"]["deployment"] == "cartpole-dqn"

    episode = run_code(server, home, token, EPISODE)
    assert episode.returncode == 0, episode.stderr
    assert float(episode.stdout.strip().rsplit(" ", 1)[1]) >= 1.0

    # A named checkpoint is its own agent, named <experiment>-step-<N>.
    step = agent["checkpoint_step"]
    out = ok(arena(server, home, token, "agent", "deploy", "cartpole-dqn", "--checkpoint",
                   f"step_{step}"))
    assert f"(checkpoint step_{step})" in out
    pinned = server.wait_status(f"cartpole-dqn-step-{step}")
    assert (pinned["status"], pinned["checkpoint_step"]) == ("Deployed", step)
    bad = arena(server, home, token, "agent", "deploy", "cartpole-dqn", "--checkpoint", "step_7")
    assert bad.returncode == 1
    assert "no checkpoint at step 7" in bad.stderr

    missing = arena(server, home, token, "agent", "run", "nobody", "--refresh")
    assert missing.returncode == 1
    assert "No deployment named 'nobody'" in missing.stderr


EPISODE = '''
import gymnasium as gym
from agilerl.arena.client import ArenaClient

agent = ArenaClient().open_inference_agent("cartpole-dqn")
env = gym.make("CartPole-v1")
obs, info = env.reset(seed=0)
total, done = 0.0, False
while not done:
    action, _ = agent.get_action(obs, info=info)
    obs, reward, terminated, truncated, info = env.step(action)
    total += float(reward)
    done = terminated or truncated
print("return", total)
'''


def test_generate_and_sessions_through_the_cli(server: ServerProcess, token: str,
                                               home: Path) -> None:
    ok(arena(server, home, token, "agent", "deploy", "tiny-chat-sft", "--memory-scope", "user"))
    assert server.wait_status("tiny-chat-sft")["status"] == "Deployed"
    ok(arena(server, home, token, "agent", "run", "tiny-chat-sft"))
    out = ok(arena(server, home, token, "agent", "generate", "--prompt",
                   "What is the capital of France?"))
    assert "Started session" in out
    inference = json.loads((home / ".arena" / "inference.json").read_text())
    session = inference["active_sessions"]["tiny-chat-sft"]
    assert out.replace(f"Started session {session}.", "").strip()  # the model answered
    ok(arena(server, home, token, "agent", "generate", "--prompt", "And of Italy?"))

    listed = ok(arena(server, home, token, "agent", "sessions", "list"))
    assert session in listed
    shown = ok(arena(server, home, token, "agent", "sessions", "get", session))
    assert "4 messages" in shown
    assert "What is the capital of France?" in shown
    assert f"Resuming session {session}" in ok(arena(
        server, home, token, "agent", "sessions", "resume", "--session-id", session))
    assert "Cleared the session" in ok(arena(server, home, token, "agent", "sessions", "clear"))

    # Under user scope another token's caller sees none of it, and cannot delete it.
    bob, bob_home = str(new_token(server, "bob")["token"]), home.parent / "bob"
    assert "No chat sessions" in ok(arena(server, bob_home, bob, "agent", "sessions", "list",
                                          "tiny-chat-sft"))
    assert "No session" in ok(arena(server, bob_home, bob, "agent", "sessions", "delete",
                                    session, "tiny-chat-sft", "--yes"))
    stolen = arena(server, bob_home, bob, "agent", "generate", "tiny-chat-sft", "--prompt", "hi",
                   "--session-id", session)
    assert stolen.returncode == 1
    assert "not allowed to use this deployment" in stolen.stderr

    assert f"Deleted session {session}" in ok(arena(
        server, home, token, "agent", "sessions", "delete", session, "--yes"))
    assert "No chat sessions" in ok(arena(server, home, token, "agent", "sessions", "list"))

    changed = arena(server, home, token, "agent", "deploy", "tiny-chat-sft", "--memory-scope",
                    "organization")
    assert changed.returncode == 1
    assert "cannot change" in changed.stderr


def test_organization_scope_shares_sessions(server: ServerProcess, token: str,
                                            home: Path) -> None:
    ok(arena(server, home, token, "agent", "deploy", "tiny-chat-lora", "--memory-scope",
             "organization"))
    assert server.wait_status("tiny-chat-lora")["options"]["memory_scope"] == "organization"
    out = ok(arena(server, home, token, "agent", "generate", "tiny-chat-lora", "--prompt", "hi"))
    session = json.loads((home / ".arena" / "inference.json").read_text())[
        "active_sessions"]["tiny-chat-lora"]
    assert "Started session" in out
    carol = str(new_token(server, "carol")["token"])
    assert session in ok(arena(server, home.parent / "carol", carol, "agent", "sessions",
                               "list", "tiny-chat-lora"))


def test_walk_through_the_sdk(server: ServerProcess, token: str, home: Path) -> None:
    started = time.time()
    done = run_code(server, home, token, SDK_WALK.replace("@URL@", server.url))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {p["name"]: p["type"] for p in result["projects"]} == {
        "advanced": "Advanced Training", "classic": "Classic RL"}
    assert "cartpole-ppo" in result["experiments"]
    assert set(result["checkpoint_keys"]) >= {"steps", "name", "size_mb"}
    assert result["csv_type"].startswith("text/csv")
    assert result["csv"].splitlines()[0] == "step,evaluation_score"
    assert len(result["csv"].splitlines()) <= 3
    assert result["metric_names"] == ["training_score", "evaluation_score"]
    assert result["deployed"]["name"] == "cartpole-ppo"
    assert result["deployed"]["url"] == server.url + "agents/d/cartpole-ppo"
    assert [r["name"] for r in result["listed"]] == ["cartpole-ppo"]
    assert result["metadata"]["algo"] == "PPO"
    assert result["moved"] is True
    # Sampled text may be blank (the tiny model ends at its first token about once in 40
    # samples): the check is that a string came back and the server answered the call.
    assert isinstance(result["completion"], str)
    log = server.api("GET", "agents/tiny-chat-sft/requests", params={"limit": 20}).json()
    generated = [r["status"] for r in log["requests"]
                 if r["route"] == "generate" and r["time"] >= started - 1]
    assert generated == [200], log
    # Other tests of the module may have left sessions of theirs on this agent.
    assert "sdk-session-1" in result["session_ids"]
    assert result["messages"] == ["user", "assistant"]
    assert result["deleted"] == [True, False]
    assert result["user"]["last_name"] == "(token alice)"


SDK_WALK = '''
import json, pathlib, time
import gymnasium as gym
from agilerl.arena.client import ArenaClient

client = ArenaClient()


def deployed(name):
    """Wait, as a user would with 'arena agent list', until the agent is Deployed."""
    for _ in range(1200):
        rows = client.list_inference_deployments(name=name)
        if rows and rows[0]["status"] == "Deployed":
            return rows
        time.sleep(0.1)
    raise TimeoutError(name)


out = {"projects": client.list_projects()}
out["experiments"] = [e["name"] for e in client.list_experiments("classic")]
out["checkpoint_keys"] = sorted(set().union(*client.list_checkpoints("cartpole-ppo")))
body, ctype, _ = client.preview_experiment_metrics_csv(
    "cartpole-ppo", preview_rows=2, metrics=["evaluation_score"])
out["csv"], out["csv_type"] = body.decode(), ctype
out["metric_names"] = client.list_experiment_metric_names("cartpole-ppo")
out["deployed"] = client.deploy_agent("cartpole-ppo")
out["listed"] = deployed("cartpole-ppo")

# A stale cached URL (an old deployment) answers 404 at /status: the SDK refetches it once.
cache = pathlib.Path.home() / ".arena" / "inference.json"
cache.parent.mkdir(parents=True, exist_ok=True)
cache.write_text(json.dumps({"deployments": {"cartpole-ppo": {"url": "@URL@agents/d/gone"}}}))
agent = client.open_inference_agent("cartpole-ppo")
out["moved"] = json.loads(cache.read_text())["deployments"]["cartpole-ppo"]["url"].endswith(
    "/agents/d/cartpole-ppo")
out["metadata"] = agent.metadata.agent.model_dump()
obs, info = gym.make("CartPole-v1").reset(seed=0)
agent.get_action(obs, info=info)

client.deploy_agent("tiny-chat-sft")  # idempotent: the same agent if it exists
deployed("tiny-chat-sft")
chat = client.open_inference_agent("tiny-chat-sft")
out["completion"] = chat.generate("What is the capital of France?",
                                  session_id="sdk-session-1").results[0].completion
out["session_ids"] = [s.session_id for s in chat.list_sessions()]
out["messages"] = [m.role for m in chat.get_session("sdk-session-1").messages]
out["deleted"] = [chat.delete_session("sdk-session-1"), chat.delete_session("sdk-session-1")]
out["user"] = client.get_current_user()
print(json.dumps(out))
'''


# -- credentials --------------------------------------------------------------------------------


INVALID = "Invalid API key. Please check that your ARENA_API_KEY is correct."


def test_wrong_revoked_and_foreign_credentials_are_refused(server: ServerProcess,
                                                           home: Path) -> None:
    assert INVALID in arena(server, home, "arena_pat_0_wrong", "projects", "list").stderr
    revoked = new_token(server, "revoked")
    ok(arena(server, home, revoked["token"], "projects", "list"))
    assert server.api("DELETE", f"tokens/{revoked['id']}").status_code == 204
    assert INVALID in arena(server, home, revoked["token"], "projects", "list").stderr
    # The Jupyter token is not an access token, on the control plane, however it is sent.
    assert INVALID in arena(server, home, server.token, "agent", "list").stderr
    cp = server.url + "agents/arena/api/cli/v1/projects"
    for headers in ({"Authorization": f"token {server.token}"}, {}):
        answer = server.session.get(cp, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
    # A deployment key opens its own agent's routes only, never the control plane.
    agent = server.deploy("keyed", "pendulum-td3")
    assert INVALID in arena(server, home, agent["api_key"], "agent", "list").stderr


def test_a_revoked_token_is_refused_at_once_on_inference(server: ServerProcess) -> None:
    agent = server.deploy("revoke-me", "cartpole-dqn")
    minted = new_token(server, "short-lived")
    status = agent["endpoint"] + "/sessions"
    bearer = {"Authorization": f"Bearer {minted['token']}"}
    assert requests.get(status, headers=bearer, timeout=10).status_code == 400  # RL: no sessions
    body = {"obs": "bad", "batch_size": 1}
    assert requests.post(agent["endpoint"] + "/get_action", json=body, headers=bearer,
                         timeout=10).status_code == 400  # authenticated, then a bad obs
    assert server.api("DELETE", f"tokens/{minted['id']}").status_code == 204
    refused = requests.post(agent["endpoint"] + "/get_action", json=body, headers=bearer,
                            timeout=10)
    assert refused.status_code == 401
    assert minted["token"] not in server.log()
    listed = server.api("GET", "tokens").json()["tokens"]
    assert minted["id"] not in {t["id"] for t in listed}


def test_help_with_and_without_a_token(server: ServerProcess, token: str, home: Path) -> None:
    for key in (token, None):
        out = ok(arena(server, home, key, "--help"))
        assert "agent" in out
        assert "experiments" in out
    assert "404 GET /agents/arena/api/cli/v1/capabilities" in server.log()


def test_token_last_used_is_recorded(server: ServerProcess, home: Path) -> None:
    minted = new_token(server, "tracked")
    before = {t["id"]: t for t in server.api("GET", "tokens").json()["tokens"]}
    assert before[minted["id"]]["last_used_at"] is None
    ok(arena(server, home, minted["token"], "user", "profile"))
    after = {t["id"]: t for t in server.api("GET", "tokens").json()["tokens"]}
    assert after[minted["id"]]["last_used_at"] is not None


def test_deploy_of_a_name_serving_another_step_is_a_409_naming_it(
        server: ServerProcess, token: str, home: Path) -> None:
    # An agent under the experiment's own name that serves an older step (made in the panel,
    # or the best moved on since): `arena agent deploy` must not answer with that model.
    from workbench_core.store import ExperimentStore

    experiment = ExperimentStore(server.root).get("cartpole-rainbow")
    old = next(c.step for c in experiment.checkpoints() if c.step != experiment.best_step())
    created = server.api("POST", "agents", json={
        "name": "cartpole-rainbow", "experiment": "cartpole-rainbow", "checkpoint": old})
    assert created.status_code == 201, created.text
    refused = arena(server, home, token, "agent", "deploy", "cartpole-rainbow")
    assert refused.returncode == 1
    assert f"already serves step {old}" in refused.stderr
    assert f"step {experiment.best_step()}" in refused.stderr
    assert "agents/cartpole-rainbow/checkpoint" in refused.stderr  # the zero-downtime way
    assert server.api("GET", "agents/cartpole-rainbow").json()["checkpoint_step"] == old
