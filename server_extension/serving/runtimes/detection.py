"""What an import knows about a user's files: the shapes every framework module shares.

The import (``agents-workbench import``, ``POST agents/api/experiments``, the panel's Import
dialog, ``agents_widget.import_checkpoint``) asks each framework module in turn, as MLflow's
flavors are asked: one module per framework under ``serving/runtimes/``, each exposing

- ``FRAMEWORK``: the ``framework`` value it writes into ``experiment.json``;
- ``detect(path) -> Detected | None``: cheap, run in the server or CLI process. It may read
  file names, zip member names, magic bytes and JSON, and must never unpickle or import the
  file's code (a checkpoint is a pickle: loading one runs code);
- ``describe(detected, hints) -> Description``: run only inside a worker process. It may load
  the files and reports what they say (algorithm, spaces, agent ids, steps);
- ``load(experiment, checkpoint, device) -> Runtime``: the serving loader, as before.

The dataclasses here are plain data that cross the worker boundary as JSON (never pickled).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImportHints:
    """What the user said at import; ``None`` means "not given, detect it or ask"."""

    name: str | None = None
    env: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    scores: str | None = None
    link: bool | None = None
    # Episodes per checkpoint of the workbench's own evaluation when no scores are given and
    # the environment is known (None: the default; 0: do not evaluate, Best is the final).
    evaluate: int | None = None
    # Which column of a scores CSV, or which tag of TensorBoard event files, is the
    # evaluation score (None: the usual names).
    scores_tag: str | None = None
    # Framework-specific settings the file cannot tell (a module:Class and its arguments, an
    # input signature, class names, a VecNormalize statistics file...), keyed as each module
    # documents them; unknown keys are refused by the module that reads them.
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportHints:
        """The inverse of :meth:`to_json`."""
        return cls(**data)


@dataclass(frozen=True)
class Detected:
    """A framework module's cheap claim on a path: which files, at which steps."""

    framework: str
    # (step, path) per checkpoint, in step order; a single file with no step in its name is
    # step 0.
    checkpoints: list[tuple[int, str]]
    # What the names alone say (algorithm from a file name, a LoRA adapter folder, ...).
    facts: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {"framework": self.framework,
                "checkpoints": [[step, path] for step, path in self.checkpoints],
                "facts": dict(self.facts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Detected:
        """The inverse of :meth:`to_json`."""
        return cls(framework=str(data["framework"]),
                   checkpoints=[(int(s), str(p)) for s, p in data["checkpoints"]],
                   facts=dict(data.get("facts") or {}))

    @property
    def paths(self) -> list[Path]:
        """The checkpoint paths, in step order."""
        return [Path(p) for _, p in self.checkpoints]


@dataclass(frozen=True)
class Description:
    """What the files say, as a worker found by loading them; becomes ``experiment.json``."""

    framework: str
    algorithm: str
    project_type: str  # "classic" or "advanced"
    multi_agent: bool = False
    recurrent: bool = False
    agent_ids: list[str] = field(default_factory=list)
    # Spaces as text (gymnasium's repr) for people, and as JSON for checks where known.
    observation_space: str | None = None
    action_space: str | None = None
    environment: str | None = None
    dataset: str | None = None
    base_model: str | None = None
    # Goes to experiment.json's ``extra`` (env recipe, preprocessing, input signature, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    # What the user must still give, each as "field: why" (the environment of a Classic
    # agent, the base model of a LoRA adapter); an import with needs left is refused.
    needs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Description:
        """The inverse of :meth:`to_json`."""
        return cls(**data)


__all__ = ["Description", "Detected", "ImportHints"]
