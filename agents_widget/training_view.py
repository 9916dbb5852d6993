"""One line under the panel's top bar: the experiments still training, and how far they are.

The experiments listing carries a ``training`` mark while an experiment is queued or being
trained (the main job trains the demo in the background, see
:mod:`server_extension.demos.plan`). An experiment appears in New Agent as soon as it has a
checkpoint; this line says which ones are still on their way. Example::

    line.value = training_html(state.experiments)   # "" when nothing is training
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from .client import ExperimentInfo

_STATES = {"training": "training", "queued": "queued", "failed": "failed",
           "interrupted": "interrupted (the next run trains it again)"}


def training_html(experiments: Iterable[ExperimentInfo]) -> str:
    """The "still training" line for ``experiments``, or ``""`` when none is marked."""
    items = []
    for exp in experiments:
        mark = exp.training
        if not mark:
            continue
        state = str(mark.get("state") or "training")
        words = _STATES.get(state, state)
        if exp.checkpoints and state == "training":
            count = len(exp.checkpoints)
            words += f", {count} checkpoint{'s' if count != 1 else ''} so far"
        tip = html.escape(str(mark.get("error") or ""), quote=True)
        items.append(f"<span class='awb-training-item awb-training-{html.escape(state)}' "
                     f"title='{tip}'><b>{html.escape(exp.name)}</b> ({html.escape(words)})</span>")
    if not items:
        return ""
    return ("<div class='awb-hint awb-training'>Still training in the background: "
            + " · ".join(items) + "</div>")
