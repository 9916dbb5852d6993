"""Serve TorchScript models (``torch.jit.save``), framework ``"torchscript"``.

A checkpoint is the file ``torch.jit.save(torch.jit.script(model) or torch.jit.trace(...),
path)`` writes (a zip holding ``code/`` and ``constants.pkl``). TorchScript keeps the
argument names of ``forward`` but not their shapes, so the input signature (``extra["inputs"]``)
comes from the import when the user gives it; otherwise any numeric arrays are passed on.

See :mod:`tensor_model` for what ``predict`` and ``get_action`` answer.
"""

from __future__ import annotations

from pathlib import Path

from server_extension.serving.runtimes.base import RuntimeLoadError
from server_extension.serving.runtimes.detection import Description, Detected, ImportHints
from server_extension.serving.runtimes.tensor_model import (
    InputSpec,
    TensorModelRuntime,
    build_runtime,
    describe_tensor_model,
    detect_files,
    inputs_from_extra,
    zip_members,
)
from server_extension.serving.runtimes.torch_call import checkpoint_file, serving_device, torch_call
from workbench_core.store import Checkpoint, Experiment

FRAMEWORK = "torchscript"


def claims(path: Path) -> bool:
    """A zip whose members say TorchScript (``code/`` and ``constants.pkl``)."""
    members = zip_members(path)
    return any(m.endswith("/constants.pkl") for m in members) and any(
        "/code/" in m for m in members)


def detect(path: Path) -> Detected | None:
    """A TorchScript file, or a folder of them; never loads one."""
    return detect_files(Path(path), FRAMEWORK, claims)


def _load_script(path: Path, device: str) -> object:
    import torch

    try:
        module = torch.jit.load(str(checkpoint_file(path, "TorchScript")), map_location=device)
    except RuntimeLoadError:
        raise
    except Exception as exc:
        raise RuntimeLoadError(
            f"{path.name} could not be read as TorchScript ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}). Save it with torch.jit.save(torch.jit.script(model), "
            "path).") from exc
    module.eval()
    return module


def argument_names(module: object) -> list[str]:
    """The names of ``forward``'s arguments after ``self``, from the TorchScript schema."""
    try:
        schema = module.forward.schema  # type: ignore[attr-defined]
        return [a.name for a in schema.arguments[1:]]
    except (AttributeError, RuntimeError):
        return []


def describe(detected: Detected, hints: ImportHints) -> Description:
    """Load the last file (in a worker) and report its argument names as the signature."""
    module = _load_script(detected.paths[-1], "cpu")
    names = argument_names(module)
    return describe_tensor_model(
        detected, hints, algorithm="TorchScript",
        inputs=[InputSpec(n) for n in names] if len(names) > 1 else None)


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> TensorModelRuntime:
    """Load ``checkpoint`` with ``torch.jit.load`` and serve it."""
    target = serving_device(device)
    module = _load_script(checkpoint.path, target)
    return build_runtime(experiment, torch_call(module, target),  # type: ignore[arg-type]
                         inputs=inputs_from_extra(experiment))


def warm() -> None:
    """Import torch ahead of the first load."""
    import torch  # noqa: F401
