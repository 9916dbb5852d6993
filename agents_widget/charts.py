"""Small score-vs-step line charts for the wizard, rendered to PNG bytes.

Uses matplotlib's object API with the Agg canvas (no pyplot), so nothing is displayed as a
side effect, no global figure state is touched, and rendering is safe off the main thread.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from .client import MetricPoint

COLOURS = {"training_score": "#1f77b4", "evaluation_score": "#2ca02c"}
TITLES = {"training_score": "Training score", "evaluation_score": "Evaluation score"}


def has_series(metrics: Sequence[MetricPoint], field: str) -> bool:
    """Whether any metric row measured ``field``."""
    return any(getattr(m, field) is not None for m in metrics)


def score_chart(metrics: Sequence[MetricPoint], field: str, *, chosen_step: int | None = None,
                width_in: float = 4.2, height_in: float = 2.4) -> bytes:
    """A PNG of ``field`` against step; a dashed line marks ``chosen_step`` when given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(m.step, getattr(m, field)) for m in metrics if getattr(m, field) is not None]
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.5,
                color=COLOURS.get(field, "#444"))
    if chosen_step is not None:
        ax.axvline(chosen_step, color="#d62728", linestyle="--", linewidth=1)
    ax.set_title(TITLES.get(field, field), fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
