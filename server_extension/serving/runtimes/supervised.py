"""Serve torch MLP classifiers trained on tabular data (framework ``"torch"``).

The experiment's ``extra`` describes the model, so checkpoints hold weights only::

    feature_columns   input column names, in the order ``predict`` expects them
    class_names       output class names, in the order of the probability columns
    hidden_sizes      widths of the hidden layers (ReLU between layers)
    mean, std         per-feature normalisation taken from the training rows (optional)

A checkpoint is a ``.safetensors`` file, or a ``.pt``/``.pth`` state dict of plain tensors
read with ``torch.load(weights_only=True)``; nothing pickled is ever executed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
    as_batch,
)
from workbench_core.store import Checkpoint, Experiment

if TYPE_CHECKING:
    import torch

TORCH_SUFFIXES = (".pt", ".pth")


def build_mlp(n_features: int, hidden_sizes: Sequence[int], n_classes: int) -> torch.nn.Module:
    """The classifier's layers: Linear+ReLU per hidden size, then a Linear to class logits."""
    import torch

    layers: list[torch.nn.Module] = []
    width = n_features
    for size in hidden_sizes:
        layers += [torch.nn.Linear(width, int(size)), torch.nn.ReLU()]
        width = int(size)
    layers.append(torch.nn.Linear(width, n_classes))
    return torch.nn.Sequential(*layers)


class SupervisedRuntime(Runtime):
    """An MLP classifier: ``predict`` maps (B, n_features) rows to (B, n_classes) probabilities."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        algo: str,
        feature_columns: list[str],
        class_names: list[str],
        mean: np.ndarray,
        std: np.ndarray,
        device: str,
    ) -> None:
        self.kind = AgentKind(algo=algo, supervised=True)
        self.model = model
        self.feature_columns = feature_columns
        self.class_names = class_names
        self.device = device
        self._mean = mean.astype(np.float32)
        self._std = std.astype(np.float32)

    def predict(self, inputs: Any) -> np.ndarray:
        """Class probabilities, float32 of shape (B, n_classes), for float rows (B, n_features)."""
        import torch

        rows = as_batch(inputs, "inputs", ndim=2)
        expected = len(self.feature_columns)
        if rows.shape[1] != expected:
            raise RequestError(
                f"inputs have {rows.shape[1]} features per row but this model expects "
                f"{expected}: {', '.join(self.feature_columns)} (in that order)."
            )
        scaled = (rows - self._mean) / self._std
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(scaled).to(self.device))
            probs = torch.softmax(logits.float(), dim=-1)
        return np.asarray(probs.cpu().numpy(), dtype=np.float32)

    def probe(self) -> None:
        """Classify one average row (the training mean)."""
        self.predict(self._mean[None, :].copy())


def _read_weights(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    if path.suffix in TORCH_SUFFIXES:
        # weights_only refuses anything but tensors and plain containers: no code runs.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise RuntimeLoadError(f"{path} holds a {type(state).__name__}, not a state dict.")
        return state
    raise RuntimeLoadError(
        f"{path.name} is not a checkpoint this loader reads; save the state dict as "
        "step_<N>.safetensors (or step_<N>.pt with torch.save(model.state_dict(), ...))."
    )


def _spec(experiment: Experiment) -> tuple[list[str], list[str], list[int], np.ndarray, np.ndarray]:
    extra = experiment.info.extra
    try:
        columns = [str(c) for c in extra["feature_columns"]]
        classes = [str(c) for c in extra["class_names"]]
        hidden = [int(h) for h in extra.get("hidden_sizes", [])]
        mean = np.asarray(extra.get("mean", [0.0] * len(columns)), dtype=np.float32)
        std = np.asarray(extra.get("std", [1.0] * len(columns)), dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r} must give feature_columns, class_names "
            f"and hidden_sizes under extra ({type(exc).__name__}: {exc})."
        ) from exc
    if not columns or len(classes) < 2:
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r} lists {len(columns)} feature columns and "
            f"{len(classes)} classes; a classifier needs at least one column and two classes."
        )
    if mean.shape != (len(columns),) or std.shape != (len(columns),) or (std <= 0).any():
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r}: mean and std need one value per feature "
            f"column ({len(columns)}), and std must be positive."
        )
    return columns, classes, hidden, mean, std


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> Runtime:
    """Rebuild the MLP described in ``experiment.json`` and load ``checkpoint``'s weights."""
    import torch

    columns, classes, hidden, mean, std = _spec(experiment)
    target = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    path = checkpoint.path
    if path.is_dir():
        raise RuntimeLoadError(f"{path} is a folder; supervised checkpoints are single files.")
    try:
        state = _read_weights(path)
        model = build_mlp(len(columns), hidden, len(classes))
        model.load_state_dict(state, strict=True)
    except RuntimeLoadError:
        raise
    except Exception as exc:
        raise RuntimeLoadError(
            f"Could not load {path} as a {len(columns)}-input, {len(classes)}-class MLP with "
            f"hidden sizes {hidden}: {type(exc).__name__}: {exc}"
        ) from exc
    model.to(target).eval()
    return SupervisedRuntime(
        model, algo=experiment.info.algorithm, feature_columns=columns, class_names=classes,
        mean=mean, std=std, device=target,
    )
