"""Serve torch.export programs (``torch.export.save`` -> ``.pt2``), framework ``"torch_export"``.

The program records its inputs: names, shapes (a dynamic axis, such as an exported batch
axis, is free) and dtypes; that is the served input signature unless the import gave one.
Export with a dynamic batch axis (``dynamic_shapes=({0: torch.export.Dim("batch")},)``) to
take batches of any size; a program exported for batch 1 takes exactly one row.

See :mod:`tensor_model` for what ``predict`` and ``get_action`` answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

FRAMEWORK = "torch_export"


def claims(path: Path) -> bool:
    """A zip whose members say torch.export (``archive_format`` and ``models/``)."""
    members = zip_members(path)
    return any(m.endswith("/archive_format") or m == "archive_format" for m in members) and any(
        "models/" in m for m in members)


def detect(path: Path) -> Detected | None:
    """A ``.pt2`` program, or a folder of them; never loads one."""
    return detect_files(Path(path), FRAMEWORK, claims)


def _load_program(path: Path) -> Any:
    import torch

    try:
        return torch.export.load(str(checkpoint_file(path, "torch.export")))
    except RuntimeLoadError:
        raise
    except Exception as exc:
        raise RuntimeLoadError(
            f"{path.name} could not be read as a torch.export program ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}). Save it with torch.export.save(torch.export.export("
            "model, example_inputs), 'model.pt2').") from exc


def signature(program: Any) -> list[InputSpec]:
    """The program's user inputs: name, shape (symbolic axes free) and dtype."""
    import torch

    user = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user:
            continue
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            shape = tuple(int(d) if isinstance(d, int) else None for d in value.shape)
            dtype = str(value.dtype).removeprefix("torch.")
            specs.append(InputSpec(node.name, shape, dtype))
        else:
            specs.append(InputSpec(node.name))
    return specs


def describe(detected: Detected, hints: ImportHints) -> Description:
    """Load the last program (in a worker) and report its signature."""
    program = _load_program(detected.paths[-1])
    return describe_tensor_model(detected, hints, algorithm="torch.export",
                                 inputs=signature(program))


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> TensorModelRuntime:
    """Load ``checkpoint`` with ``torch.export.load`` and serve its module."""
    target = serving_device(device)
    program = _load_program(checkpoint.path)
    module = program.module()
    if target != "cpu":
        module = module.to(target)
    return build_runtime(experiment, torch_call(module, target),
                         inputs=inputs_from_extra(experiment) or signature(program))


def warm() -> None:
    """Import torch ahead of the first load."""
    import torch  # noqa: F401
