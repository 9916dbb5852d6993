"""The import's registry of framework modules: which module answers for which files.

Each name below is a module in this package exposing ``FRAMEWORK``, ``detect(path)`` and
``describe(detected, hints)`` (see :mod:`server_extension.serving.runtimes.detection`). The
import asks them in this order and the first that claims a path wins, so a module for a
narrower format goes before a broader one. A new framework is one line here (and its loader
one line in ``LOADERS`` of ``runtimes/__init__.py``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from server_extension.serving.runtimes.detection import Detected

# Module names under server_extension.serving.runtimes, asked in this order.
FRAMEWORK_MODULES: tuple[str, ...] = (
    "agilerl_detect",   # AgileRL save_checkpoint files (single, multi-agent, recurrent)
    "llm_detect",       # Hugging Face save_pretrained folders and PEFT LoRA adapters
    "sb3",              # Stable-Baselines3 / sb3-contrib zips, CheckpointCallback folders
    "torchscript",      # torch.jit.save files
    "torch_export",     # torch.export .pt2 programs
    "onnx_model",       # .onnx models
    "torch_module",     # any other torch.save file: a whole nn.Module or a state dict
)


def framework_modules() -> list[ModuleType]:
    """The framework modules, imported (each is cheap: no torch at import)."""
    return [importlib.import_module(f"{__package__}.{name}") for name in FRAMEWORK_MODULES]


def known_frameworks() -> list[str]:
    """The ``framework`` values an import can produce, for error messages."""
    return sorted({str(module.FRAMEWORK) for module in framework_modules()})


def module_for(framework: str) -> ModuleType:
    """The framework module whose ``FRAMEWORK`` is ``framework`` (exact, lowercase)."""
    for module in framework_modules():
        if framework == module.FRAMEWORK:
            return module
    lowered = [m for m in framework_modules() if str(m.FRAMEWORK).lower() == framework.lower()]
    hint = (f" Framework names are lowercase: use {lowered[0].FRAMEWORK!r}." if lowered
            else "")
    raise LookupError(f"Unknown framework {framework!r}; the accepted ones are "
                      f"{', '.join(known_frameworks())}.{hint}")


def detect(path: Path) -> Detected | None:
    """The first framework module's claim on ``path`` (a file or a folder), or ``None`` when
    no module recognises it."""
    for module in framework_modules():
        found: Detected | None = module.detect(path)
        if found is not None:
            return found
    return None


__all__ = ["FRAMEWORK_MODULES", "detect", "framework_modules", "known_frameworks", "module_for"]
