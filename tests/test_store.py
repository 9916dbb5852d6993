"""The experiment store on disk, and the notebook-side tracking API that writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agents_widget.tracking import (
    resume_experiment,
    save_checkpoint,
    start_experiment,
    workspace_root,
)
from workbench_core import store
from workbench_core.store import (
    Checkpoint,
    ExperimentInfo,
    ExperimentStore,
    ExperimentWriter,
    StoreError,
    default_root,
    validate_name,
)


def make(root: Path, name: str = "exp", **fields: object) -> ExperimentWriter:
    fields.setdefault("environment", "CartPole-v1")
    return ExperimentWriter.create(root, name, project_type="classic", algorithm="DQN",
                                   framework="agilerl", **fields)  # type: ignore[arg-type]


def touch_checkpoint(writer: ExperimentWriter, step: int, size: int = 10) -> Path:
    path = writer.checkpoint_path(step)
    path.write_bytes(b"x" * size)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# -- writing and reading back -------------------------------------------------------------


def test_round_trip_of_info_metrics_and_checkpoints(tmp_path: Path) -> None:
    writer = make(tmp_path, extra={"env_kwargs": {"max_episode_steps": 100}})
    for step, train, evaluation in [(100, 10.0, 20.0), (200, 30.0, None), (300, None, 50.5)]:
        touch_checkpoint(writer, step)
        writer.log(step, training_score=train, evaluation_score=evaluation)

    exp = ExperimentStore(tmp_path).get("exp")
    assert exp.info.algorithm == "DQN"
    assert exp.info.source == "CartPole-v1"
    assert exp.info.extra == {"env_kwargs": {"max_episode_steps": 100}}
    assert exp.metrics() == [
        {"step": 100, "training_score": 10.0, "evaluation_score": 20.0},
        {"step": 200, "training_score": 30.0, "evaluation_score": None},
        {"step": 300, "training_score": None, "evaluation_score": 50.5},
    ]
    ckpts = exp.checkpoints()
    assert [c.step for c in ckpts] == [100, 200, 300]
    assert ckpts[1] == Checkpoint(200, writer.checkpoint_path(200), 30.0, None)
    as_json = exp.to_json()
    assert as_json["tab"] == "classic"
    assert as_json["source"] == "CartPole-v1"
    assert [c["step"] for c in as_json["checkpoints"]] == [100, 200, 300]
    assert leftovers(tmp_path) == []


def test_later_metric_rows_win_and_bad_cells_are_blank(tmp_path: Path) -> None:
    writer = make(tmp_path)
    writer.log(5, training_score=1.0, evaluation_score=2.0)
    writer.log(5, training_score=3.0, evaluation_score=float("nan"))
    with (writer.folder / "metrics.csv").open("a", encoding="utf-8") as fh:
        fh.write("not-a-step,1,2\n7,abc,inf\n")
    rows = ExperimentStore(tmp_path).get("exp").metrics()
    assert rows == [
        {"step": 5, "training_score": 3.0, "evaluation_score": None},
        {"step": 7, "training_score": None, "evaluation_score": None},
    ]


def test_only_step_named_entries_are_checkpoints(tmp_path: Path) -> None:
    writer = make(tmp_path)
    touch_checkpoint(writer, 10)
    folder = writer.checkpoint_path(20, suffix="")
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"y" * 2048)
    for stray in (".step_30.pt.123.tmp", "step_x.pt", "notes.txt", "step_40.pt.bak"):
        (writer.folder / "checkpoints" / stray).write_bytes(b"z")
    ckpts = ExperimentStore(tmp_path).get("exp").checkpoints()
    assert [(c.step, c.path.name) for c in ckpts] == [(10, "step_10.pt"), (20, "step_20")]
    assert ckpts[1].size_mb == round(2048 / 2**20, 3)
    assert ckpts[0].to_json() == {"step": 10, "training_score": None, "evaluation_score": None,
                                  "size_mb": round(10 / 2**20, 3)}


def test_update_info_persists(tmp_path: Path) -> None:
    writer = make(tmp_path)
    writer.update_info(extra={"train_seconds": 1.5}, recurrent=True)
    info = ExperimentStore(tmp_path).get("exp").info
    assert info.extra == {"train_seconds": 1.5}
    assert info.recurrent is True


# -- best / final / specific step -----------------------------------------------------------


def test_best_is_highest_evaluation_latest_on_ties(tmp_path: Path) -> None:
    writer = make(tmp_path)
    for step, evaluation in [(1, 5.0), (2, 9.0), (3, 9.0), (4, 1.0)]:
        touch_checkpoint(writer, step)
        writer.log(step, training_score=100.0 - step, evaluation_score=evaluation)
    exp = ExperimentStore(tmp_path).get("exp")
    assert exp.best_step() == 3
    assert exp.resolve("best") == 3
    assert exp.final_step() == 4
    assert exp.resolve("final") == 4
    assert exp.resolve(2) == 2
    assert exp.resolve("1") == 1


def test_best_falls_back_to_training_score_then_final(tmp_path: Path) -> None:
    writer = make(tmp_path)
    for step in (1, 2, 3):
        touch_checkpoint(writer, step)
    exp = ExperimentStore(tmp_path).get("exp")
    assert exp.best_step() == 3
    writer.log(1, training_score=7.0)
    writer.log(2, training_score=3.0)
    assert exp.best_step() == 1
    # A score logged for a step with no checkpoint file is not a candidate.
    writer.log(99, evaluation_score=1e9)
    assert exp.best_step() == 1


@pytest.mark.parametrize("rule", ["latest", "", None, True, 2.5, "7"])
def test_resolve_refuses_what_is_not_a_saved_step(tmp_path: Path, rule: object) -> None:
    writer = make(tmp_path)
    touch_checkpoint(writer, 1)
    touch_checkpoint(writer, 3)
    with pytest.raises(StoreError) as info:
        ExperimentStore(tmp_path).get("exp").resolve(rule)  # type: ignore[arg-type]
    message = str(info.value)
    assert "best" in message or "available steps: [1, 3]" in message


def test_no_checkpoints_is_a_clear_error(tmp_path: Path) -> None:
    make(tmp_path)
    exp = ExperimentStore(tmp_path).get("exp")
    for call in (exp.best_step, exp.final_step):
        with pytest.raises(StoreError, match="no checkpoints yet"):
            call()
    with pytest.raises(StoreError, match="available steps: none"):
        exp.checkpoint(5)


# -- names, overwrite and broken folders ----------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", "../up", "a/b", ".hidden", "-dash", "x" * 101,
                                  "sp ace", "naïve", None, 5])
def test_bad_names_are_refused_with_the_rule(tmp_path: Path, name: object) -> None:
    with pytest.raises(StoreError, match="letters, digits"):
        validate_name(name)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        make(tmp_path, name)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        ExperimentStore(tmp_path).get(name)  # type: ignore[arg-type]
    assert not (tmp_path / "experiments").exists() or not any(
        (tmp_path / "experiments").iterdir())


def test_good_names_are_trimmed() -> None:
    assert validate_name("  run-1.v2_final ") == "run-1.v2_final"


def test_existing_experiment_needs_overwrite(tmp_path: Path) -> None:
    writer = make(tmp_path)
    touch_checkpoint(writer, 1)
    with pytest.raises(StoreError, match="overwrite=True"):
        make(tmp_path)
    make(tmp_path, overwrite=True, environment="Pendulum-v1")
    exp = ExperimentStore(tmp_path).get("exp")
    assert exp.checkpoints() == []
    assert exp.info.environment == "Pendulum-v1"


def test_bad_project_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="'classic' or 'advanced'"):
        ExperimentWriter.create(tmp_path, "exp", project_type="weird",  # type: ignore[arg-type]
                                algorithm="DQN", framework="agilerl")


def test_unknown_experiment_names_the_known_ones(tmp_path: Path) -> None:
    make(tmp_path, "alpha")
    with pytest.raises(StoreError, match=r"known experiments: \['alpha'\]"):
        ExperimentStore(tmp_path).get("beta")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"name": "x"}',
                                     '{"name": "x", "project_type": "other", "algorithm": "a",'
                                     ' "framework": "f"}'])
def test_broken_experiment_json_is_skipped_in_list_and_explained_in_get(
        tmp_path: Path, content: str) -> None:
    make(tmp_path, "good")
    broken = tmp_path / "experiments" / "broken"
    broken.mkdir()
    (broken / "experiment.json").write_text(content, encoding="utf-8")
    assert [e.name for e in ExperimentStore(tmp_path).list()] == ["good"]
    with pytest.raises(StoreError, match=r"experiment\.json"):
        ExperimentStore(tmp_path).get("broken")


def test_info_from_json_keeps_unknown_keys_out() -> None:
    info = ExperimentInfo.from_json({"name": "n", "project_type": "advanced", "algorithm": "a",
                                     "framework": "torch", "dataset": "iris", "other": 1})
    assert info.source == "iris"
    assert "other" not in info.to_json()


# -- atomic writes --------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make(tmp_path)
    writer.log(1, training_score=1.0)
    before = (writer.folder / "metrics.csv").read_text(encoding="utf-8")

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(store.os, "replace", refuse)
    with pytest.raises(OSError, match="injected"):
        writer.log(2, training_score=2.0)
    monkeypatch.undo()
    assert (writer.folder / "metrics.csv").read_text(encoding="utf-8") == before
    assert leftovers(tmp_path) == []


def test_json_is_never_seen_half_written(tmp_path: Path) -> None:
    writer = make(tmp_path)
    for i in range(20):
        writer.update_info(extra={"i": i, "pad": "p" * 1000})
        data = json.loads((writer.folder / "experiment.json").read_text(encoding="utf-8"))
        assert data["extra"]["i"] == i
    assert leftovers(tmp_path) == []


# -- tracking API ---------------------------------------------------------------------------


def test_default_root_follows_the_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTS_WORKBENCH_ROOT", str(tmp_path / "ws"))
    assert default_root() == tmp_path / "ws"
    assert workspace_root() == tmp_path / "ws"
    assert workspace_root("~") == Path.home()
    writer = start_experiment("tracked", project_type="classic", algorithm="PPO",
                              framework="agilerl", environment="CartPole-v1")
    assert writer.folder == tmp_path / "ws" / "experiments" / "tracked"
    monkeypatch.delenv("AGENTS_WORKBENCH_ROOT")
    assert default_root() == Path.home() / "agents-workbench"


def test_save_checkpoint_writes_then_logs(tmp_path: Path) -> None:
    writer = start_experiment("t", project_type="advanced", algorithm="MLP", framework="torch",
                              dataset="iris", root=tmp_path)
    path = save_checkpoint(writer, 5, lambda p: Path(p).write_bytes(b"weights"),
                           training_score=0.5, evaluation_score=0.75)
    assert path == writer.checkpoint_path(5)
    assert path.read_bytes() == b"weights"
    # Saving the same step again replaces it.
    save_checkpoint(writer, 5, lambda p: Path(p).write_bytes(b"better"), evaluation_score=0.8)
    def save_folder(path: str) -> None:
        Path(path).mkdir()
        (Path(path) / "w").touch()

    folder = save_checkpoint(writer, 6, save_folder, suffix="")
    assert folder.is_dir()
    exp = ExperimentStore(tmp_path).get("t")
    assert [(c.step, c.evaluation_score) for c in exp.checkpoints()] == [(5, 0.8), (6, None)]
    assert exp.checkpoint(5).path.read_bytes() == b"better"
    assert leftovers(tmp_path) == []


def test_failed_save_leaves_no_checkpoint_and_no_metrics(tmp_path: Path) -> None:
    writer = start_experiment("t", project_type="classic", algorithm="DQN",
                              framework="agilerl", root=tmp_path)

    def crash(path: str) -> None:
        Path(path).write_bytes(b"half")
        raise RuntimeError("crashed mid-save")

    with pytest.raises(RuntimeError, match="mid-save"):
        save_checkpoint(writer, 1, crash, evaluation_score=1.0)
    with pytest.raises(StoreError, match="wrote nothing"):
        save_checkpoint(writer, 2, lambda _p: None)
    with pytest.raises(StoreError, match="non-negative"):
        save_checkpoint(writer, -1, lambda p: Path(p).touch())
    exp = ExperimentStore(tmp_path).get("t")
    assert exp.checkpoints() == []
    assert exp.metrics() == []
    assert os.listdir(writer.folder / "checkpoints") == []


def test_start_experiment_explains_unknown_fields(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="extra"):
        start_experiment("t", project_type="classic", algorithm="DQN", framework="agilerl",
                         root=tmp_path, learning_rate=0.1)


def test_resume_appends_to_an_existing_experiment(tmp_path: Path) -> None:
    first = start_experiment("t", project_type="classic", algorithm="DQN", framework="agilerl",
                             root=tmp_path)
    save_checkpoint(first, 1, lambda p: Path(p).touch(), evaluation_score=1.0)
    again = resume_experiment("t", root=tmp_path)
    save_checkpoint(again, 2, lambda p: Path(p).touch(), evaluation_score=2.0)
    assert ExperimentStore(tmp_path).get("t").best_step() == 2
    with pytest.raises(StoreError, match="Unknown experiment"):
        resume_experiment("nope", root=tmp_path)
