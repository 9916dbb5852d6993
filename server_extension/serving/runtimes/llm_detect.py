"""The import's Hugging Face framework module: ``save_pretrained`` folders and LoRA adapters.

``detect`` reads JSON only: a folder with ``config.json`` is a full model, one with
``adapter_config.json`` a PEFT adapter, and a folder of ``checkpoint-<N>`` sub-folders (a
Trainer's output) one checkpoint per step. ``describe`` names what it found and, for an
adapter, asks for the base model unless it is given or the adapter's own
``base_model_name_or_path`` is a folder here; it offers the local model folders that fit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from server_extension.serving.runtimes.detection import Description, Detected, ImportHints
from server_extension.serving.runtimes.file_steps import step_from_name

FRAMEWORK = "transformers"
MAX_ENTRIES = 1000
MAX_JSON = 1024 * 1024


def _json(path: Path) -> dict[str, Any] | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON:
            return None
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _kind(folder: Path) -> str | None:
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    if (folder / "config.json").is_file():
        return "model"
    return None


def detect(path: Path) -> Detected | None:
    """Claim a model or adapter folder (or a folder of ``checkpoint-<N>`` ones)."""
    path = Path(path)
    if not path.is_dir():
        return None
    kind = _kind(path)
    if kind is not None:
        checkpoints = [(step_from_name(path.name) or 0, str(path))]
    else:
        subs = []
        for seen, entry in enumerate(sorted(path.iterdir())):
            if seen >= MAX_ENTRIES:
                break
            step = step_from_name(entry.name)
            if entry.is_dir() and step is not None and _kind(entry) is not None:
                subs.append((step, str(entry)))
        if not subs:
            return None
        kind = _kind(Path(subs[0][1]))
        checkpoints = sorted(subs)
    first = Path(checkpoints[0][1])
    facts: dict[str, Any] = {"kind": kind}
    if kind == "adapter":
        config = _json(first / "adapter_config.json") or {}
        facts["adapter_base"] = config.get("base_model_name_or_path")
        facts["peft_type"] = config.get("peft_type")
    else:
        config = _json(first / "config.json") or {}
        facts["model_type"] = config.get("model_type")
    return Detected(framework=FRAMEWORK, checkpoints=checkpoints, facts=facts)


def fitting_models(adapter: Path, limit: int = 10) -> list[str]:
    """Local model folders near ``adapter`` (its parent, grandparent and their children)
    whose ``model_type`` is the one the adapter was made for, when that is known."""
    from_base = (_json(adapter / "adapter_config.json") or {}).get("base_model_name_or_path")
    found: list[str] = []
    for top in {adapter.parent, adapter.parent.parent}:
        try:
            entries = sorted(top.iterdir())[:MAX_ENTRIES]
        except OSError:
            continue
        for entry in entries:
            config = _json(entry / "config.json")
            if entry.is_dir() and config is not None and entry != adapter:
                if from_base and Path(str(from_base)).name not in (entry.name, "") and \
                        config.get("_name_or_path") not in (from_base, None):
                    continue
                found.append(str(entry))
    return sorted(set(found))[:limit]


def describe(detected: Detected, hints: ImportHints) -> Description:
    """What the folder holds; an adapter without a usable base model lists ``needs``."""
    first = detected.paths[0]
    kind = detected.facts.get("kind")
    needs: list[str] = []
    base = None
    if kind == "adapter":
        adapter_base = detected.facts.get("adapter_base")
        if hints.base_model:
            candidate = Path(hints.base_model).expanduser()
            if not (candidate / "config.json").is_file():
                needs.append(f"base_model: {candidate} is not a model folder (no config.json); "
                             "give the folder the base model was saved to.")
            base = str(candidate.resolve())
        elif adapter_base and (Path(str(adapter_base)).expanduser() / "config.json").is_file():
            base = str(Path(str(adapter_base)).expanduser().resolve())
        else:
            offers = fitting_models(first)
            offer = (f" Local model folders that may fit: {', '.join(offers)}." if offers
                     else "")
            needs.append(f"base_model: this is a LoRA adapter; its base model "
                         f"{adapter_base!r} is not a folder on this machine (and models are "
                         f"not downloaded). Pass --base-model / base_model with the base "
                         f"model's folder.{offer}")
        config = _json(first / "adapter_config.json") or {}
        algorithm = f"LoRA ({config.get('peft_type') or 'PEFT'})"
    else:
        config = _json(first / "config.json") or {}
        architectures = config.get("architectures") or []
        algorithm = str(architectures[0] if architectures else config.get("model_type") or "model")
    return Description(framework=FRAMEWORK, algorithm=algorithm, project_type="advanced",
                       base_model=base, dataset=None,
                       extra={"model_kind": kind}, needs=needs)


__all__ = ["FRAMEWORK", "describe", "detect", "fitting_models"]
