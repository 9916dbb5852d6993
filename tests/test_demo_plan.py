"""The main job's demo plan: jobs in child processes, training marks, a second run that trains
nothing. Real training (the quick versions of the runs), real child processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agents_widget.client import ExperimentInfo
from agents_widget.training_view import training_html
from server_extension.demos.plan import (
    JOBS,
    BackgroundTraining,
    DemoJob,
    Placeholder,
    job_done,
    jobs_for,
    pending,
    remember_demo,
)
from server_extension.hosts.cli import _seed_workspace
from workbench_core import training_marks
from workbench_core.store import ExperimentStore, ExperimentWriter


def _listed(root: Path) -> dict[str, ExperimentInfo]:
    """What the panel reads: the experiments listing, through the client's parser."""
    return {e.name: ExperimentInfo.from_json(e.to_json()) for e in ExperimentStore(root).list()}


def test_full_mode_covers_the_nine_classic_families_and_minimal_is_cartpole() -> None:
    assert [job.name for job in jobs_for("minimal")] == ["cartpole-dqn"]
    classic = [p for job in jobs_for("full") for p in job.experiments
               if p.project_type == "classic"]
    families = {(p.algorithm, p.recurrent) for p in classic}
    assert families == {("DQN", False), ("RainbowDQN", False), ("PPO", False), ("PPO", True),
                        ("DDPG", False), ("TD3", False), ("MADDPG", False), ("MATD3", False),
                        ("IPPO", False)}
    assert {p.environment for p in classic} >= {"tictactoe_v3", "simple_spread_v3"}
    assert any(p.project_type == "advanced" for job in jobs_for("full") for p in job.experiments)
    assert jobs_for("full")[0].name == "cartpole-dqn"
    with pytest.raises(ValueError, match="minimal, full"):
        jobs_for("everything")  # type: ignore[arg-type]


QUICK_JOBS = ("cartpole-dqn", "tictactoe-ippo", "pendulum-ddpg")
_seen: dict[str, object] = {}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace the background runner trained three quick jobs into, two at a time;
    what the listing showed right after the start and the runner's messages in ``_seen``."""
    root = tmp_path_factory.mktemp("demo-plan")
    by_name = {job.name: job for job in JOBS}
    messages: list[str] = []
    runner = BackgroundTraining(root, [by_name[n] for n in QUICK_JOBS], workers=2,
                                say=messages.append, quick=True)
    runner.start()
    try:
        _seen["listed"] = _listed(root)
        assert runner.wait(600)
    finally:
        runner.stop()
    _seen.update(messages=messages, failed=runner.failed)
    return root


def test_background_jobs_show_as_training_then_ready(trained: Path) -> None:
    by_name = {job.name: job for job in JOBS}
    jobs = [by_name[n] for n in QUICK_JOBS]
    # Right after the start: every experiment listed (placeholders), marked, in the line.
    started = _seen["listed"]
    assert isinstance(started, dict)
    for job in jobs:
        info = started[job.name]
        assert info.training is not None
        assert info.training["state"] in ("queued", "training")
        assert info.algorithm == job.experiments[0].algorithm
    line = training_html(started.values())
    assert "Still training in the background" in line
    assert all(job.name in line for job in jobs)

    # At the end: trained, scored against random, unmarked.
    assert _seen["failed"] == []
    listed = _listed(trained)
    for job in jobs:
        assert listed[job.name].training is None
        assert listed[job.name].checkpoints
        assert job_done(trained, job)
        assert "vs_random" in listed[job.name].extra
        assert listed[job.name].extra["demo_job_seconds"] > 0
    assert training_html(listed.values()) == ""
    messages = _seen["messages"]
    assert isinstance(messages, list)
    assert any(m.startswith("[tictactoe-ippo] ") for m in messages)
    assert any("3/3 background jobs done" in m for m in messages)
    assert messages[-1].startswith("Every demo experiment is trained")
    assert pending(trained, "minimal") == []
    assert "cartpole-dqn" not in [job.name for job in pending(trained, "full")]


def test_a_failed_job_is_marked_failed_with_its_reason(tmp_path: Path) -> None:
    broken = DemoJob("no-such-job", (Placeholder("broken", "classic", "DQN", "agilerl",
                                                 environment="CartPole-v1"),))
    runner = BackgroundTraining(tmp_path, [broken], workers=1, say=lambda _m: None)
    runner.start()
    assert runner.wait(120)
    assert runner.failed == ["no-such-job"]
    mark = _listed(tmp_path)["broken"].training
    assert mark is not None
    assert mark["state"] == "failed"
    assert "invalid choice" in mark["error"]
    assert not job_done(tmp_path, broken)
    assert "failed" in training_html(_listed(tmp_path).values())


def test_a_mark_whose_owner_died_reads_interrupted(tmp_path: Path) -> None:
    ExperimentWriter.create(tmp_path, "cartpole-dqn", project_type="classic", algorithm="DQN",
                            framework="agilerl")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    training_marks.mark(tmp_path, "cartpole-dqn", "training", owner=int(gone.stdout))
    mark = training_marks.read(tmp_path, "cartpole-dqn")
    assert mark is not None
    assert mark["state"] == "interrupted"
    assert [job.name for job in pending(tmp_path, "minimal")] == ["cartpole-dqn"]
    training_marks.clear(tmp_path, "cartpole-dqn")
    assert training_marks.read(tmp_path, "cartpole-dqn") is None


def test_a_second_run_trains_nothing_and_a_users_workspace_is_left_alone(
        tmp_path: Path, trained: Path) -> None:
    # A workspace the demo seeded, its CartPole trained (by the quick run, copied).
    seeded = tmp_path / "seeded"
    shutil.copytree(trained / "experiments", seeded / "experiments")
    remember_demo(seeded)
    assert pending(seeded, "minimal") == []
    metrics = seeded / "experiments" / "cartpole-dqn" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    assert _seed_workspace(seeded, "minimal", 1, quick=True) is None
    assert metrics.stat().st_mtime_ns == before

    own = tmp_path / "own"
    ExperimentWriter.create(own, "my-run", project_type="classic", algorithm="DQN",
                            framework="agilerl")
    assert _seed_workspace(own, "full", 2, quick=True) is None
    assert [e.name for e in ExperimentStore(own).list()] == ["my-run"]
