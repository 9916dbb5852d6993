"""What the wizard's score charts share: the colour and title of each score, and whether an
experiment logged it at all. The charts themselves are :mod:`agents_widget.score_chart`."""

from __future__ import annotations

from collections.abc import Sequence

from .client import MetricPoint

COLOURS = {"training_score": "#1f77b4", "evaluation_score": "#2ca02c"}
TITLES = {"training_score": "Training score", "evaluation_score": "Evaluation score"}


def has_series(metrics: Sequence[MetricPoint], field: str) -> bool:
    """Whether any metric row measured ``field``."""
    return any(getattr(m, field) is not None for m in metrics)
