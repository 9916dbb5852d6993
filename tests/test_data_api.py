"""The notebook data API (agents_widget.dataframes, .evaluation) against a live server.

One real ``jupyter server`` over the quick demo's ``cartpole-dqn`` (plus an untrained step-0
checkpoint saved into it here by AgileRL itself), the quick ``tictactoe-ippo`` and a folder
that is no experiment, with four agents deployed. ``tests/notebooks/data_api.ipynb`` calls
every function and checks columns, dtypes and row counts; it runs under nbval, and once more
under nbclient so the saved notebook can be searched for every real key and token of the
workspace. Evaluation through the endpoint is checked against the scores training recorded on
the same seeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from agents_widget.client import AgentInfo, WorkbenchClient
from server_extension.demos.classic_multi_recurrent import TICTACTOE
from tests.panel_support import front_end
from tests.servers import REPO, ServerProcess, copy_workspace, start_server
from workbench_core.discovery import ServerInfo

pytest_plugins = ["tests.classic_fixtures"]
__all__ = ["front_end"]  # a fixture used by name below
pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "tests" / "notebooks" / "data_api.ipynb"
DQN = "cartpole-dqn"


def _add_untrained_checkpoint(root: Path) -> None:
    """Save a freshly built DQN (same sizes, no training) as step 0 of ``cartpole-dqn``."""
    from server_extension.training.agilerl import create_agent
    from workbench_core.store import ExperimentStore
    from workbench_core.tracking import resume_experiment, save_checkpoint

    extra = ExperimentStore(root).get(DQN).info.extra
    agent = create_agent("DQN", "CartPole-v1", net_config=extra["net_config"], seed=0,
                         **extra["hyperparameters"])
    save_checkpoint(resume_experiment(DQN, root=root), 0, agent.save_checkpoint)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path,
              classic_experiments: Path) -> Path:
    root = copy_workspace(tmp_path_factory.mktemp("data-api") / "ws", None)
    shutil.copytree(demo_experiments / DQN, root / "experiments" / DQN)
    shutil.copytree(classic_experiments / TICTACTOE, root / "experiments" / TICTACTOE)
    _add_untrained_checkpoint(root)
    # A folder the store cannot read: experiments() lists it as broken, with the reason.
    (root / "experiments" / "not-an-experiment").mkdir()
    (root / "experiments" / "not-an-experiment" / "experiment.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def live(workspace: Path) -> Iterator[ServerProcess]:
    server = start_server(workspace, None)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deployed(live: ServerProcess) -> dict[str, dict[str, Any]]:
    """The four agents the notebook reads, and a few calls in the cartpole agent's log."""
    from agilerl.arena.inference import Agent

    agents = {"cartpole": live.deploy("cartpole", DQN),
              "cartpole-step0": live.deploy("cartpole-step0", DQN, checkpoint=0),
              "ttt-a": live.deploy("ttt-a", TICTACTOE),
              "ttt-b": live.deploy("ttt-b", TICTACTOE, checkpoint="final")}
    with Agent(agents["cartpole"]["endpoint"], api_key=agents["cartpole"]["api_key"]) as arena:
        for _ in range(6):
            arena.get_action(np.zeros(4, np.float32))
    return agents


@pytest.fixture(scope="module")
def client(live: ServerProcess) -> Iterator[WorkbenchClient]:
    made = WorkbenchClient(ServerInfo(url=live.url, token=live.token))
    try:
        yield made
    finally:
        made.close()


def _kernel_env(live: ServerProcess) -> dict[str, str]:
    return {**os.environ, "AGENTS_WORKBENCH_URL": live.url,
            "AGENTS_WORKBENCH_TOKEN": live.token}


def test_notebook_is_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(c.outputs == [] and c.execution_count is None
               for c in nb.cells if c.cell_type == "code")


def test_data_notebook_passes_nbval(live: ServerProcess,
                                    deployed: dict[str, dict[str, Any]]) -> None:
    # --noconftest: the notebook needs none of the suite's fixtures.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "--noconftest", "-q", "-p",
         "no:cacheprovider", str(NOTEBOOK)],
        cwd=REPO, env=_kernel_env(live), capture_output=True, text=True, timeout=300,
        check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def test_no_key_or_token_anywhere_in_the_executed_notebook(
        live: ServerProcess, deployed: dict[str, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    minted = live.api("POST", "tokens", json={"name": "notebook-hygiene"})
    assert minted.status_code in (200, 201), minted.text
    secrets = [a["api_key"] for a in deployed.values()] + [live.token, minted.json()["token"]]
    assert all(len(s) >= 16 for s in secrets)
    for name, value in _kernel_env(live).items():
        monkeypatch.setenv(name, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    saved = nbformat.writes(nb)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "cartpole-step0" in saved
    assert "<hidden key>" in saved
    leaked = [i for i, secret in enumerate(secrets) if secret in saved]
    assert leaked == [], "a key or token of the workspace reached the notebook"


def test_evaluation_through_the_endpoint_matches_the_recorded_score(
        client: WorkbenchClient, deployed: dict[str, dict[str, Any]]) -> None:
    from agents_widget.dataframes import find_experiment
    from agents_widget.evaluation import evaluate, recorded_score, training_protocol

    experiment = find_experiment(client, DQN)
    protocol = training_protocol(experiment)
    assert protocol == {"seed": 1000, "episodes": 2}  # as the quick demo recorded it
    served = client.agent("cartpole")
    recorded = recorded_score(experiment, served.checkpoint_step)
    assert recorded is not None
    results = evaluate("cartpole", client=client, **protocol)
    assert list(results["seed"]) == [1000, 1001]
    # Greedy, deterministic, on the seeds training used: the very same episodes.
    assert results["return"].mean() == pytest.approx(recorded, abs=1e-9)


def test_an_untrained_checkpoint_shows_the_gap(client: WorkbenchClient,
                                               deployed: dict[str, dict[str, Any]]) -> None:
    from agents_widget.dataframes import find_experiment
    from agents_widget.evaluation import compare, training_protocol

    experiment = find_experiment(client, DQN)
    best = max(c.evaluation_score or -np.inf for c in experiment.checkpoints)
    summary = compare(["cartpole", "cartpole-step0"], client=client, plot=False,
                      **training_protocol(experiment))
    assert summary.loc["cartpole", "mean"] == pytest.approx(best, abs=1e-9)
    assert summary.loc["cartpole-step0", "mean"] < best / 2, summary


def test_the_key_stays_off_the_dataclass(deployed: dict[str, dict[str, Any]],
                                         client: WorkbenchClient) -> None:
    import copy
    import dataclasses
    import pickle

    import pandas as pd

    agent = client.agent("cartpole")
    key = deployed["cartpole"]["api_key"]
    assert agent.api_key == key  # still reachable, as the panel's copy control reads it
    for shown in (repr(agent), str(dataclasses.asdict(agent)), str(vars(agent)),
                  pd.DataFrame([agent]).to_string(), pd.DataFrame([agent]).to_html(),
                  str(copy.deepcopy(agent).__dict__)):
        assert key not in shown
    assert "api_key" not in {f.name for f in dataclasses.fields(AgentInfo)}
    assert pickle.loads(pickle.dumps(agent)).api_key == key  # noqa: S301 - our own bytes


def test_evaluate_refuses_an_agent_without_an_endpoint(client: WorkbenchClient,
                                                       live: ServerProcess,
                                                       deployed: dict[str, dict[str, Any]]
                                                       ) -> None:
    from agents_widget.evaluation import evaluate

    created = live.api("POST", "agents", json={"name": "idle", "experiment": DQN})
    assert created.status_code == 201, created.text
    try:
        with pytest.raises(ValueError, match=r"Undeployed.*Connect"):
            evaluate("idle", client=client)
        with pytest.raises(ValueError, match="at least 1"):
            evaluate("cartpole", episodes=0, client=client)
    finally:
        live.api("DELETE", "agents/idle")


def test_tic_tac_toe_win_rate_through_the_endpoint_matches_training(
        client: WorkbenchClient, deployed: dict[str, dict[str, Any]]) -> None:
    from agents_widget.dataframes import find_experiment
    from agents_widget.evaluation import evaluate, recorded_score, training_protocol

    experiment = find_experiment(client, TICTACTOE)
    served = client.agent("ttt-a")
    games = evaluate("ttt-a", client=client, **training_protocol(experiment))
    # Training scored the mean win rate against random moves over both sides, same seeds.
    assert games["score"].mean() == pytest.approx(
        recorded_score(experiment, served.checkpoint_step), abs=1e-9)
    assert (games["score"] == (games["outcome"] == "win")).all()


def test_the_evaluate_view_shows_served_and_recorded_scores(
        client: WorkbenchClient, deployed: dict[str, dict[str, Any]],
        front_end: list[dict[str, Any]]) -> None:
    from agents_widget.dataframes import find_experiment
    from agents_widget.evaluation_view import EvaluationView, evaluation_section

    experiment = find_experiment(client, DQN)
    section = evaluation_section(client.agent("cartpole"), experiment, client)
    assert section is not None
    view = section.children[0]
    assert isinstance(view, EvaluationView)
    assert not view.turn_based
    view.episodes.value = 4
    assert view.run() is not None
    assert view.wait(timeout=120)
    assert view.last_error is None, view.last_error
    assert view.results is not None
    assert len(view.results) == 4
    assert "over 4 episodes, seeds 1000 to 1003" in view.summary.value
    assert "the same as recorded" in view.summary.value
    assert view.chart.value.count("<circle") == 4

    # The untrained checkpoint: training's recorded score (for step 0: none) is not claimed.
    step0 = EvaluationView("cartpole-step0", experiment, client)
    step0.episodes.value = 2
    step0.run()
    assert step0.wait(timeout=120)
    assert "recorded no evaluation score" in step0.summary.value


def test_head_to_head_in_the_view(client: WorkbenchClient,
                                  deployed: dict[str, dict[str, Any]],
                                  front_end: list[dict[str, Any]]) -> None:
    from agents_widget.dataframes import find_experiment
    from agents_widget.evaluation_view import EvaluationView

    view = EvaluationView("ttt-a", find_experiment(client, TICTACTOE), client)
    assert view.turn_based
    view.opponent.value = "ttt-b"
    assert view.run_head_to_head(games=4) is not None
    assert view.wait(timeout=120)
    assert view.last_error is None, view.last_error
    assert view.duel is not None
    assert list(view.duel["player_1"]) == ["ttt-a", "ttt-b", "ttt-a", "ttt-b"]
    assert "ttt-a vs ttt-b:" in view.duel_line.value
    assert "over 4 games (sides alternated)" in view.duel_line.value
    view.opponent.value = "nobody"
    view.run_head_to_head(games=2)
    assert view.wait(timeout=60)
    assert "nobody" in (view.last_error or "")
