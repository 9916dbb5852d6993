"""Run a torch callable on numpy inputs and hand numpy back: what the torch loaders share.

Example::

    call = torch_call(model, "cpu")          # model: nn.Module, ScriptModule, exported module
    outputs = call([np.zeros((1, 4), np.float32)])

Thread-safety: every call builds its own tensors under ``torch.inference_mode()`` and leaves
module state alone, so several worker threads may call at once (modules must be in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server_extension.serving.runtimes.base import RuntimeLoadError


def _to_numpy(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {str(k): _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_to_numpy(v) for v in value)
    return np.asarray(value)


def torch_call(fn: Callable[..., Any], device: str) -> Callable[[list[np.ndarray]], Any]:
    """``fn`` taking and answering numpy arrays, positional inputs in order."""
    import torch

    target = torch.device(device)

    def call(arrays: list[np.ndarray]) -> Any:
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(target) for a in arrays]
        with torch.inference_mode():
            return _to_numpy(fn(*tensors))

    return call


def serving_device(device: str) -> str:
    """``device`` when torch can use it, else ``"cpu"``."""
    import torch

    return device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"


def checkpoint_file(path: Path, what: str) -> Path:
    """``path`` when it is a file; :class:`RuntimeLoadError` when it is a folder or missing."""
    if not path.is_file():
        raise RuntimeLoadError(f"{path} is not a file; a {what} checkpoint is one file.")
    return path
