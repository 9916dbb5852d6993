"""Serve ONNX models with onnxruntime, framework ``"onnx"``; torch is never imported.

The model records its inputs and outputs (names, shapes with named or free axes, element
types); that is the served signature. Several inputs are sent as a dict by name; several
outputs come back as a dict by name.

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
)
from workbench_core.store import Checkpoint, Experiment

FRAMEWORK = "onnx"

# onnxruntime's element type names -> numpy dtype names
_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


def claims(path: Path) -> bool:
    """A ``.onnx`` file (its content is checked when a worker loads it)."""
    return path.suffix.lower() == ".onnx"


def detect(path: Path) -> Detected | None:
    """An ``.onnx`` file, or a folder of them; never loads one."""
    return detect_files(Path(path), FRAMEWORK, claims)


def _session(path: Path) -> Any:
    import onnxruntime

    if not path.is_file():
        raise RuntimeLoadError(f"{path} is not a file; an ONNX checkpoint is one .onnx file.")
    options = onnxruntime.SessionOptions()
    # Worker threads already run calls side by side; one intra-op thread each keeps a small
    # policy from fighting the other workers for cores.
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeLoadError(
            f"{path.name} is not a model onnxruntime can run ({type(exc).__name__}: "
            f"{str(exc).strip()[:300]}). Export it with torch.onnx.export(model, "
            "example_inputs, 'model.onnx') or your framework's ONNX exporter.") from exc


def signature(session: Any) -> list[InputSpec]:
    """The model's inputs: name, shape (named or unknown axes free) and dtype."""
    specs = []
    for arg in session.get_inputs():
        shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
        specs.append(InputSpec(arg.name, shape, _DTYPES.get(arg.type)))
    return specs


def describe(detected: Detected, hints: ImportHints) -> Description:
    """Open the last model (in a worker) and report its signature."""
    session = _session(detected.paths[-1])
    return describe_tensor_model(detected, hints, algorithm="ONNX", inputs=signature(session))


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> TensorModelRuntime:
    """Open ``checkpoint`` in an onnxruntime session and serve it (CPU)."""
    session = _session(checkpoint.path)
    specs = signature(session)
    names = [s.name for s in specs]
    outputs = [o.name for o in session.get_outputs()]

    def call(arrays: list[Any]) -> Any:
        # InferenceSession.run is thread-safe: workers call it side by side.
        return tuple(session.run(None, dict(zip(names, arrays, strict=True))))

    given = inputs_from_extra(experiment)
    return build_runtime(experiment, call, inputs=given or specs, output_names=outputs)


def warm() -> None:
    """Import onnxruntime ahead of the first load."""
    import onnxruntime  # noqa: F401
