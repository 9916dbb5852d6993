"""Steps read from checkpoint file names, for every framework module's ``detect``.

The conventions the import understands: AgileRL's training helpers
(``<checkpoint_path>_<member>_<steps>.pt``), the workbench's own ``step_<N>``, Hugging Face
Trainer's ``checkpoint-<N>`` folders, and a trailing ``_<N>`` / ``-<N>`` / ``<N>_steps``.
"""

from __future__ import annotations

import re

_AGILERL = re.compile(r"^(?P<prefix>.+)_(?P<member>\d+)_(?P<steps>\d+)\.pt$")
_PATTERNS = (
    re.compile(r"^step_(?P<steps>\d+)(\.[A-Za-z0-9]+)?$"),
    re.compile(r"^checkpoint-(?P<steps>\d+)$"),
    re.compile(r"^.*?[_-](?P<steps>\d+)_steps(\.[A-Za-z0-9]+)?$"),
)
MAX_STEP = 2**63 - 1


def agilerl_name(name: str) -> tuple[str, int, int] | None:
    """``(prefix, member, steps)`` of an AgileRL training-helper file name, else ``None``."""
    match = _AGILERL.match(name)
    if not match or int(match["steps"]) > MAX_STEP:
        return None
    return match["prefix"], int(match["member"]), int(match["steps"])


def step_from_name(name: str) -> int | None:
    """The training step a file or folder name records, or ``None`` when it records none."""
    found = agilerl_name(name)
    if found is not None:
        return found[2]
    for pattern in _PATTERNS:
        match = pattern.match(name)
        if match and int(match["steps"]) <= MAX_STEP:
            return int(match["steps"])
    return None


__all__ = ["agilerl_name", "step_from_name"]
