"""Marks for experiments still being trained, read by the store's listing and the panel.

A mark is ``<root>/experiments/.training/<name>.json``, outside the experiment's own folder
because a trainer replaces that folder when it starts. It holds the state (``queued``,
``training`` or ``failed``), when that began, and the pid of the process that owns the
training; a mark whose owner is gone reads as ``interrupted``, so a crashed first run never
shows an experiment as training for ever. Example::

    mark(root, "spread-maddpg", "queued")
    mark(root, "spread-maddpg", "training")
    ...                               # train
    clear(root, "spread-maddpg")      # trained: no mark

Each write replaces the file atomically; readers never see half a mark.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from workbench_core import regular_files

MARKS_DIR = ".training"
MAX_MARK_BYTES = 64 * 1024  # a mark holds four short fields
State = Literal["queued", "training", "failed"]


def _path(root: Path | str, name: str) -> Path:
    return Path(root).expanduser() / "experiments" / MARKS_DIR / f"{name}.json"


def mark(root: Path | str, name: str, state: State, *, error: str = "",
         owner: int | None = None) -> None:
    """Record that experiment ``name`` is ``state``, owned by ``owner`` (default: this pid)."""
    path = _path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"state": state, "since": time.time(), "pid": owner or os.getpid(), "error": error}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)


def clear(root: Path | str, name: str) -> None:
    """Experiment ``name`` is trained (or abandoned): drop its mark."""
    _path(root, name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read(root: Path | str, name: str) -> dict[str, Any] | None:
    """The mark of ``name`` (``None`` when it has none); a dead owner reads ``interrupted``."""
    path = _path(root, name)
    try:
        # Written by the trainer, never a link; a FIFO or device here must not stall a listing.
        body = json.loads(regular_files.read_capped(path, MAX_MARK_BYTES, follow_links=False))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("state") not in ("queued", "training", "failed"):
        return None
    if body["state"] != "failed" and not _alive(int(body.get("pid") or 0)):
        body["state"] = "interrupted"
    return {"state": str(body["state"]), "since": float(body.get("since") or 0.0),
            "error": str(body.get("error") or "")}
