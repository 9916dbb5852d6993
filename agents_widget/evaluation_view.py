"""The *Evaluate* section of a Deployed Classic agent's expanded row.

Press **Evaluate**: seeded episodes are played through the agent's live endpoint (by
:func:`agents_widget.evaluation.evaluate`, on a thread of this kernel) and the view shows
the distribution of their scores beside the evaluation score the experiment recorded in
training for the served checkpoint, so an agent that plays worse once served is seen at
once. The seeds start at training's own evaluation seeds, so the first episodes replay
exactly what the recorded score averaged. Turn-based agents also get **Head to head**
against another Deployed agent of the same game. Example::

    section = evaluation_section(agent, experiment, client)   # None for other agents
    view = section.children[0]; view.run(); view.wait(); view.summary.value
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .client import AgentInfo, ExperimentInfo, WorkbenchClient

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_EPISODES = 20
CHART_W, CHART_H, PAD = 440, 120, 28


def evaluation_section(agent: AgentInfo, experiment: ExperimentInfo | None,
                       client: WorkbenchClient | None) -> widgets.Accordion | None:
    """A closed "Evaluate" accordion for a Classic agent's details (``None`` otherwise)."""
    if agent.tab != "classic" or experiment is None or client is None:
        return None
    view = EvaluationView(agent.name, experiment, client)
    return widgets.Accordion([view], titles=("Evaluate",), selected_index=None)


class EvaluationView(widgets.VBox):
    """Episodes and first seed, *Evaluate*, the distribution and the comparison."""

    def __init__(self, agent: str, experiment: ExperimentInfo, client: WorkbenchClient) -> None:
        from .evaluation import training_protocol

        self.agent = agent
        self.experiment = experiment
        self.client = client
        self.protocol = training_protocol(experiment)
        self.results: pd.DataFrame | None = None
        self.duel: pd.DataFrame | None = None
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.turn_based = _turn_based(experiment)

        self.episodes = widgets.BoundedIntText(value=DEFAULT_EPISODES, min=1, max=1000,
                                               description="Episodes",
                                               layout=widgets.Layout(width="170px"))
        self.seed = widgets.BoundedIntText(value=self.protocol["seed"], min=0, max=2**31 - 1,
                                           description="First seed",
                                           layout=widgets.Layout(width="190px"))
        self.run_button = widgets.Button(description="Evaluate", icon="play",
                                         button_style="primary",
                                         tooltip="Play seeded episodes through the live endpoint")
        self.status = widgets.HTML()
        self.chart = widgets.HTML()
        self.summary = widgets.HTML()
        self.run_button.on_click(lambda _b: self.run())
        rows: list[widgets.Widget] = [
            widgets.HBox([self.episodes, self.seed, self.run_button]),
            self.status, self.chart, self.summary,
        ]
        self.opponent = widgets.Text(placeholder="another Deployed agent's name",
                                     description="Opponent",
                                     layout=widgets.Layout(width="320px"))
        self.duel_button = widgets.Button(description="Head to head", icon="users",
                                          tooltip="Play games through both endpoints, "
                                                  "sides alternated")
        self.duel_line = widgets.HTML()
        self.duel_button.on_click(lambda _b: self.run_head_to_head())
        if self.turn_based:
            rows += [widgets.HBox([self.opponent, self.duel_button]), self.duel_line]
        super().__init__(rows)

    @property
    def running(self) -> bool:
        """Whether an evaluation or a head to head is being played."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current run is done; ``True`` when nothing is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _start(self, target: Any, message: str) -> threading.Thread | None:
        with self._lock:
            if self.running:
                return None
            self.run_button.disabled = self.duel_button.disabled = True
            self.status.value = f"<span class='awb-hint'>{html.escape(message)}</span>"
            self._thread = threading.Thread(target=target, daemon=True,
                                            name=f"evaluate-{self.agent}")
            self._thread.start()
            return self._thread

    def run(self) -> threading.Thread | None:
        """Start the evaluation on a thread and return at once (``None`` if one is running)."""
        episodes, seed = int(self.episodes.value), int(self.seed.value)
        return self._start(lambda: self._evaluate(episodes, seed),
                           f"Playing {episodes} episodes through the live endpoint…")

    def run_head_to_head(self, games: int = 10) -> threading.Thread | None:
        """Start ``games`` games against the opponent box's agent (sides alternated)."""
        rival = self.opponent.value.strip()
        if not rival:
            self.duel_line.value = ("<span class='awb-error'>Type the name of another "
                                    "Deployed tic-tac-toe agent first.</span>")
            return None
        return self._start(lambda: self._head_to_head(rival, games),
                           f"Playing {games} games against {rival}…")

    def _evaluate(self, episodes: int, seed: int) -> None:
        from .evaluation import evaluate, recorded_score

        try:
            results = evaluate(self.agent, episodes, seed, client=self.client)
            step = results.attrs.get("checkpoint_step")
            recorded = recorded_score(self.experiment, step)
        except Exception as exc:  # noqa: BLE001 - shown in the view instead
            self._failed(exc)
        else:
            self.results, self.last_error = results, None
            self.chart.value = _strip_svg(results["score"].tolist(), recorded)
            self.summary.value = _summary_html(results, recorded, step, self.protocol)
            self.status.value = ""
        finally:
            self.run_button.disabled = self.duel_button.disabled = False

    def _head_to_head(self, rival: str, games: int) -> None:
        from .evaluation import head_to_head, head_to_head_line

        try:
            duel = head_to_head(self.agent, rival, games, client=self.client)
        except Exception as exc:  # noqa: BLE001 - shown in the view instead
            self._failed(exc)
        else:
            self.duel, self.last_error = duel, None
            self.duel_line.value = html.escape(head_to_head_line(duel, self.agent, rival))
            self.status.value = ""
        finally:
            self.run_button.disabled = self.duel_button.disabled = False

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.status.value = f"<div class='awb-error'>{html.escape(self.last_error)}</div>"


def _turn_based(experiment: ExperimentInfo) -> bool:
    from workbench_core.environments import env_spec

    try:
        spec = env_spec(experiment.environment or experiment.source, experiment.extra)
    except ValueError:
        return False
    return spec.get("kind") == "turn_based"


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 1e4 else f"{value:,.0f}"


def _summary_html(results: pd.DataFrame, recorded: float | None, step: Any,
                  protocol: dict[str, int]) -> str:
    from .evaluation import summarize

    row = summarize(results, "agent", "score").iloc[0]
    seeds = results["seed"]
    served = (f"Served: mean score <b class='awb-served'>{_fmt(row['mean'])}</b> "
              f"(std {_fmt(row['std'])}, 95% CI {_fmt(row['ci_low'])} to "
              f"{_fmt(row['ci_high'])}) over {len(results)} episodes, seeds {seeds.min()} to "
              f"{seeds.max()}.")
    if "outcome" in results:
        counts = results["outcome"].value_counts()
        served += (f" Won {int(counts.get('win', 0))}, drew {int(counts.get('draw', 0))}, "
                   f"lost {int(counts.get('loss', 0))} against random moves (both sides).")
    if recorded is None:
        return served + "<br>Training recorded no evaluation score for this checkpoint."
    lines = [served, f"Training recorded <b class='awb-recorded'>{_fmt(recorded)}</b> at step "
                     f"{step} (mean of seeds {protocol['seed']} to "
                     f"{protocol['seed'] + protocol['episodes'] - 1})."]
    replay = results[(results["seed"] >= protocol["seed"])
                     & (results["seed"] < protocol["seed"] + protocol["episodes"])]
    if replay["seed"].nunique() == protocol["episodes"]:
        again = float(replay["score"].mean())
        same = abs(again - recorded) <= 1e-6 * max(1.0, abs(recorded))
        verdict = ("the same as recorded" if same else
                   "<span class='awb-error'>different from what training recorded</span>")
        lines.append(f"On those seeds the endpoint scored {_fmt(again)}: {verdict}.")
    elif row["ci_high"] < recorded:
        lines.append("<span class='awb-error'>The served agent scores below what training "
                     "recorded.</span>")
    return "<br>".join(lines)


def _strip_svg(scores: list[float], recorded: float | None) -> str:
    """Each episode's score as a dot on one axis, the mean as a bar, the recorded score dashed."""
    values = [*scores, *([] if recorded is None else [recorded])]
    smallest, largest = min(values), max(values)
    span = (largest - smallest) or 1.0
    low, high = smallest - 0.05 * span, largest + 0.05 * span

    def x(value: float) -> float:
        return PAD + (value - low) / (high - low) * (CHART_W - 2 * PAD)

    mid = CHART_H / 2
    parts = [f"<line x1='{PAD}' y1='{mid + 22}' x2='{CHART_W - PAD}' y2='{mid + 22}' "
             "stroke='#999'/>",
             f"<text x='{x(smallest):.1f}' y='{mid + 38}' font-size='11' "
             f"text-anchor='middle'>{_fmt(smallest)}</text>",
             f"<text x='{x(largest):.1f}' y='{mid + 38}' font-size='11' "
             f"text-anchor='middle'>{_fmt(largest)}</text>"]
    counts: dict[float, int] = {}
    for score in scores:
        stacked = counts.get(round(score, 6), 0)
        counts[round(score, 6)] = stacked + 1
        parts.append(f"<circle cx='{x(score):.1f}' cy='{mid + 14 - 5 * min(stacked, 8):.1f}' "
                     "r='4' fill='#1f77b4' fill-opacity='0.6'/>")
    mean = sum(scores) / len(scores)
    parts.append(f"<line x1='{x(mean):.1f}' y1='{mid - 30}' x2='{x(mean):.1f}' "
                 f"y2='{mid + 22}' stroke='#1f77b4' stroke-width='2'/>"
                 f"<text x='{x(mean):.1f}' y='{mid - 34}' font-size='11' fill='#1f77b4' "
                 "text-anchor='middle'>served mean</text>")
    if recorded is not None:
        parts.append(f"<line x1='{x(recorded):.1f}' y1='{mid - 18}' x2='{x(recorded):.1f}' "
                     f"y2='{mid + 22}' stroke='#2ca02c' stroke-width='2' "
                     "stroke-dasharray='4 3'/>"
                     f"<text x='{x(recorded):.1f}' y='{mid + 52}' font-size='11' "
                     "fill='#2ca02c' text-anchor='middle'>recorded in training</text>")
    return (f"<svg class='awb-eval-chart' width='{CHART_W}' height='{CHART_H + 12}' "
            f"xmlns='http://www.w3.org/2000/svg'>{''.join(parts)}</svg>")
