"""Loaders that turn a checkpoint into a :class:`Runtime`, chosen by the experiment's framework.

Each framework module exposes ``load(experiment, checkpoint, device) -> Runtime``. They are
imported lazily: torch, AgileRL and transformers cost seconds to import, and a server with no
deployed agents should not pay for them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
)
from workbench_core.store import Checkpoint, Experiment

# framework name in experiment.json -> module in this package holding its ``load``
LOADERS: dict[str, str] = {
    "agilerl": "agilerl",
    "transformers": "llm",
    "torch": "supervised",
    "latent_ppo": "latent",
    # Bring your own model (see each module's docstring for the files it reads).
    "sb3": "sb3",
    "torchscript": "torchscript",
    "torch_export": "torch_export",
    "onnx": "onnx_model",
    "pytorch": "torch_module",
}


def loader_module(experiment: Experiment) -> Any:
    """Import and return the loader module that serves ``experiment``.

    The first call per framework pays for importing torch, AgileRL or transformers (seconds);
    the deployer calls this ahead of Connect so that cost is not on the Connect path.
    """
    framework = experiment.info.framework
    module_name = LOADERS.get(framework)
    # AgileRL's multi-agent and recurrent policies have loaders of their own.
    if framework == "agilerl" and experiment.info.multi_agent:
        module_name = "agilerl_multi"
    elif framework == "agilerl" and experiment.info.recurrent:
        module_name = "agilerl_recurrent"
    # "torch" naming a module_class is any nn.Module (the "pytorch" loader); without one it
    # is the MLP classifier, whose own checks say what experiment.json lacks.
    elif framework == "torch" and "module_class" in experiment.info.extra:
        module_name = "torch_module"
    if module_name is None:
        raise RuntimeLoadError(
            f"Experiment {experiment.name!r} was trained with framework {framework!r}, which "
            f"the workbench cannot serve; supported frameworks: {sorted(LOADERS)}."
        )
    try:
        return importlib.import_module(f"{__name__}.{module_name}")
    except ImportError as exc:
        raise RuntimeLoadError(
            f"The {framework!r} loader could not be imported: {exc}. "
            "Install the workbench's dependencies into the server's environment."
        ) from exc


def warm_loader(experiment: Experiment) -> None:
    """Import what loading ``experiment`` will need: its loader module and, where the module
    has a ``warm()``, the frameworks it imports lazily (torch, AgileRL)."""
    warm = getattr(loader_module(experiment), "warm", None)
    if callable(warm):
        warm()


def load_runtime(experiment: Experiment, checkpoint: Checkpoint, *, device: str = "cpu",
                 options: Mapping[str, Any] | None = None) -> Runtime:
    """Load ``checkpoint`` of ``experiment``; :class:`RuntimeLoadError` with a readable reason.

    ``options`` are the agent's deployment options; they reach loaders whose ``load`` takes an
    ``options`` keyword (LatentPPO reads its decoder there) and are ignored by the others.
    """
    if not checkpoint.path.exists():
        raise RuntimeLoadError(
            f"Checkpoint file {checkpoint.path} is missing (deleted after the agent was "
            "created?). Create the agent again from a checkpoint that exists."
        )
    module = loader_module(experiment)
    extra: dict[str, Any] = {}
    if "options" in inspect.signature(module.load).parameters:
        extra["options"] = dict(options or {})
    runtime: Runtime = module.load(experiment, checkpoint, device, **extra)
    return runtime


__all__ = ["AgentKind", "RequestError", "Runtime", "RuntimeLoadError", "load_runtime",
           "loader_module", "warm_loader"]
