"""Worker templates per framework family: a Classic Connect never waits for the LLM stack.

A real ``jupyter server`` over a workspace holding the quick demo's CartPole DQN and the tiny
chat model. Templates are seen from outside, through ``/proc``: each is a child of the server
whose environment names its family, and it marks its imports done with a file named in that
environment. Everything is checked by state, never by time.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.servers import WARM_TEMPLATES, ServerProcess, copy_workspace

ARGS = ["--AgentsWorkbenchApp.health_check_interval=0", "--AgentsWorkbenchApp.load_timeout=120",
        WARM_TEMPLATES]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def templates(server: ServerProcess) -> dict[str, dict[str, Any]]:
    """The server's templates by family: pid and whether its imports are done."""
    found: dict[str, dict[str, Any]] = {}
    for pid in _children(server.pid):
        env = _environ(pid)
        family = env.get("AGENTS_WORKBENCH_PRELOAD")
        if family:
            ready = Path(f"{env['AGENTS_WORKBENCH_TEMPLATE_READY']}.{pid}").exists()
            found[family] = {"pid": pid, "ready": ready}
    return found


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


@pytest.fixture
def mixed_workspace(tmp_path: Path, demo_experiments: Path,
                    advanced_experiments: Path) -> Path:
    root = copy_workspace(tmp_path / "mixed", demo_experiments)
    # Without policy sidecars: the DQN is served through torch, from the Classic template
    # (test_numpy_policy.py covers the numpy path).
    for sidecar in (root / "experiments").glob("*/checkpoints/*.policy.npz"):
        sidecar.unlink()
    shutil.copytree(advanced_experiments / "tiny-chat-sft", root / "experiments" / "tiny-chat-sft")
    return root


@pytest.mark.slow
def test_a_classic_connect_is_deployed_while_the_llm_template_still_imports(
        mixed_workspace: Path) -> None:
    """Connect a CartPole DQN the moment a fresh server answers: it says it is starting the
    model runtime, then is Deployed from the Classic template while the LLM template has not
    finished importing; the chat model then deploys from the LLM template.

    Long on a busy machine (minutes): a fresh server must import torch, AgileRL and then the
    LLM stack in two templates, which is exactly what is under test; on a quiet 2-core
    machine it takes about 15 s."""
    srv = ServerProcess(mixed_workspace, extra_args=ARGS).start()
    try:
        for name, experiment in (("dqn", "cartpole-dqn"), ("chat", "tiny-chat-sft")):
            created = srv.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                       "checkpoint": "best"})
            assert created.status_code == 201, created.text
        assert srv.api("POST", "agents/dqn/connect").status_code == 200
        notes = set()
        while True:
            agent = srv.api("GET", "agents/dqn").json()
            if agent["status"] != "Pending":
                break
            notes.add(agent.get("error") or "")
        # The state of the LLM template at the moment the DQN is Deployed.
        llm = templates(srv).get("llm", {"ready": False})
        assert agent["status"] == "Deployed", agent
        assert not llm["ready"], "the LLM template had finished importing: nothing was proved"
        assert any(n.startswith("Starting the model runtime (") for n in notes), notes

        found = templates(srv)
        assert set(found) <= {"classic", "llm"}, found  # only what the experiments need
        dqn_worker = srv.api("GET", "agents/dqn/metrics").json()["worker"]["pid"]
        assert _ppid(dqn_worker) == found["classic"]["pid"]

        assert srv.api("POST", "agents/chat/connect").status_code == 200
        chat = srv.wait_status("chat", timeout=180)
        assert chat["status"] == "Deployed", chat
        found = templates(srv)
        assert found["llm"]["ready"]
        chat_worker = srv.api("GET", "agents/chat/metrics").json()["worker"]["pid"]
        assert _ppid(chat_worker) == found["llm"]["pid"]
    finally:
        srv.stop()


def test_a_workspace_without_experiments_starts_no_template(tmp_path: Path) -> None:
    srv = ServerProcess(copy_workspace(tmp_path / "empty", None), extra_args=ARGS).start()
    try:
        created = srv.api("GET", "agents")
        assert created.status_code == 200
        assert templates(srv) == {}
    finally:
        srv.stop()


def test_each_framework_names_its_family_and_unknown_ones_get_everything() -> None:
    from server_extension.serving.worker import families

    assert families.family_of("agilerl") == "classic"
    assert families.family_of("transformers") == "llm"
    assert families.family_of("onnx") == "onnx"
    assert families.family_of("a-framework-nobody-listed") == families.FULL
    assert set(families.FAMILIES[families.FULL]) >= set(families.FAMILIES["llm"])
    # Classic first; the LLM stack last among the named families.
    assert families.families_for({"transformers", "agilerl"}) == ["classic", "llm"]
    assert families.families_for(set()) == []


def test_the_panel_says_the_runtime_is_starting() -> None:
    from agents_widget.client import AgentInfo
    from agents_widget.table import STARTING_RUNTIME, status_html
    from server_extension.serving.deployer import STARTING_RUNTIME as SERVER_NOTE

    assert STARTING_RUNTIME == SERVER_NOTE
    pill = status_html(AgentInfo(name="a", tab="classic", experiment="e", status="Pending",
                                 error=f"{SERVER_NOTE} (3 s)"))
    assert "starting the model runtime (3 s)" in pill
    assert "restarting" not in pill
