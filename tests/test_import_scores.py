"""Scores that mean something for imported checkpoints: TensorBoard event files written by
the real library, and the workbench's own evaluation over seeded episodes in worker processes.

The imports here run the orchestrator in the test's process (as the CLI does); the import's
check and the evaluation each load the checkpoints in real worker processes. The evaluation
score is checked against AgileRL's own agent playing the same seeded episodes in-process.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from server_extension.serving.importing import evaluation
from server_extension.serving.importing.orchestrator import ImportRefused, import_experiment
from server_extension.serving.runtimes.detection import ImportHints
from tests import import_support
from tests.servers import wait_until
from workbench_core import evaluation_marks
from workbench_core.store import ExperimentStore

pytestmark = pytest.mark.slow
STEPS = (100, 200, 300)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three DQN checkpoints named as AgileRL's training helpers name them, each a different
    (untrained) agent, so they score differently."""
    import torch

    folder = tmp_path_factory.mktemp("dqn-run")
    for i, step in enumerate(STEPS):
        torch.manual_seed(i)
        import_support.save_dqn(folder / f"dqn_0_{step}.pt")
    return folder


def _summary_writer(logdir: Path, tags: dict[str, list[tuple[int, float]]]) -> None:
    """Event files as SB3's ``tensorboard_log`` writes them: torch's SummaryWriter."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    for tag, points in tags.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def test_tensorboard_scores_map_a_tag_to_each_checkpoint(run: Path, tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    _summary_writer(logs / "DQN_1", {
        "rollout/ep_rew_mean": [(50, 9.0), (150, 11.0), (250, 15.0), (300, 14.0)],
        "eval/mean_reward": [(100, 20.0), (200, 35.0), (300, 30.0)],
        "train/loss": [(100, 1.0)],
    })
    root = tmp_path / "ws"
    experiment = import_experiment(root, [f"{run}/dqn_0_*.pt"], ImportHints(
        env="CartPole-v1", scores=str(logs), name="tb-default"))
    # SB3's evaluation tag first; each checkpoint gets the value logged at its step.
    assert [c["evaluation_score"] for c in experiment["checkpoints"]] == [20.0, 35.0, 30.0]
    assert "eval/mean_reward" in experiment["import"]["scores"]
    assert experiment["evaluation"] is None  # scores given: nothing to evaluate
    assert ExperimentStore(root).get("tb-default").best_step() == 200
    # Another tag: the value at or before each step.
    experiment = import_experiment(root, [f"{run}/dqn_0_*.pt"], ImportHints(
        env="CartPole-v1", scores=str(logs / "DQN_1"), scores_tag="rollout/ep_rew_mean",
        name="tb-rollout"))
    assert [c["evaluation_score"] for c in experiment["checkpoints"]] == [9.0, 11.0, 14.0]
    with pytest.raises(ImportRefused, match=r"train/loss") as refused:
        import_experiment(root, [f"{run}/dqn_0_*.pt"], ImportHints(
            env="CartPole-v1", scores=str(logs), scores_tag="eval/missing", name="tb-bad"))
    assert refused.value.field == "scores"


def test_tensorboard_refusals_name_the_tags_and_the_runs(run: Path, tmp_path: Path) -> None:
    logs = tmp_path / "tb"
    _summary_writer(logs / "run_a", {"charts/episodic_return": [(100, 5.0)]})
    hints = ImportHints(env="CartPole-v1", scores=str(logs / "run_a"))
    with pytest.raises(ImportRefused, match=r"charts/episodic_return.*--scores-tag"):
        import_experiment(tmp_path / "ws", [f"{run}/dqn_0_*.pt"], hints)
    _summary_writer(logs / "run_b", {"eval/mean_reward": [(100, 5.0)]})
    with pytest.raises(ImportRefused, match=r"2 TensorBoard runs \(run_a, run_b\)"):
        import_experiment(tmp_path / "ws", [f"{run}/dqn_0_*.pt"], ImportHints(
            env="CartPole-v1", scores=str(logs)))
    assert not (tmp_path / "ws" / "experiments").exists() or not any(
        (tmp_path / "ws" / "experiments").iterdir())


def _greedy_mean_return(path: Path, episodes: int, seed: int) -> float:
    """AgileRL's own agent, in this process, on the evaluation's seeded episodes."""
    import gymnasium as gym
    from agilerl.algorithms import DQN

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = DQN.load(str(path))
    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        obs, _info = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = agent.get_action(np.asarray(obs, np.float32)[None], epsilon=0.0)
            obs, reward, terminated, truncated, _info = env.step(int(np.asarray(action)[0]))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


# One import (a worker loads three checkpoints) and two evaluation workers: ~40 s.
def test_evaluation_scores_each_checkpoint_marks_a_broken_one_and_resumes(
        run: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    experiment = import_experiment(root, [f"{run}/dqn_0_*.pt"], ImportHints(
        env="CartPole-v1", evaluate=3, name="evaluated"))
    assert experiment["import"]["scores"].startswith("workbench evaluation over 3 seeded")
    assert experiment["evaluation"]["state"] == "pending"
    assert (experiment["evaluation"]["done"], experiment["evaluation"]["total"]) == (0, 3)
    assert experiment["extra"]["training"] == {"eval_seed": 1000, "eval_episodes": 3}
    folder = root / "experiments" / "evaluated"
    # As if a server stopped after scoring step 100: only the rest is evaluated.
    body = evaluation_marks.load(folder)
    assert body is not None
    body["state"], body["scores"] = "evaluating", {"100": -1.0}
    evaluation_marks.save(folder, body)
    # A checkpoint damaged after import fails its evaluation; the others are still scored.
    broken = folder / "checkpoints" / "step_200.pt"
    broken.write_bytes(broken.read_bytes()[:100])
    seen: list[int] = []
    final = evaluation.evaluate_experiment(folder, progress=lambda b: seen.append(
        len(b["scores"]) + len(b["failed"])))
    assert final is not None
    assert final["state"] == "done"
    request = json.loads((folder / ".evaluation" / "request.json").read_text())
    assert request["steps"] == [200, 300]  # resumed, not restarted
    assert sorted(final["failed"]) == ["200"]
    assert seen[0] == 2
    assert seen[-1] == 3
    expected = _greedy_mean_return(run / "dqn_0_300.pt", episodes=3, seed=1000)
    stored = ExperimentStore(root).get("evaluated")
    scores = {c.step: c.evaluation_score for c in stored.checkpoints()}
    assert scores[300] == pytest.approx(expected)
    assert scores[200] is None
    assert stored.best_step() == 300  # -1 at step 100, nothing at 200
    listed = stored.to_json()["evaluation"]
    assert (listed["state"], listed["done"], listed["total"], listed["scored"]) == (
        "done", 3, 3, 2)
    assert "200" in listed["failed"]
    # Evaluating again does nothing: the plan is done.
    assert evaluation.evaluate_experiment(folder)["state"] == "done"  # type: ignore[index]


def test_no_evaluation_without_an_environment_or_when_turned_off(
        run: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    experiment = import_experiment(root, [run / "dqn_0_100.pt"], ImportHints(
        env="CartPole-v1", evaluate=0, name="not-evaluated"))
    assert experiment["evaluation"] is None
    assert "evaluation turned off" in experiment["import"]["scores"]
    assert not (root / "experiments" / "not-evaluated" / "evaluation.json").exists()
    with pytest.raises(ImportRefused, match="evaluate is the number") as refused:
        import_experiment(root, [run / "dqn_0_100.pt"], ImportHints(
            env="CartPole-v1", evaluate=-1, name="negative"))
    assert refused.value.field == "evaluate"


# Three evaluation workers' worth of CartPole episodes: ~60 s on a busy machine.
def test_a_stopped_evaluator_leaves_its_plan_and_the_next_server_finishes_it(
        run: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    # Enough episodes that a step takes seconds: the stop lands while the first is scored.
    import_experiment(root, [f"{run}/dqn_0_*.pt"], ImportHints(
        env="CartPole-v1", evaluate=150, name="resumed"))
    folder = root / "experiments" / "resumed"
    results = folder / ".evaluation" / "results.jsonl"
    first = evaluation.BackgroundEvaluator(root)  # what a server starts
    first.start()
    wait_until(lambda: results.exists() and '"started"' in results.read_text(), 300,
               "the first worker to start scoring")
    first.stop(timeout=30)  # the server shuts down
    left = evaluation_marks.load(folder)
    assert left is not None
    assert left["state"] == "evaluating"
    assert evaluation_marks.remaining(left), left  # unfinished, kept for the next server
    second = evaluation.BackgroundEvaluator(root, interval_s=1.0)  # the restarted server
    second.start()
    try:
        wait_until(lambda: (evaluation_marks.load(folder) or {}).get("state") == "done", 600,
                   "the restarted evaluator to finish")
    finally:
        second.stop(timeout=30)
    stored = ExperimentStore(root).get("resumed")
    assert all(c.evaluation_score is not None for c in stored.checkpoints())
    assert evaluation_marks.read(folder)["failed"] == {}  # type: ignore[index]


# The CLI (a fresh interpreter), the import's worker and one evaluation worker: ~45 s.
def test_cli_wait_evaluates_in_the_terminal(run: Path, tmp_path: Path) -> None:
    from tests.test_import import cli

    done = cli("import", str(run / "dqn_0_300.pt"), "--env", "CartPole-v1", "--evaluate", "2",
               "--wait", "--root", str(tmp_path / "ws"), "--name", "waited")
    assert done.returncode == 0, done.stderr
    assert "scores: workbench evaluation over 2 seeded episodes" in done.stdout
    assert re.search(r"step 300: evaluation score \d+\.\d{3}", done.stderr), done.stderr
    stored = ExperimentStore(tmp_path / "ws").get("waited")
    assert stored.checkpoints()[0].evaluation_score == pytest.approx(
        _greedy_mean_return(run / "dqn_0_300.pt", episodes=2, seed=1000))
