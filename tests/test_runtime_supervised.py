"""The supervised runtime over the Iris demo classifier."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from server_extension.demos.data import IRIS_CSV
from server_extension.demos.llm import one_torch_thread
from server_extension.demos.supervised import EXPERIMENT, build_supervised_demo
from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.supervised import SupervisedRuntime
from workbench_core.store import ExperimentStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny; on a shared 2-core machine a second torch thread makes them slower.
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def iris_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("iris-workspace")
    assert build_supervised_demo(root, quick=True) == [EXPERIMENT]
    return root


@pytest.fixture(scope="module")
def runtime(iris_root: Path) -> SupervisedRuntime:
    experiment = ExperimentStore(iris_root).get(EXPERIMENT)
    loaded = load_runtime(experiment, experiment.checkpoint(experiment.best_step()))
    assert isinstance(loaded, SupervisedRuntime)
    return loaded


def _copy(root: Path, dest_root: Path) -> Path:
    """A copy of the workspace whose experiment can be broken without harming the others."""
    shutil.copytree(root, dest_root)
    return dest_root / "experiments" / EXPERIMENT


def _final_file(folder: Path) -> Path:
    return max((folder / "checkpoints").iterdir(), key=lambda p: int(p.name.split(".")[0][5:]))


def _load_final(root: Path) -> None:
    experiment = ExperimentStore(root).get(EXPERIMENT)
    load_runtime(experiment, experiment.checkpoint(experiment.final_step()))


def test_demo_records_what_the_runtime_needs(iris_root: Path) -> None:
    experiment = ExperimentStore(iris_root).get(EXPERIMENT)
    info = experiment.info
    assert (info.project_type, info.framework, info.dataset) == ("advanced", "torch", "iris.csv")
    assert info.extra["feature_columns"] == [
        "sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"
    ]
    assert info.extra["class_names"] == ["setosa", "versicolor", "virginica"]
    checkpoints = experiment.checkpoints()
    assert len(checkpoints) >= 2
    assert all(c.path.suffix == ".safetensors" for c in checkpoints)
    assert all(0.0 <= (c.evaluation_score or -1) <= 1.0 for c in checkpoints)


def test_predict_gives_probabilities_that_classify(runtime: SupervisedRuntime) -> None:
    assert runtime.kind.supervised
    assert runtime.kind.algo == "MLPClassifier"
    runtime.probe()
    table = pd.read_csv(IRIS_CSV)
    features = table[runtime.feature_columns].to_numpy(np.float64)  # any numeric dtype works
    probs = runtime.predict(features)
    assert probs.shape == (150, 3)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    predicted = np.asarray(runtime.class_names)[probs.argmax(axis=1)]
    # Even the quick (20-epoch) model must beat chance (1/3) by a wide margin.
    assert (predicted == table["species"].to_numpy()).mean() > 0.7


def test_wrong_inputs_say_what_is_expected(runtime: SupervisedRuntime) -> None:
    with pytest.raises(RequestError, match=r"3 features per row but this model expects 4: "
                                           r"sepal_length_cm, sepal_width_cm"):
        runtime.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(RequestError, match="2 axes"):
        runtime.predict(np.zeros(4, np.float32))
    with pytest.raises(RequestError, match="NaN"):
        runtime.predict(np.full((1, 4), np.nan, np.float32))
    with pytest.raises(RequestError, match="must be an array"):
        runtime.predict([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(RequestError, match="POST predict"):
        runtime.get_action(np.zeros((1, 4), np.float32))


def test_plain_state_dict_checkpoint_loads(iris_root: Path, tmp_path: Path,
                                           runtime: SupervisedRuntime) -> None:
    folder = _copy(iris_root, tmp_path / "ws")
    ckpt = folder / "checkpoints"
    state = {k: v.clone() for k, v in runtime.model.state_dict().items()}
    for path in ckpt.iterdir():
        path.unlink()
    torch.save(state, ckpt / "step_7.pt")
    experiment = ExperimentStore(tmp_path / "ws").get(EXPERIMENT)
    loaded = load_runtime(experiment, experiment.checkpoint(7))
    rows = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(loaded.predict(rows), runtime.predict(rows), rtol=1e-6)


class NotATensor:
    """Anything but tensors and plain containers must be refused by weights_only loading."""


def test_pickled_objects_are_refused(iris_root: Path, tmp_path: Path) -> None:
    folder = _copy(iris_root, tmp_path / "ws")
    final = _final_file(folder)
    final.unlink()
    torch.save({"0.weight": torch.zeros(16, 4), "payload": NotATensor()},
               final.with_suffix(".pt"))
    with pytest.raises(RuntimeLoadError, match="Could not load"):
        _load_final(tmp_path / "ws")


def test_corrupt_checkpoint_fails_to_load(iris_root: Path, tmp_path: Path) -> None:
    folder = _copy(iris_root, tmp_path / "ws")
    final = _final_file(folder)
    final.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(RuntimeLoadError, match="Could not load"):
        _load_final(tmp_path / "ws")


def test_architecture_mismatch_fails_to_load(iris_root: Path, tmp_path: Path) -> None:
    folder = _copy(iris_root, tmp_path / "ws")
    info_path = folder / "experiment.json"
    info = json.loads(info_path.read_text())
    info["extra"]["hidden_sizes"] = [8]
    info_path.write_text(json.dumps(info))
    with pytest.raises(RuntimeLoadError, match=r"hidden sizes \[8\]"):
        _load_final(tmp_path / "ws")


def test_missing_columns_in_experiment_fail_to_load(iris_root: Path, tmp_path: Path) -> None:
    folder = _copy(iris_root, tmp_path / "ws")
    info_path = folder / "experiment.json"
    info = json.loads(info_path.read_text())
    del info["extra"]["feature_columns"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(RuntimeLoadError, match="must give feature_columns"):
        _load_final(tmp_path / "ws")
