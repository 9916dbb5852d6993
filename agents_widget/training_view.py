"""One line under the panel's top bar: the experiments still training, and how far they are.

The experiments listing carries a ``training`` mark while an experiment is queued or being
trained (the main job trains the demo in the background, see
:mod:`server_extension.demos.plan`). An experiment appears in New Agent as soon as it has a
checkpoint; this line says which ones are still on their way. Example::

    line.value = training_html(state.experiments)   # "" when nothing is training

Imported experiments the workbench is still scoring (``evaluation`` in the listing) get a
line of their own: "evaluating k/n" with a progress bar.
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
    lines = []
    if items:
        lines.append("<div class='awb-hint awb-training'>Still training in the background: "
                     + " · ".join(items) + "</div>")
    evaluating = evaluation_html(experiments)
    if evaluating:
        lines.append(evaluating)
    return "".join(lines)


def evaluation_html(experiments: Iterable[ExperimentInfo]) -> str:
    """The "evaluating k/n" line for imported experiments still being scored, or ``""``."""
    items = []
    for exp in experiments:
        plan = exp.evaluation
        if not plan or plan.get("state") == "done":
            continue
        done, total = int(plan.get("done") or 0), int(plan.get("total") or 0)
        failed = plan.get("failed") or {}
        words = f"evaluating {done}/{total}"
        if failed:
            words += f", {len(failed)} failed"
        tip = html.escape(f"{plan.get('episodes')} seeded episodes per checkpoint, env seeds "
                          f"from {plan.get('seed')}; Best picks the best score so far",
                          quote=True)
        items.append(f"<span class='awb-evaluating-item' title='{tip}'>"
                     f"<b>{html.escape(exp.name)}</b> ({html.escape(words)}) "
                     f"<progress max='{total}' value='{done}'></progress></span>")
    if not items:
        return ""
    return ("<div class='awb-hint awb-evaluating'>Scoring imported checkpoints in the "
            "background: " + " · ".join(items) + "</div>")
