"""Change checkpoint, in a Deployed agent's expanded row: change, roll back, split traffic.

The agent keeps its endpoint and key; the server loads the new checkpoint beside the one
serving and switches when it answers (``server_extension/handlers/checkpoints.py``). This view
shows what serves now and how the last change went (a failed attempt with its reason), the
experiment's checkpoints as the New Agent wizard shows them (table and score charts; a dot
picks its checkpoint), and the actions: **Change checkpoint**, **Roll back**, **Split
traffic** with a percentage, then **Promote** or **Abort**. Calls run on the client's worker
thread; the view then follows the change until it serves or fails. Example::

    view = CheckpointChanger(agent, experiment, client)
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import ipywidgets as widgets

from .charts import COLOURS, TITLES, has_series
from .client import AgentInfo, ExperimentInfo, WorkbenchClient, WorkbenchError
from .score_chart import ScoreChart
from .state import chosen_step, format_score, ordered_checkpoints
from .viewkit import close_tree, gap

RULES = (("Best", "best"), ("Final", "final"), ("Specific", "specific"))


def describe_change(row: dict[str, Any] | None) -> str:
    """One line of HTML for the agent's latest checkpoint change (empty when none)."""
    if not row:
        return ""
    step = f"step {int(row['checkpoint_step']):,}"
    outcome = row.get("outcome")
    if outcome == "failed":
        reason = html.escape(str(row.get("error") or "unknown reason"))
        return (f"<div class='awb-error'>The change to {step} failed and the previous "
                f"checkpoint still serves: {reason}</div>")
    if outcome in ("requested", "loading"):
        return f"<span class='awb-hint'>Loading {step} beside the one serving…</span>"
    if outcome == "canary":
        return (f"<span class='awb-hint'>Split: {step} answers {row.get('percent')}% of the "
                "calls. Promote it or Abort.</span>")
    if outcome == "aborted":
        return f"<span class='awb-hint'>The split with {step} was aborted.</span>"
    when = time.strftime("%H:%M:%S", time.localtime(float(row.get("finished_at") or 0)))
    return f"<span class='awb-ok'>Serving {step} since {when}.</span>"


class CheckpointChanger(widgets.VBox):
    """The Change checkpoint section of a Deployed agent's details."""

    def __init__(self, agent: AgentInfo, experiment: ExperimentInfo,
                 client: WorkbenchClient) -> None:
        self.agent_name = agent.name
        self.experiment = experiment
        self.client = client
        self._specific: int | None = None

        self.serving = widgets.HTML()
        self.last_change = widgets.HTML()
        self.rule = widgets.ToggleButtons(options=RULES, value="best",
                                          style={"button_width": "90px"})
        self.table = widgets.RadioButtons(options=[], value=None,
                                          layout=widgets.Layout(width="max-content"))
        self.table.add_class("awb-checkpoint-table")
        self.training_chart, self.evaluation_chart = (self._chart(f) for f in (
            "training_score", "evaluation_score"))
        charts = gap(widgets.HBox([self.training_chart, self.evaluation_chart],
                                  layout=widgets.Layout(flex_flow="row wrap")), 12)
        wide = widgets.Layout(width="auto")
        self.change_button = widgets.Button(
            description="Change checkpoint", icon="exchange", button_style="primary",
            layout=wide,
            tooltip="Load the chosen checkpoint beside the one serving, then switch to it")
        self.rollback_button = widgets.Button(
            description="Roll back", icon="undo", layout=wide,
            tooltip="Go back to the checkpoint that served before this one")
        self.percent = widgets.IntSlider(value=10, min=1, max=99, description="Canary %",
                                         style={"description_width": "70px"})
        self.split_button = widgets.Button(
            description="Split traffic", icon="random", layout=wide,
            tooltip="Serve the chosen checkpoint beside this one for that share of the calls")
        self.promote_button = widgets.Button(description="Promote", icon="check",
                                             button_style="success")
        self.abort_button = widgets.Button(description="Abort", icon="times")
        self.split_box = gap(widgets.HBox([self.promote_button, self.abort_button]), 6)
        self.status = widgets.HTML()

        self.rule.observe(lambda _c: self._render_table(), "value")
        self.table.observe(self._on_pick, "value")
        self.change_button.on_click(lambda _b: self.change())
        self.rollback_button.on_click(lambda _b: self.rollback())
        self.split_button.on_click(lambda _b: self.split())
        self.promote_button.on_click(lambda _b: self.end_split("promote"))
        self.abort_button.on_click(lambda _b: self.end_split("abort"))

        super().__init__([
            self.serving, self.last_change, self.rule, self.table, charts,
            gap(widgets.HBox([self.change_button, self.rollback_button]), 6),
            gap(widgets.HBox([self.percent, self.split_button],
                             layout=widgets.Layout(align_items="center")), 6),
            self.split_box, self.status,
        ])
        gap(self, 6)
        self.add_class("awb-checkpoint-change")
        self._render_charts()
        self._render_table()
        self.show(agent)

    # -- what serves --------------------------------------------------------------------------

    def show(self, agent: AgentInfo) -> None:
        """Show the checkpoint ``agent`` serves, its last change and the actions it allows."""
        step = agent.checkpoint_step
        self.serving.value = (
            f"Serving <b>step {step:,}</b> of <code>{html.escape(agent.experiment)}</code>"
            if step is not None else "")
        self.last_change.value = describe_change(agent.split or agent.checkpoint_change)
        splitting = agent.split is not None
        busy = (agent.checkpoint_change or {}).get("outcome") in ("requested", "loading")
        self.split_box.layout.display = "" if splitting else "none"
        for button in (self.change_button, self.split_button):
            button.disabled = splitting or busy or self.chosen is None
        self.rollback_button.disabled = splitting or busy or agent.rollback_to is None
        if agent.rollback_to is not None:
            self.rollback_button.tooltip = (
                f"Go back to step {int(agent.rollback_to['checkpoint_step']):,}")

    @property
    def chosen(self) -> int | None:
        """The step the rule (or the pick in the table) chooses."""
        return chosen_step(self.experiment.checkpoints, str(self.rule.value), self._specific)

    # -- table and charts (the wizard's, for this agent's experiment) --------------------------

    def _chart(self, field: str) -> ScoreChart:
        chart = ScoreChart(TITLES[field], colour=COLOURS[field])
        chart.on_pick(self.pick)
        return chart

    def _render_charts(self) -> None:
        metrics = self.experiment.metrics
        for field, chart in (("training_score", self.training_chart),
                             ("evaluation_score", self.evaluation_chart)):
            marks = [[c.step, value] for c in self.experiment.checkpoints
                     if (value := getattr(c, field)) is not None]
            shown = has_series(metrics, field) or bool(marks)
            chart.points = [[m.step, value] for m in metrics
                            if (value := getattr(m, field)) is not None] if shown else []
            chart.marks = marks if shown else []
            chart.layout.display = "" if shown else "none"

    def _render_table(self) -> None:
        rule = str(self.rule.value)
        rows = ordered_checkpoints(self.experiment.checkpoints, rule)
        options = [(f"step {c.step:,}  ·  training {format_score(c.training_score)}  ·  "
                    f"evaluation {format_score(c.evaluation_score)}", c.step) for c in rows]
        chosen = self.chosen
        self.table.unobserve(self._on_pick, "value")
        self.table.options = options
        self.table.value = chosen if chosen in [v for _, v in options] else None
        self.table.observe(self._on_pick, "value")
        self.table.disabled = rule != "specific"
        for chart in (self.training_chart, self.evaluation_chart):
            chart.chosen = chosen
        disabled = chosen is None
        self.change_button.disabled = self.split_button.disabled = disabled

    def _on_pick(self, change: dict[str, Any]) -> None:
        if change["new"] is not None and self.rule.value == "specific":
            self._specific = int(change["new"])
            self._render_table()

    def pick(self, step: int) -> None:
        """Choose Specific and the checkpoint at ``step`` (a row, or its dot on a chart)."""
        self._specific = step
        if self.rule.value == "specific":
            self._render_table()
        else:
            self.rule.value = "specific"

    # -- actions ------------------------------------------------------------------------------

    def change(self) -> Future[AgentInfo] | None:
        """Change to the chosen checkpoint (the future holds the agent as it then stands)."""
        step = self.chosen
        if step is None:
            return None
        return self._run(f"Loading step {step:,} beside the one serving…",
                         lambda: self.client.change_checkpoint(
                             self.agent_name, step, experiment=self.experiment.name))

    def rollback(self) -> Future[AgentInfo]:
        """Go back to the checkpoint that served before."""
        return self._run("Rolling back…", lambda: self.client.rollback(self.agent_name))

    def split(self) -> Future[AgentInfo] | None:
        """Serve the chosen checkpoint as a canary for the slider's share of the calls."""
        step, percent = self.chosen, int(self.percent.value)
        if step is None:
            return None
        return self._run(f"Loading step {step:,} as a {percent}% canary…",
                         lambda: self.client.split(self.agent_name, step, percent,
                                                   experiment=self.experiment.name))

    def end_split(self, action: str) -> Future[AgentInfo]:
        """Promote the canary, or abort the split."""
        call = self.client.promote if action == "promote" else self.client.abort
        return self._run("Promoting…" if action == "promote" else "Aborting…",
                         lambda: call(self.agent_name))

    def _run(self, note: str, call: Callable[[], object]) -> Future[AgentInfo]:
        for button in (self.change_button, self.rollback_button, self.split_button,
                       self.promote_button, self.abort_button):
            button.disabled = True
        self.status.value = f"<span class='awb-hint'>{html.escape(note)}</span>"
        started = time.monotonic()

        def work() -> AgentInfo:
            try:
                call()
            except WorkbenchError as exc:
                self.status.value = f"<div class='awb-error'>{html.escape(str(exc))}</div>"
            else:
                self.status.value = (f"<span class='awb-ok'>Done in "
                                     f"{time.monotonic() - started:.1f} s.</span>")
            agent = self.client.agent(self.agent_name)
            self.show(agent)
            return agent

        return self.client.submit(work)

    def close(self) -> None:
        """Close every widget of the view."""
        close_tree(self)


def checkpoint_section(agent: AgentInfo, experiment: ExperimentInfo | None,
                       client: WorkbenchClient | None) -> CheckpointChanger | None:
    """The view for ``agent``'s expanded row, or ``None`` where it cannot change checkpoint
    (no client, or its experiment is gone)."""
    if client is None or experiment is None:
        return None
    return CheckpointChanger(agent, experiment, client)
