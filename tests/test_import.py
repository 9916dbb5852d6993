"""Bring your own checkpoint: AgileRL files made by AgileRL's own helpers, imported through
the CLI, the API and the notebook function, deployed, and called with the Arena client.

One real server over an empty workspace serves every import of this module; each import
loads its files in a real worker process. Hostile files (a pickle that exits at load, one
that hangs, one that over-allocates, a truncated file, a folder with no checkpoint, a wrong
environment) are refused with their reason, nothing is written and the server lives.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from agilerl.arena.inference import Agent

from server_extension.serving.importing.orchestrator import ImportRefused, import_experiment
from server_extension.serving.runtimes.detection import ImportHints
from tests import import_support
from tests.panel_support import front_end
from tests.servers import ServerProcess, wait_until

pytestmark = pytest.mark.slow
__all__ = ["front_end"]  # a fixture used by name below
BIN = Path(sys.executable).parent
# An import loads and probes every checkpoint in a fresh worker process (torch and AgileRL
# imported there): tens of seconds on a busy machine.
IMPORT_TIMEOUT = 600


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What users have on disk: AgileRL training-helper files, and a hand-saved agent."""
    base = tmp_path_factory.mktemp("user-runs")
    return {
        "dqn": import_support.train_dqn(base / "dqn-run"),
        "ppo": import_support.train_ppo(base / "ppo-run"),
        "saved": import_support.save_dqn(base / "my_agent.pt"),
        "base": base,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server over an empty workspace."""
    root = tmp_path_factory.mktemp("import-workspace")
    with import_support.empty_workspace_server(root) as served:
        yield served


def post_import(server: ServerProcess, body: dict[str, Any]) -> requests.Response:
    """``POST agents/api/experiments`` with the server's token."""
    return server.session.post(server.url + "agents/api/experiments", json=body,
                               timeout=IMPORT_TIMEOUT)


def listed(server: ServerProcess) -> dict[str, Any]:
    """The experiments the server lists, by name."""
    body = server.api("GET", "experiments").json()
    return {e["name"]: e for e in body["experiments"]}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``agents-workbench <args>`` as a user runs it."""
    return subprocess.run([str(BIN / "agents-workbench"), *args], capture_output=True,
                          text=True, timeout=IMPORT_TIMEOUT, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def nothing_written(root: Path, before: set[str]) -> None:
    """No experiment appeared and no staging folder was left behind."""
    now = {p.name for p in (root / "experiments").glob("*")} if (root / "experiments").exists() \
        else set()
    assert now == before
    staging = root / ".imports"
    assert not staging.exists() or not [p for p in staging.iterdir() if p.is_dir()]


def _load(path: Path) -> Any:
    from agilerl.algorithms import DQN, PPO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = DQN if "dqn" in path.name.lower() or "agent" in path.name else PPO
        return cls.load(str(path))


# The CLI (a fresh interpreter), a worker loading two checkpoints, and a deploy: ~60 s.
def test_cli_imports_train_off_policy_files_and_the_client_gets_dqns_answers(
        runs: dict[str, Path], server: ServerProcess) -> None:
    prefix = runs["dqn"]
    files = sorted(prefix.parent.glob("dqn_0_*.pt"))
    assert len(files) >= 2, files  # AgileRL's own names: <checkpoint_path>_<member>_<steps>.pt
    done = cli("import", f"{prefix}_*.pt", "--env", "CartPole-v1", "--name", "dqn-cli",
               "--root", str(server.root))
    assert done.returncode == 0, done.stderr
    assert "Imported 'dqn-cli': agilerl DQN" in done.stdout
    experiment = listed(server)["dqn-cli"]
    steps = sorted(int(f.stem.split("_")[-1]) for f in files)
    assert [c["step"] for c in experiment["checkpoints"]] == steps
    assert experiment["extra"]["env"] == {"kind": "gymnasium", "id": "CartPole-v1",
                                          "kwargs": {}}
    agent = server.deploy("dqn-cli", "dqn-cli", "final", timeout=IMPORT_TIMEOUT)
    local = _load(max(files, key=lambda f: int(f.stem.split("_")[-1])))
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    expected = np.asarray(local.get_action(obs, epsilon=0.0))
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        actions, _ = client.get_action(obs, batched=True)
    np.testing.assert_array_equal(np.asarray(actions), expected)
    # The CLI left an evaluation plan; the running server finds it (as a restarted one finds
    # an unfinished plan) and scores every checkpoint.
    assert "scores the checkpoints in the background" in done.stdout
    wait_until(lambda: listed(server)["dqn-cli"]["evaluation"]["state"] == "done",
               IMPORT_TIMEOUT, "the server's evaluation of a CLI import")
    assert all(c["evaluation_score"] is not None
               for c in listed(server)["dqn-cli"]["checkpoints"])


def test_api_imports_a_train_on_policy_folder_and_serves_ppos_mode(
        runs: dict[str, Path], server: ServerProcess) -> None:
    from tests.test_runtime_agilerl import clear_rows, sharpened_ppo

    folder = runs["ppo"].parent
    response = post_import(server, {"path": str(folder), "env": "CartPole-v1"})
    assert response.status_code == 201, response.text
    experiment = response.json()
    assert experiment["name"] == "ppo"
    assert experiment["algorithm"] == "PPO"
    # AgileRL wrote no scores: the server evaluates each checkpoint in the background.
    assert experiment["import"]["scores"].startswith("workbench evaluation over 10 seeded")
    assert experiment["evaluation"]["total"] == len(experiment["checkpoints"])
    assert "ppo" in listed(server)
    last = max(folder.glob("ppo_0_*.pt"), key=lambda f: int(f.stem.split("_")[-1]))
    agent = server.deploy("ppo", "ppo", "final", timeout=IMPORT_TIMEOUT)
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    local = _load(last)
    clear = clear_rows(local, obs)
    expected = np.asarray(sharpened_ppo(local).get_action(obs)[0])
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        actions, _ = client.get_action(obs, batched=True)
    np.testing.assert_array_equal(np.asarray(actions)[clear], expected[clear])
    wait_until(lambda: listed(server)["ppo"]["evaluation"]["state"] == "done", IMPORT_TIMEOUT,
               "the background evaluation")
    evaluated = listed(server)["ppo"]
    scores = {c["step"]: c["evaluation_score"] for c in evaluated["checkpoints"]}
    assert all(isinstance(v, float) for v in scores.values()), scores
    assert evaluated["evaluation"]["failed"] == {}
    best = server.api("POST", "agents", json={"name": "ppo-best", "experiment": "ppo",
                                              "checkpoint": "best"}).json()
    assert best["checkpoint_step"] == max(scores, key=lambda s: (scores[s], s))


# Two imports, each loading the file in a fresh worker: about 100 s on a busy machine.
def test_a_save_checkpoint_file_asks_only_for_its_environment(
        runs: dict[str, Path], server: ServerProcess) -> None:
    before = set(listed(server))
    asked = post_import(server, {"path": str(runs["saved"])})
    assert asked.status_code == 400
    assert asked.json()["message"].startswith("env:")
    assert "CartPole-v1" in asked.json()["message"]  # an example of what to pass
    assert set(listed(server)) == before
    done = post_import(server, {"path": str(runs["saved"]), "env": "CartPole-v1",
                                "name": "my-agent", "link": True})
    assert done.status_code == 201, done.text
    experiment = done.json()
    assert (experiment["algorithm"], experiment["framework"]) == ("DQN", "agilerl")
    assert [c["step"] for c in experiment["checkpoints"]] == [0]
    assert experiment["import"]["link"] is True
    assert (server.root / "experiments" / "my-agent" / "checkpoints" / "step_0.pt").is_symlink()


# A terminal beside the running server (not one of its own): no --root, no
# $AGENTS_WORKBENCH_ROOT. The CLI import (a worker loading the file) and a tracking script
# both write into the served workspace, which lists them. About 40 s.
def test_a_terminal_with_no_root_writes_into_the_running_servers_workspace(
        runs: dict[str, Path], server: ServerProcess, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENTS_WORKBENCH_ROOT"}
    env.update(HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore",
               JUPYTER_RUNTIME_DIR=str(server.root / "runtime"))
    done = subprocess.run([str(BIN / "agents-workbench"), "import", str(runs["saved"]),
                           "--env", "CartPole-v1", "--name", "from-a-terminal"],
                          capture_output=True, text=True, timeout=IMPORT_TIMEOUT, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert f"Importing into {server.root} (the workspace of the running server at" in done.stderr
    script = ("from agents_widget.tracking import start_experiment\n"
              "w = start_experiment('tracked-from-a-terminal', project_type='classic',\n"
              "                     algorithm='DQN', framework='agilerl',\n"
              "                     environment='CartPole-v1')\n"
              "print(w.folder)\n")
    tracked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, check=False, env=env)
    assert tracked.returncode == 0, tracked.stderr
    assert Path(tracked.stdout.strip()) == server.root / "experiments" / "tracked-from-a-terminal"
    assert "from-a-terminal" in listed(server)
    assert not (tmp_path / "home" / "agents-workbench").exists()


def test_a_wrong_environment_is_refused_at_import(runs: dict[str, Path],
                                                  server: ServerProcess) -> None:
    before = {p.name for p in (server.root / "experiments").glob("*")}
    refused = post_import(server, {"path": str(runs["saved"]), "env": "MountainCar-v0",
                                   "name": "wrong-env"})
    assert refused.status_code == 400
    message = refused.json()["message"]
    assert message.startswith("env:")
    assert "Box(2,)" in message
    assert "Box(4,)" in message
    nothing_written(server.root, before)


def test_hostile_files_are_refused_with_their_reason_and_the_server_lives(
        runs: dict[str, Path], server: ServerProcess, tmp_path: Path) -> None:
    before = {p.name for p in (server.root / "experiments").glob("*")}
    exits = import_support.exits_at_load(tmp_path / "exits.pt")
    refused = post_import(server, {"path": str(exits), "env": "CartPole-v1"})
    assert refused.status_code == 400
    assert "exited with status 3" in refused.json()["message"]
    cut = import_support.truncated(runs["saved"], tmp_path / "cut.pt")
    refused = post_import(server, {"path": str(cut), "env": "CartPole-v1"})
    assert refused.status_code == 400
    assert "truncated" in refused.json()["message"]
    assert "agilerl" in refused.json()["message"]  # the frameworks that can be imported
    empty = tmp_path / "empty-folder"
    (empty / "notes").mkdir(parents=True)
    (empty / "readme.txt").write_text("no checkpoints here")
    refused = post_import(server, {"path": str(empty), "env": "CartPole-v1"})
    assert refused.status_code == 400
    assert "no checkpoint file or model folder" in refused.json()["message"]
    missing = post_import(server, {"env": "CartPole-v1"})
    assert missing.status_code == 400
    assert "path is required" in missing.json()["message"]
    nothing_written(server.root, before)
    assert server.api("GET", "experiments").status_code == 200  # alive and answering


def test_a_hanging_or_greedy_pickle_is_stopped(tmp_path: Path) -> None:
    hangs = import_support.hangs_at_load(tmp_path / "hangs.pt")
    root = tmp_path / "ws"
    with pytest.raises(ImportRefused, match="did not finish within 20 s") as refused:
        import_experiment(root, [hangs], ImportHints(env="CartPole-v1"), timeout_s=20)
    assert refused.value.field == "path"
    greedy = import_support.hostile(tmp_path / "greedy.pt", import_support.Allocate())
    with pytest.raises(ImportRefused, match="memory limit"):
        import_experiment(root, [greedy], ImportHints(env="CartPole-v1"), memory_mb=3072)
    nothing_written(root, set())


def test_notebook_function_imports_through_the_server(
        runs: dict[str, Path], server: ServerProcess) -> None:
    from agents_widget import import_checkpoint
    from agents_widget.importing import ImportFailed
    from workbench_core.discovery import ServerInfo

    info = ServerInfo(url=server.url, token=server.token)
    scores = runs["base"] / "scores.csv"
    scores.write_text("step,mean_reward\n0,12.5\n")
    experiment = import_checkpoint(runs["saved"], env="CartPole-v1", name="from-notebook",
                                   scores=scores, server=info)
    assert experiment["checkpoints"][0]["evaluation_score"] == 12.5
    assert "scores.csv" in experiment["import"]["scores"]
    with pytest.raises(ImportFailed, match="already exists"):
        import_checkpoint(runs["saved"], env="CartPole-v1", name="from-notebook", server=info)


def test_a_linked_source_that_moves_makes_the_experiment_broken(
        runs: dict[str, Path], tmp_path: Path) -> None:
    from workbench_core.store import ExperimentStore

    source = tmp_path / "kept-elsewhere.pt"
    source.write_bytes(runs["saved"].read_bytes())
    root = tmp_path / "ws"
    experiment = import_experiment(root, [source], ImportHints(env="CartPole-v1", link=True))
    assert experiment["import"]["link"] is True
    assert experiment["extra"]["import"]["sources"] == [str(source)]
    source.rename(tmp_path / "moved.pt")
    listing = ExperimentStore(root).listing()
    assert listing["experiments"] == []
    assert listing["broken"][0]["name"] == "kept-elsewhere"
    assert "no longer exists" in listing["broken"][0]["error"]


# Two imports from the dialog (a refusal, then the import): ~60 s on a busy machine.
def test_panel_import_dialog_imports_and_new_agent_offers_it(
        runs: dict[str, Path], server: ServerProcess,
        front_end: list[dict[str, Any]]) -> None:
    from agents_widget.panel import AgentsPanel
    from workbench_core.discovery import ServerInfo

    panel = AgentsPanel(ServerInfo(url=server.url, token=server.token,
                                   root=str(runs["base"])), poll_interval=0.5)
    try:
        panel.wait_idle()
        dialog = panel.open_import()
        assert dialog is not None
        assert str(runs["base"]) in dialog.header.value  # the folder it browses
        assert "my_agent.pt" in dialog.browser.options
        dialog.browser.value = "my_agent.pt"  # picked in the folder browser
        assert dialog.path.value == str(runs["saved"])
        dialog.name.value = "from-dialog"
        dialog.start()  # no environment: refused, naming the field
        wait_until(lambda: not dialog.import_button.disabled, IMPORT_TIMEOUT, "refusal")
        assert "env:" in dialog.status.value
        dialog.env.value = "CartPole-v1"
        future = dialog.start()
        assert future is not None
        future.result(IMPORT_TIMEOUT)
        wait_until(lambda: "Imported from-dialog" in dialog.status.value, 10, "status")
        wait_until(lambda: "from-dialog" in [e.name for e in panel.state.sources("classic")],
                   30, "the experiment in New Agent")
    finally:
        panel.close()


# One import through an upload (a worker loads the file): ~30 s on a busy machine.
def test_a_small_checkpoint_uploaded_from_the_dialog_is_imported(
        runs: dict[str, Path], server: ServerProcess) -> None:
    from agents_widget.import_dialog import ImportDialog
    from agents_widget.importing import ImportFailed, import_checkpoint
    from workbench_core.discovery import ServerInfo

    info = ServerInfo(url=server.url, token=server.token)
    data = runs["saved"].read_bytes()
    with pytest.raises(ImportFailed, match="over 16 MiB") as refused:
        import_checkpoint(upload=("huge.pt", b"\0" * (17 * 2**20)), env="CartPole-v1",
                          server=info)
    assert refused.value.status == 413
    done: list[dict[str, Any]] = []
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        dialog = ImportDialog(server=info, submit=pool.submit, root=runs["base"],
                              on_done=done.append, on_cancel=lambda: None)
        # What the browser's FileUpload hands the kernel (its own deserializer's shape).
        dialog.upload.value = ({"name": "uploaded_dqn.pt", "type": "", "size": len(data),
                                "last_modified": datetime.datetime.now(datetime.UTC),
                                "content": memoryview(data)},)
        assert "uploaded_dqn.pt" in dialog.upload_note.value
        dialog.env.value = "CartPole-v1"
        future = dialog.start()
        assert future is not None
        future.result(IMPORT_TIMEOUT)
    assert done, dialog.status.value
    experiment = done[0]
    assert (experiment["name"], experiment["algorithm"]) == ("uploaded_dqn", "DQN")
    assert experiment["import"]["link"] is False  # an upload is always copied
    stored = server.root / "experiments" / "uploaded_dqn" / "checkpoints" / "step_0.pt"
    assert stored.read_bytes() == data
    assert not (server.root / ".imports" / "uploads").exists()  # the upload itself is gone
