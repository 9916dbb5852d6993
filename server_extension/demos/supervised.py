"""Train the supervised demo: an MLP that tells the three Iris species apart.

:func:`build_supervised_demo` writes the experiment ``iris-classifier`` (framework ``"torch"``)
whose checkpoints are ``step_<epoch>.safetensors`` state dicts. ``extra`` in its
``experiment.json`` records what the runtime needs (input columns, class names, layer sizes,
normalisation) and what the scores mean: ``training_score`` is the accuracy on the training
rows and ``evaluation_score`` the accuracy on held-out rows (stratified, 10 per species).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server_extension.demos.data import IRIS_CSV, IRIS_DATASET_NAME
from server_extension.demos.llm import one_torch_thread
from server_extension.serving.runtimes.supervised import build_mlp
from workbench_core.store import ExperimentWriter

EXPERIMENT = "iris-classifier"
TARGET_COLUMN = "species"
HIDDEN_SIZES = (16, 16)
HELD_OUT_PER_CLASS = 10


def _split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices for training and held-out sets, the same share of every class in each."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out.append(rows[:HELD_OUT_PER_CLASS])
        train.append(rows[HELD_OUT_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def build_supervised_demo(
    root: Path, *, quick: bool = False, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Train ``iris-classifier`` into ``<root>/experiments`` (replacing it) and return its name.

    Full mode trains 300 full-batch epochs (about a second) with a checkpoint every 50;
    ``quick`` trains 20 epochs with a checkpoint every 10.
    """
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    say = progress or (lambda _msg: None)
    epochs, every = (20, 10) if quick else (300, 50)
    table = pd.read_csv(IRIS_CSV)
    feature_columns = [c for c in table.columns if c != TARGET_COLUMN]
    class_names = sorted(table[TARGET_COLUMN].unique().tolist())
    features = table[feature_columns].to_numpy(dtype=np.float32)
    labels = table[TARGET_COLUMN].map({name: i for i, name in enumerate(class_names)}).to_numpy()
    train_rows, eval_rows = _split(labels, seed=0)
    mean = features[train_rows].mean(axis=0)
    std = features[train_rows].std(axis=0) + 1e-6

    writer = ExperimentWriter.create(
        root, EXPERIMENT, project_type="advanced", algorithm="MLPClassifier", framework="torch",
        dataset=IRIS_DATASET_NAME, overwrite=True,
        extra={
            "feature_columns": feature_columns,
            "target_column": TARGET_COLUMN,
            "class_names": class_names,
            "hidden_sizes": list(HIDDEN_SIZES),
            "mean": [round(float(v), 6) for v in mean],
            "std": [round(float(v), 6) for v in std],
            "output": "class probabilities, one column per class_names entry",
            "training_score": f"accuracy on the {len(train_rows)} training rows",
            "evaluation_score": f"accuracy on the {len(eval_rows)} held-out rows",
            "quick": quick,
        },
    )
    # Normalise with the rounded stats the runtime will read back, so both see the same inputs.
    scaled = (features - np.asarray(writer.info.extra["mean"], np.float32)) / np.asarray(
        writer.info.extra["std"], np.float32
    )
    x_train, y_train = torch.from_numpy(scaled[train_rows]), torch.from_numpy(labels[train_rows])
    x_eval, y_eval = torch.from_numpy(scaled[eval_rows]), torch.from_numpy(labels[eval_rows])

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_mlp(len(feature_columns), HIDDEN_SIZES, len(class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.inference_mode():
            return float((model(x).argmax(dim=-1) == y).float().mean())

    def save(epoch: int) -> None:
        path = writer.checkpoint_path(epoch, suffix=".safetensors")
        # Written under a hidden name and renamed, so a reader never sees half a file.
        tmp = path.with_name(f".{path.name}.tmp")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp), metadata={"epoch": str(epoch)})
        os.replace(tmp, path)

    with one_torch_thread():
        for epoch in range(1, epochs + 1):
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x_train), y_train)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if epoch % every == 0 or epoch == epochs:
                model.eval()
                train_acc, eval_acc = accuracy(x_train, y_train), accuracy(x_eval, y_eval)
                save(epoch)
                writer.log(epoch, training_score=train_acc, evaluation_score=eval_acc)
                say(f"{EXPERIMENT} epoch {epoch}: loss {loss.item():.3f}, train accuracy "
                    f"{train_acc:.3f}, held-out accuracy {eval_acc:.3f}")
    writer.update_info(extra={**writer.info.extra,
                              "train_seconds": round(time.perf_counter() - started, 2)})
    return [EXPERIMENT]
