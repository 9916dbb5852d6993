"""The import's worker process: load the user's files, describe them, probe them.

Run by :mod:`server_extension.serving.importing.orchestrator` as ``main([_, REQUEST.json,
RESULT.json])`` in a process forked from the framework's warm template (``worker/oneshot.py``),
or as ``python -m server_extension.serving.importing.worker REQUEST.json RESULT.json``;
never inside the server: a checkpoint is a pickle, and loading one runs whatever code it
holds. The process caps its own memory (``RLIMIT_DATA``) before loading anything; the
orchestrator kills it and its session past its deadline. The result is a JSON file (stdout is
the loaded code's to print on).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


def _memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what it wraps) is an allocation refused by the memory cap."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class Refusal(Exception):
    """A reason to refuse the import, naming the field the user should change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _probe(runtime: Any, description: Any, observations: dict[str, Any]) -> None:
    """Act once on observations sampled from the environment, and check the answer."""
    import numpy as np

    if description.multi_agent:
        obs = {aid: value[None, ...] for aid, value in observations.items()}
        answer = runtime.get_action(obs)[0]
        values = list(answer.values()) if isinstance(answer, dict) else [answer]
    else:
        first = next(iter(observations.values()))
        answer = runtime.get_action(first[None, ...])[0]
        values = [answer]
    for value in values:
        array = np.asarray(value, dtype=np.float64)
        if array.shape[:1] != (1,) or not np.isfinite(array).all():
            raise Refusal("path", f"the agent answered an observation sampled from the "
                          f"environment with {value!r}; expected one finite action.")


def validate(request: dict[str, Any]) -> dict[str, Any]:
    """Describe the checkpoints, check them against the environment, load and probe each."""
    from server_extension.serving.importing.spaces import (
        RecipeError,
        check,
        recipe,
        sample_observations,
    )
    from server_extension.serving.runtimes import load_runtime
    from server_extension.serving.runtimes.base import RuntimeLoadError
    from server_extension.serving.runtimes.detection import Detected, ImportHints
    from server_extension.serving.runtimes.frameworks import module_for
    from workbench_core.store import Checkpoint, Experiment, ExperimentInfo

    detected = Detected.from_json(request["detected"])
    hints = ImportHints.from_json(request["hints"])
    module = module_for(detected.framework)
    started = time.perf_counter()
    try:
        description = module.describe(detected, hints)
    except RuntimeLoadError as exc:
        if _memory(exc):
            raise MemoryError from exc
        raise Refusal("path", str(exc)) from exc
    if request.get("describe_only"):
        # The Import dialog's preview: what the files say, and what is still needed.
        return {"ok": True, "description": description.to_json(),
                "seconds": round(time.perf_counter() - started, 3)}
    if description.needs:
        field = description.needs[0].split(":", 1)[0].strip()
        raise Refusal(field, " ".join(description.needs))
    extra = dict(description.extra)
    spec = None
    if description.project_type == "classic" and hints.env:
        try:
            spec = recipe(hints.env, dict(hints.env_kwargs), multi_agent=description.multi_agent)
            problems = check(spec, extra.get("spaces") or {})
        except RecipeError as exc:
            raise Refusal("env", str(exc)) from exc
        if problems:
            raise Refusal("env", f"env {hints.env!r} (kwargs {dict(hints.env_kwargs)}) does not "
                          f"fit the checkpoint: {'; '.join(problems)}. Pass the environment "
                          "(and env_kwargs) it was trained on.")
        extra["env"] = spec
    info = ExperimentInfo(
        name=str(request["name"]), project_type=description.project_type,
        algorithm=description.algorithm, framework=description.framework,
        environment=hints.env if description.project_type == "classic" else None,
        dataset=description.dataset, multi_agent=description.multi_agent,
        recurrent=description.recurrent,
        base_model=description.base_model or hints.base_model, extra=extra,
    )
    experiment = Experiment(Path(request.get("folder") or "."), info)
    observations = sample_observations(spec) if spec is not None else None
    loads = []
    for step, path in detected.checkpoints:
        began = time.perf_counter()
        try:
            runtime = load_runtime(experiment, Checkpoint(step=step, path=Path(path)))
            runtime.probe()
            if observations is not None:
                _probe(runtime, description, observations)
        except RuntimeLoadError as exc:
            if _memory(exc):
                raise MemoryError from exc
            raise Refusal("path", f"{Path(path).name}: {exc}") from exc
        close = getattr(runtime, "close", None)
        if callable(close):
            close()
        loads.append({"step": step, "seconds": round(time.perf_counter() - began, 3)})
    return {"ok": True, "description": description.to_json(), "info": info.to_json(),
            "loads": loads, "seconds": round(time.perf_counter() - started, 3)}


def _limit_memory(megabytes: float) -> None:
    import resource

    if megabytes > 0:
        limit = int(megabytes * 1024 * 1024)
        # A stricter limit already set stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def main(argv: list[str]) -> int:
    """Read the request, validate, write the result; the exit status is 0 either way."""
    request_path, result_path = argv[1], argv[2]
    request = json.loads(Path(request_path).read_text("utf-8"))
    _limit_memory(float(request.get("memory_mb") or 0))
    try:
        # One thread: the check is one small forward pass, and the server's cores are busy.
        # Only when the template imported torch (an ONNX model's check does not need it).
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)
        result = validate(request)
    except Refusal as exc:
        result = {"ok": False, "field": exc.field, "message": str(exc)}
    except MemoryError:
        result = {"ok": False, "field": "path", "message": (
            f"loading the checkpoint needed more than the import's memory limit "
            f"({request.get('memory_mb'):.0f} MiB): a file this small should not; it may be "
            "hostile. Nothing was imported.")}
    except Exception as exc:  # noqa: BLE001 - the user's file may raise anything
        traceback.print_exc()
        result = {"ok": False, "field": "path",
                  "message": f"{type(exc).__name__}: {str(exc)[:800]}"}
    tmp = f"{result_path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
