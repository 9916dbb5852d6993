"""Evaluation scores for imported checkpoints, from the user's own CSV log.

The CSV needs a step column (``step``, ``steps``, ``timestep``, ``timesteps``,
``global_step`` or ``total_steps``) and a score column: the import's option
``score_column`` when given, else ``evaluation_score``, ``eval_score``, ``score``,
``mean_reward``, ``return`` or ``reward``, else the one other numeric column. Each checkpoint
gets the score of its step's row, or of the last row before it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STEP_COLUMNS = ("step", "steps", "timestep", "timesteps", "global_step", "total_steps")
SCORE_COLUMNS = ("evaluation_score", "eval_score", "score", "mean_reward", "return", "reward")
MAX_BYTES = 64 * 1024 * 1024


class ScoresError(ValueError):
    """A scores file that cannot be read; the message says what to pass."""


def _number(text: str | None) -> float | None:
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_scores(path: Path, steps: list[int],  # noqa: PLR0912 - one check per mistake
                options: Mapping[str, Any] | None = None) -> tuple[dict[int, float], str]:
    """``({checkpoint step: score}, "where the scores came from")``."""
    if path.is_dir():
        raise ScoresError(f"scores {path} is a folder; give a CSV file with a step column and "
                          "a score column (TensorBoard log folders are not read yet).")
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
    wanted = (options or {}).get("score_column")
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
    scores: dict[int, float] = {}
    for step in steps:
        earlier = [v for s, v in table if s <= step]
        if earlier:
            scores[step] = earlier[-1]
    return scores, f"{path.name}, column {score_col!r} (the row at or before each step)"


__all__ = ["ScoresError", "read_scores"]
