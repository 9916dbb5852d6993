"""The workbench's own evaluation of an experiment's checkpoints, as a file in its folder.

An import with no scores and a known environment asks for one: ``<experiment>/evaluation.json``
holds the plan (episodes, first env seed, the steps to score) and what is done (a score per
step, a reason per step that failed). The server's background evaluator
(``server_extension/serving/importing/evaluation.py``) works through it in worker processes and
writes each score into ``metrics.csv`` as it finishes; the store's listing reports the file
(``evaluation`` in ``GET agents/api/experiments``) so the panel can show "evaluating k/n". A
server that stops mid-way leaves the file as it was; the next one resumes from the steps still
unscored. Example::

    request(folder, steps=[0, 128, 256], episodes=10, seed=1000)
    read(folder)  # {"state": "pending", "total": 3, "done": 0, ...}
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

from workbench_core import regular_files

FILE = "evaluation.json"
MAX_BYTES = 1024 * 1024  # a plan and a score per checkpoint
State = Literal["pending", "evaluating", "done"]
STATES = ("pending", "evaluating", "done")


def _write(folder: Path, body: dict[str, Any]) -> None:
    path = folder / FILE
    tmp = folder / f".{FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(body), encoding="utf-8")
    tmp.replace(path)


def request(folder: Path | str, *, steps: list[int], episodes: int, seed: int) -> dict[str, Any]:
    """Ask for ``episodes`` seeded episodes (env seeds ``seed, seed + 1, ...``) per step."""
    body: dict[str, Any] = {
        "state": "pending", "episodes": int(episodes), "seed": int(seed),
        "steps": sorted(int(s) for s in steps), "scores": {}, "failed": {},
        "since": time.time(), "updated": time.time(),
    }
    _write(Path(folder), body)
    return body


def load(folder: Path | str) -> dict[str, Any] | None:
    """The raw plan and results of ``folder`` (``None`` when it asks for no evaluation)."""
    try:
        # Written by the workbench, never a link; a FIFO here must not stall a listing.
        body = json.loads(regular_files.read_capped(Path(folder) / FILE, MAX_BYTES,
                                                    follow_links=False))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("state") not in STATES:
        return None
    return body


def save(folder: Path | str, body: dict[str, Any]) -> None:
    """Replace the file with ``body`` (its ``updated`` stamped now), atomically."""
    _write(Path(folder), {**body, "updated": time.time()})


def remaining(body: dict[str, Any]) -> list[int]:
    """The steps still to score: neither scored nor failed."""
    settled = set(body.get("scores") or {}) | set(body.get("failed") or {})
    return [s for s in body.get("steps") or [] if str(s) not in settled]


def read(folder: Path | str) -> dict[str, Any] | None:
    """What the listing shows: ``state``, ``done`` of ``total``, ``episodes``, ``seed``,
    ``failed`` ({step: reason}); ``None`` when the experiment asks for no evaluation."""
    body = load(folder)
    if body is None:
        return None
    steps = list(body.get("steps") or [])
    scores = body.get("scores") or {}
    failed = body.get("failed") or {}
    return {"state": str(body["state"]), "total": len(steps),
            "done": len(steps) - len(remaining(body)), "scored": len(scores),
            "episodes": int(body.get("episodes") or 0), "seed": int(body.get("seed") or 0),
            "failed": {str(k): str(v) for k, v in failed.items()},
            "updated": float(body.get("updated") or 0.0)}


__all__ = ["FILE", "load", "read", "remaining", "request", "save"]
