"""Small data sets the demo models train on (see ``README.md`` in this folder for provenance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent
CHAT_DATA = DATA_DIR / "country_facts.jsonl"
CHAT_DATASET_NAME = "country_facts"
IRIS_CSV = DATA_DIR / "iris.csv"
IRIS_DATASET_NAME = "iris.csv"


def load_chat_rows(split: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``country_facts.jsonl`` (all, or those whose ``split`` is ``"train"``/``"eval"``)."""
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be None, 'train' or 'eval', not {split!r}.")
    if not CHAT_DATA.exists():
        raise FileNotFoundError(
            f"{CHAT_DATA} is missing; regenerate it with "
            "`python -m server_extension.demos.data.make_chat_data`."
        )
    rows = [json.loads(line) for line in CHAT_DATA.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if split is None or r["split"] == split]
