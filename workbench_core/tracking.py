"""Log an experiment from any training loop, so the workbench can list and serve it.

A thin layer over :class:`workbench_core.store.ExperimentWriter`: it picks the workspace
root for you and saves checkpoints atomically, so a server reading the same folder never
sees half a file. Notebooks import it as :mod:`agents_widget.tracking`, whose docstring has
an example.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench_core.store import (
    ExperimentStore,
    ExperimentWriter,
    ProjectType,
    StoreError,
)

__all__ = [
    "ExperimentWriter",
    "StoreError",
    "resume_experiment",
    "save_checkpoint",
    "start_experiment",
    "workspace_root",
]


def workspace_root(root: Path | str | None = None) -> Path:
    """``root`` if given (``~`` expanded), else ``$AGENTS_WORKBENCH_ROOT``, else the workspace
    of the running workbench server, else ``~/agents-workbench``."""
    if root is not None:
        return Path(root).expanduser()
    from workbench_core.discovery import default_workspace  # jupyter_core only when needed

    return default_workspace()[0]


def start_experiment(
    name: str,
    *,
    project_type: ProjectType,
    algorithm: str,
    framework: str,
    environment: str | None = None,
    root: Path | str | None = None,
    overwrite: bool = False,
    **fields: Any,
) -> ExperimentWriter:
    """Create ``<root>/experiments/<name>`` and return its writer.

    ``framework`` picks the loader that will serve the checkpoints (``"agilerl"``,
    ``"torch"``, ``"transformers"``...). Further ``experiment.json`` fields (``dataset``,
    ``multi_agent``, ``recurrent``, ``base_model``, ``extra``) pass through ``fields``.
    An existing experiment of that name is an error unless ``overwrite=True``, which
    deletes it first. Raises :class:`StoreError` with the fix for bad names or fields.
    """
    try:
        return ExperimentWriter.create(
            workspace_root(root), name, project_type=project_type, algorithm=algorithm,
            framework=framework, environment=environment, overwrite=overwrite, **fields,
        )
    except TypeError as exc:
        # An unknown keyword reaches the ExperimentInfo dataclass; say which ones exist.
        raise StoreError(
            f"start_experiment got an unknown field ({exc}); experiment fields are dataset, "
            "multi_agent, recurrent, base_model and extra (a dict for anything else)."
        ) from exc


def resume_experiment(name: str, *, root: Path | str | None = None) -> ExperimentWriter:
    """A writer that appends to an existing experiment (after a restart, say).

    Raises :class:`StoreError` naming the experiments that exist when ``name`` is unknown.
    """
    experiment = ExperimentStore(workspace_root(root)).get(name)
    return ExperimentWriter(experiment.folder, experiment.info)


def save_checkpoint(
    writer: ExperimentWriter,
    step: int,
    save: Callable[[str], Any],
    *,
    suffix: str = ".pt",
    training_score: float | None = None,
    evaluation_score: float | None = None,
) -> Path:
    """Save the checkpoint for ``step`` with ``save(path)``, then log its scores.

    ``save`` is any function that writes to the path it is given, for example
    ``agent.save_checkpoint`` (AgileRL) or ``lambda p: torch.save(model.state_dict(), p)``;
    use ``suffix=""`` when it writes a folder (``model.save_pretrained``). It writes under a
    hidden temporary name that is renamed into place once complete, so readers see either
    no checkpoint or the whole one. Returns the checkpoint's final path.
    """
    if isinstance(step, bool) or int(step) < 0:
        raise StoreError(f"step must be a non-negative whole number, not {step!r}.")
    final = writer.checkpoint_path(int(step), suffix)
    # The hidden name does not match step_<N>, so the store never lists it half-written.
    temp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    _remove(temp)
    try:
        save(str(temp))
        if not temp.exists():
            raise StoreError(
                f"The save function wrote nothing at the path it was given ({temp}); it must "
                "write the checkpoint to exactly that path."
            )
        if final.exists() and (final.is_dir() or temp.is_dir()):
            # rename() swaps files atomically but cannot replace a folder or put one over a
            # file; an existing checkpoint for this step is removed first in that case.
            _remove(final)
        os.replace(temp, final)
    except BaseException:
        _remove(temp)
        raise
    writer.log(int(step), training_score=training_score, evaluation_score=evaluation_score)
    return final


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
