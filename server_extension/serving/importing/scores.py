"""Evaluation scores for imported checkpoints, from the user's own CSV log.

The CSV needs a step column (``step``, ``steps``, ``timestep``, ``timesteps``,
``global_step`` or ``total_steps``) and a score column: the import's option
``score_column`` when given, else ``evaluation_score``, ``eval_score``, ``score``,
``mean_reward``, ``return`` or ``reward``, else the one other numeric column. Each checkpoint
gets the score of its step's row, or of the last row before it.

A folder (or an ``events.out.tfevents.*`` file) is read as TensorBoard event files: the
import's ``scores_tag`` when given, else the first of :data:`TENSORBOARD_TAGS` the run logged
(SB3's ``eval/mean_reward``, then ``rollout/ep_rew_mean``), each value at its step. Event
files are protocol buffers, not pickles: reading them in the server runs no one's code.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STEP_COLUMNS = ("step", "steps", "timestep", "timesteps", "global_step", "total_steps")
SCORE_COLUMNS = ("evaluation_score", "eval_score", "score", "mean_reward", "return", "reward")
MAX_BYTES = 64 * 1024 * 1024
TENSORBOARD_TAGS = ("eval/mean_reward", "evaluation_score", "eval/score", "eval/return",
                    "rollout/ep_rew_mean", "train/episode_reward", "episode_reward")
EVENT_PREFIX = "events.out.tfevents."
MAX_EVENT_DIRS = 1000


class ScoresError(ValueError):
    """A scores file that cannot be read; the message says what to pass."""


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_scores(path: Path, steps: list[int],
                options: Mapping[str, Any] | None = None, *, tag: str | None = None
                ) -> tuple[dict[int, float], str]:
    """``({checkpoint step: score}, "where the scores came from")``; ``tag`` names the CSV
    column or TensorBoard tag (else the usual names are tried)."""
    if path.is_dir() or path.name.startswith(EVENT_PREFIX):
        return read_tensorboard(path, steps, tag=tag)
    if not path.is_file():
        raise ScoresError(f"scores file {path} does not exist.")
    if path.stat().st_size > MAX_BYTES:
        raise ScoresError(f"scores file {path} is over {MAX_BYTES // 2**20} MiB.")
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ScoresError(f"scores file {path} is not a readable CSV file: {exc}") from exc
    columns = list(rows[0].keys()) if rows else []
    lowered = {c.strip().lower(): c for c in columns if c}
    step_col = next((lowered[c] for c in STEP_COLUMNS if c in lowered), None)
    if step_col is None:
        raise ScoresError(f"scores file {path} has no step column (one of "
                          f"{', '.join(STEP_COLUMNS)}); its columns are {columns}.")
    wanted = tag or (options or {}).get("score_column")
    if wanted:
        if wanted not in columns:
            raise ScoresError(f"score_column {wanted!r} is not a column of {path}: {columns}.")
        score_col = str(wanted)
    else:
        named = next((lowered[c] for c in SCORE_COLUMNS if c in lowered), None)
        if named is not None:
            score_col = named
        else:
            numeric = [c for c in columns if c != step_col
                       and any(_number(r.get(c)) is not None for r in rows)]
            if len(numeric) != 1:
                raise ScoresError(f"scores file {path}: which column is the evaluation score? "
                                  f"Columns: {columns}. Name it evaluation_score, or pass the "
                                  "option score_column.")
            score_col = numeric[0]
    table = sorted((int(s), v) for r in rows
                   if (s := _number(r.get(step_col))) is not None and s >= 0
                   and (v := _number(r.get(score_col))) is not None)
    if not table:
        raise ScoresError(f"scores file {path} has no rows with a number in both "
                          f"{step_col!r} and {score_col!r}.")
    return (_at_steps(table, steps),
            f"{path.name}, column {score_col!r} (the row at or before each step)")


def _at_steps(table: list[tuple[int, float]], steps: list[int]) -> dict[int, float]:
    """Each step's value: the one logged at that step, else the last one before it."""
    scores: dict[int, float] = {}
    for step in steps:
        earlier = [v for s, v in table if s <= step]
        if earlier:
            scores[step] = earlier[-1]
    return scores


def _event_dirs(path: Path) -> list[Path]:
    """The folders under ``path`` holding event files (a run each), nearest first."""
    if path.is_file():
        return [path.parent]
    found = []
    for seen, (dirpath, _dirs, files) in enumerate(os.walk(path)):
        if seen >= MAX_EVENT_DIRS:
            break
        if any(f.startswith(EVENT_PREFIX) for f in files):
            found.append(Path(dirpath))
    return sorted(found)


def read_tensorboard(path: Path, steps: list[int], *, tag: str | None = None
                     ) -> tuple[dict[int, float], str]:
    """Scores from the TensorBoard event files of one run under ``path``."""
    if not path.exists():
        raise ScoresError(f"scores {path} does not exist.")
    runs = _event_dirs(path)
    if not runs:
        raise ScoresError(f"scores folder {path} holds no TensorBoard event files "
                          f"({EVENT_PREFIX}*); give the run's log folder, or a CSV file.")
    if len(runs) > 1:
        names = ", ".join(str(r.relative_to(path)) for r in runs[:10])
        raise ScoresError(f"scores folder {path} holds {len(runs)} TensorBoard runs ({names}); "
                          "give the folder of the run these checkpoints came from.")
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ScoresError("reading TensorBoard logs needs the tensorboard package "
                          "(pip install tensorboard).") from exc
    source = str(path) if path.is_file() else str(runs[0])
    accumulator = event_accumulator.EventAccumulator(
        source, size_guidance={event_accumulator.SCALARS: 0})
    try:
        accumulator.Reload()
    except Exception as exc:
        raise ScoresError(f"the TensorBoard event files in {source} cannot be read: "
                          f"{exc}") from exc
    tags = sorted(accumulator.Tags().get("scalars") or [])
    if tag:
        if tag not in tags:
            raise ScoresError(f"scores_tag {tag!r} is not logged in {source}; its scalar tags "
                              f"are {tags or 'none'}.")
        chosen = tag
    else:
        found = next((t for t in TENSORBOARD_TAGS if t in tags), None)
        if found is None:
            raise ScoresError(f"which TensorBoard tag in {source} is the evaluation score? "
                              f"None of {list(TENSORBOARD_TAGS)} is logged; its scalar tags "
                              f"are {tags or 'none'}. Pass scores_tag (--scores-tag).")
        chosen = found
    table = sorted((int(e.step), float(e.value)) for e in accumulator.Scalars(chosen)
                   if math.isfinite(e.value))
    if not table:
        raise ScoresError(f"TensorBoard tag {chosen!r} in {source} has no finite values.")
    where = Path(source).name if Path(source) != path else path.name
    return (_at_steps(table, steps),
            f"TensorBoard {where}, tag {chosen!r} (the value at or before each step)")


__all__ = ["TENSORBOARD_TAGS", "ScoresError", "read_scores", "read_tensorboard"]
