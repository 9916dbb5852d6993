"""Create New Agent: a two-step wizard (Details, then Checkpoint) in a ``Stack``.

The wizard only collects a :class:`CreateRequest`; the panel sends it to the server and
calls :meth:`NewAgentWizard.show_error` with the server's message (duplicate name...) or
closes the wizard when the agent was created. For a LatentPPO source experiment the Checkpoint
step also offers a Decoder: the saved Advanced Training models whose input width fits the
policy's latent, defaulting to the one it was trained with. Example::

    wizard = NewAgentWizard("classic", state.sources("classic"),
                            on_create=panel.create_agent, on_cancel=panel.close_wizard)
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from .charts import COLOURS, TITLES, has_series
from .client import CheckpointInfo, ExperimentInfo, Tab
from .score_chart import ScoreChart
from .state import (
    TAB_LABELS,
    chosen_step,
    experiment_label,
    format_score,
    ordered_checkpoints,
)
from .viewkit import close_tree, gap

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TABLE_COLUMNS = "40px 110px 150px 150px"
RULE_HELP = {
    "best": "Best: the checkpoint with the highest evaluation score.",
    "final": "Final: the checkpoint saved last (highest step).",
    "specific": "Specific: pick any checkpoint in the table, or click its dot on a chart.",
}
LATENT_FRAMEWORK = "latent_ppo"
DECODER_FRAMEWORKS = ("torch",)
AGENT_INFO = (
    "<b>What is an agent?</b><br>An agent is one checkpoint of a training run, served as an "
    "HTTP endpoint with its own API key. It starts <i>Undeployed</i>; click <b>Connect</b> on "
    "its row to load it and turn the endpoint on, and <b>Disconnect</b> to turn it off again."
)


def name_example(experiments: Sequence[ExperimentInfo]) -> str:
    """The name field's placeholder: a name made from this tab's first source experiment."""
    return f"e.g. {experiments[0].name}-agent" if experiments else "e.g. my-agent"


def score_notes(experiment: ExperimentInfo) -> list[str]:
    """What each score of ``experiment`` measures, as HTML lines under the charts.

    From what the training run recorded in experiment.json (``extra``); an LLM's training
    score is minus its loss, so it is negative, which the note says in so many words.
    """
    notes = []
    for field in ("training_score", "evaluation_score"):
        meaning = experiment.extra.get(field)
        values = [v for c in experiment.checkpoints
                  if (v := getattr(c, field)) is not None]
        values += [v for m in experiment.metrics if (v := getattr(m, field)) is not None]
        minus_loss = isinstance(meaning, str) and meaning.lower().startswith("minus")
        if not isinstance(meaning, str) and experiment.framework == "transformers" and (
                field == "training_score" and values and max(values) <= 0):
            meaning, minus_loss = "minus the training loss", True
        if not isinstance(meaning, str) or not meaning:
            continue
        line = f"<b>{TITLES[field]}</b>: {html.escape(meaning)}"
        if minus_loss and values and max(values) <= 0:
            line += ", so it is below 0: higher (closer to 0) is better"
        notes.append(line + ".")
    imported = experiment.extra.get("import")
    if isinstance(imported, Mapping):
        notes.append(_import_score_note(experiment, str(imported.get("scores") or "")))
    return notes


def _import_score_note(experiment: ExperimentInfo, source: str) -> str:
    """Where an imported run's scores came from, and what Best means until there are any."""
    scored = any(c.evaluation_score is not None for c in experiment.checkpoints)
    plan = experiment.evaluation
    if plan:
        done, total = int(plan.get("done") or 0), int(plan.get("total") or 0)
        line = f"<b>Scores</b>: {html.escape(source)}"
        if plan.get("state") != "done":
            line += (f"; evaluating, {done} of {total} checkpoints scored so far"
                     + ("" if scored else ", so <i>Best</i> is the final checkpoint until one "
                        "is"))
        failed = plan.get("failed") or {}
        if failed:
            line += "; failed (no score): " + ", ".join(
                f"step {html.escape(str(s))} ({html.escape(str(why))})"
                for s, why in sorted(failed.items(), key=lambda i: int(i[0])))
        return line + "."
    if scored:
        return f"<b>Scores</b>: imported from {html.escape(source)}."
    return ("<b>Scores</b>: none, so <i>Best</i> is the final checkpoint. Import again with "
            "scores (a CSV or a TensorBoard log folder) or an environment (the workbench then "
            "evaluates each checkpoint) to rank them.")


@dataclass(frozen=True)
class CreateRequest:
    """What the wizard collected: the body of ``POST agents/api/agents``."""

    name: str
    experiment: str
    checkpoint: str | int
    description: str = ""
    options: Mapping[str, Any] | None = None


DecoderChoice = tuple[str, int]  # (saved model's experiment, checkpoint step)


def is_latent(experiment: ExperimentInfo | None) -> bool:
    """Whether ``experiment`` is a LatentPPO policy (which needs a decoder)."""
    return experiment is not None and experiment.framework == LATENT_FRAMEWORK


def training_decoder(policy: ExperimentInfo) -> DecoderChoice | None:
    """The decoder ``policy`` was trained with, as recorded in its experiment.json."""
    recorded = policy.extra.get("decoder")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("step"), int):
        return str(recorded.get("experiment")), int(recorded["step"])
    return None


def decoder_choices(policy: ExperimentInfo, experiments: Iterable[ExperimentInfo]
                    ) -> list[tuple[str, DecoderChoice]]:
    """``(label, (experiment, step))`` for every saved model checkpoint that fits ``policy``.

    A saved model fits when it is an Advanced Training model the workbench can decode with
    and takes as many inputs as the policy's latent has. The training-time decoder comes
    first (labelled so); the others follow, best-scoring checkpoint first per experiment.
    """
    size = policy.extra.get("latent_size")
    trained = training_decoder(policy)
    choices: list[tuple[str, DecoderChoice]] = []
    for exp in experiments:
        columns = exp.extra.get("feature_columns")
        if (exp.tab != "advanced" or exp.framework not in DECODER_FRAMEWORKS
                or not isinstance(columns, list) or len(columns) != size):
            continue
        for ckpt in ordered_checkpoints(exp.checkpoints, "best"):
            choice = (exp.name, ckpt.step)
            label = (f"{exp.name}, step {ckpt.step:,} (evaluation "
                     f"{format_score(ckpt.evaluation_score)})")
            if choice == trained:
                choices.insert(0, (label + ", used in training", choice))
            else:
                choices.append((label, choice))
    return choices


class NewAgentWizard(widgets.VBox):
    """Details (name, description, source experiment), then Checkpoint (Best/Final/Specific)."""

    def __init__(self, tab: Tab, experiments: Sequence[ExperimentInfo],
                 on_create: Callable[[CreateRequest], object],
                 on_cancel: Callable[[], None], taken: Iterable[str] = ()) -> None:
        self.tab = tab
        # Names of the agents that exist, so a duplicate is caught as it is typed (the
        # server still has the last word at Create, for one made elsewhere meanwhile).
        self.taken = frozenset(taken)
        self.experiments = {e.name: e for e in experiments}
        self._on_create = on_create
        self._on_cancel = on_cancel
        self._specific: int | None = None
        self._built_for: str | None = None
        self._row_widgets: list[widgets.Widget] = []
        self._radios: dict[int, widgets.RadioButtons] = {}
        self._rows: dict[int, list[widgets.Widget]] = {}

        self.title = widgets.HTML(
            f"<div class='awb-wizard-title'>Create New Agent "
            f"<span class='awb-chip'>{html.escape(TAB_LABELS[tab])}</span></div>")
        self.steps_bar = widgets.HTML()

        # Step 1: Details
        self.name = widgets.Text(description="Name *", placeholder=name_example(experiments),
                                 continuous_update=True,
                                 layout=widgets.Layout(width="440px"),
                                 style={"description_width": "150px"})
        self.name_hint = widgets.HTML()
        self.description = widgets.Textarea(description="Description",
                                            placeholder="Optional: what this agent is for",
                                            layout=widgets.Layout(width="440px", height="64px"),
                                            style={"description_width": "150px"})
        source_kind = "environment" if tab == "classic" else "data set"
        self.source = widgets.Dropdown(
            description="Source experiment *",
            options=[(experiment_label(e), e.name) for e in experiments], value=None,
            tooltip=f"Experiments of this project type with checkpoints, with their {source_kind}",
            layout=widgets.Layout(width="440px"), style={"description_width": "150px"})
        # Where the agent runs: the server's default, this server, or Ray Serve replicas.
        # "" rather than None for the default: a Dropdown reads None as "nothing selected"
        # and shows an empty box.
        self.backend = widgets.Dropdown(
            description="Backend", value="",
            options=[("Server default", ""), ("Local (this server)", "local"),
                     ("Ray Serve", "ray")],
            layout=widgets.Layout(width="440px"), style={"description_width": "150px"})
        info = widgets.HTML(f"<div class='awb-info'>{AGENT_INFO}</div>",
                            layout=widgets.Layout(width="320px"))
        details = gap(widgets.HBox([
            widgets.VBox([self.name, self.name_hint, self.description, self.source,
                          self.backend]), info,
        ]), 24)

        # Step 2: Checkpoint
        self.rule = widgets.ToggleButtons(options=[("Best", "best"), ("Final", "final"),
                                                   ("Specific", "specific")],
                                          value="best", description="Checkpoint",
                                          style={"button_width": "90px"})
        self.rule_help = widgets.HTML()
        self.table = widgets.GridBox(layout=widgets.Layout(
            grid_template_columns=TABLE_COLUMNS, max_height="260px", overflow="auto",
            width="fit-content", border="1px solid var(--jp-border-color2, #ddd)"))
        self.training_chart, self.evaluation_chart = (self._chart(field) for field in (
            "training_score", "evaluation_score"))
        self.charts = gap(widgets.HBox([self.training_chart, self.evaluation_chart],
                                       layout=widgets.Layout(flex_flow="row wrap")), 12)
        self.charts_note = widgets.HTML()
        self.decoder = widgets.Dropdown(
            description="Decoder *", options=[], value=None,
            tooltip="The saved Advanced Training model that turns the policy's latent into "
                    "the answer",
            layout=widgets.Layout(width="560px"), style={"description_width": "150px"})
        self.decoder_help = widgets.HTML()
        self.decoder_box = widgets.VBox([self.decoder, self.decoder_help])
        checkpoint = widgets.VBox([self.rule, self.rule_help, self.table, self.charts,
                                   self.charts_note, self.decoder_box])

        self.steps = widgets.Stack([details, checkpoint], selected_index=0)

        self.error = widgets.HTML()
        self.cancel_button = widgets.Button(description="Cancel")
        self.back_button = widgets.Button(description="Back", icon="arrow-left")
        self.next_button = widgets.Button(description="Next", icon="arrow-right",
                                          button_style="primary", disabled=True)
        self.create_button = widgets.Button(description="Create", icon="check",
                                            button_style="primary")
        footer = gap(widgets.HBox([self.cancel_button, self.back_button, self.next_button,
                                   self.create_button]), 6)

        self.name.observe(self._on_details_change, "value")
        self.source.observe(self._on_details_change, "value")
        self.rule.observe(self._on_rule_change, "value")
        self.decoder.observe(lambda _c: self._update_create(), "value")
        self.cancel_button.on_click(lambda _b: self._on_cancel())
        self.back_button.on_click(lambda _b: self.go_to(0))
        self.next_button.on_click(lambda _b: self.go_to(1))
        self.create_button.on_click(lambda _b: self.submit())

        super().__init__([self.title, self.steps_bar, self.steps, self.error, footer],
                         layout=widgets.Layout(padding="8px 12px"))
        self.add_class("awb-wizard")
        gap(self, 8)
        self.go_to(0)
        self._on_details_change()

    def _chart(self, field: str) -> ScoreChart:
        """A score chart whose dots choose their checkpoint."""
        chart = ScoreChart(TITLES[field], colour=COLOURS[field])
        chart.on_pick(self.pick)
        return chart

    # -- navigation ----------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """0 on Details, 1 on Checkpoint."""
        return int(self.steps.selected_index or 0)

    def go_to(self, step: int) -> None:
        """Show a step (Checkpoint only once the details are complete)."""
        if step == 1 and not self.details_complete:
            return
        if step == 1:
            self._build_checkpoint_step()
        self.steps.selected_index = step
        self.error.value = ""
        labels = ["1 Details", "2 Checkpoint"]
        parts = [f"<span class='awb-step{' awb-step-on' if i == step else ''}'>{label}</span>"
                 for i, label in enumerate(labels)]
        self.steps_bar.value = " <span class='awb-step-sep'>›</span> ".join(parts)
        self.back_button.layout.display = "" if step == 1 else "none"
        self.next_button.layout.display = "" if step == 0 else "none"
        self.create_button.layout.display = "" if step == 1 else "none"
        self._update_create()

    # -- step 1 --------------------------------------------------------------------------------

    @property
    def details_complete(self) -> bool:
        """Name (trimmed, valid) and source experiment are set."""
        name = self.name.value.strip()
        return (bool(NAME_RE.match(name)) and name not in self.taken
                and self.source.value is not None)

    def _on_details_change(self, _change: Any = None) -> None:
        name = self.name.value.strip()
        if name and not NAME_RE.match(name):
            self.name_hint.value = (
                "<span class='awb-hint'>Use 1-100 letters, digits, '.', '_' or '-', starting "
                "with a letter or digit.</span>")
        elif name in self.taken:
            self.name_hint.value = (
                f"<span class='awb-error'>An agent named {html.escape(name)} already exists; "
                "pick another name.</span>")
        else:
            self.name_hint.value = ""
        self.next_button.disabled = not self.details_complete

    # -- step 2 --------------------------------------------------------------------------------

    @property
    def experiment(self) -> ExperimentInfo | None:
        """The chosen source experiment."""
        return self.experiments.get(self.source.value or "")

    @property
    def chosen_step(self) -> int | None:
        """The step the current rule picks (None for Specific with nothing picked)."""
        experiment = self.experiment
        if experiment is None:
            return None
        return chosen_step(experiment.checkpoints, str(self.rule.value), self._specific)

    def _build_checkpoint_step(self) -> None:
        experiment = self.experiment
        if experiment is None or self._built_for == experiment.name:
            return
        self._built_for = experiment.name
        self._specific = None
        self._render_table()
        self._render_charts(experiment)
        self._render_decoder(experiment)

    def _render_decoder(self, experiment: ExperimentInfo) -> None:
        if not is_latent(experiment):
            self.decoder_box.layout.display = "none"
            self.decoder.options = []
            return
        self.decoder_box.layout.display = ""
        choices = decoder_choices(experiment, self.experiments.values())
        self.decoder.options = choices
        self.decoder.value = choices[0][1] if choices else None
        trained = training_decoder(experiment)
        size = experiment.extra.get("latent_size")
        if not choices:
            note = (f"No saved Advanced Training model takes {size} inputs, the size of this "
                    "policy's latent, so it cannot be decoded. Train or restore one first.")
        elif trained is not None and choices[0][1] != trained:
            note = (f"The decoder it was trained with ({trained[0]}, step {trained[1]:,}) is "
                    f"no longer saved; pick another model that takes {size} inputs.")
        else:
            note = (f"Saved Advanced Training models that take {size} inputs (this policy's "
                    "latent). The one it was trained with is picked.")
        self.decoder_help.value = f"<span class='awb-hint'>{html.escape(note)}</span>"

    def _render_charts(self, experiment: ExperimentInfo) -> None:
        metrics = experiment.metrics
        shown = []
        for field, chart in (("training_score", self.training_chart),
                             ("evaluation_score", self.evaluation_chart)):
            points = [(m.step, value) for m in metrics
                      if (value := getattr(m, field)) is not None]
            marks = [(c.step, value) for c in experiment.checkpoints
                     if (value := getattr(c, field)) is not None]
            if has_series(metrics, field) or marks:
                chart.points = [list(p) for p in points]
                chart.marks = [list(m) for m in marks]
                chart.layout.display = ""
                shown.append(field)
            else:
                chart.points, chart.marks = [], []
                chart.layout.display = "none"
        notes = score_notes(experiment)
        self.charts_note.value = "" if shown else (
            "<span class='awb-hint'>No metrics were logged for this experiment, so there are "
            "no charts.</span>")
        if shown and notes:
            self.charts_note.value = f"<div class='awb-hint'>{'<br>'.join(notes)}</div>"

    def _on_rule_change(self, _change: Any = None) -> None:
        self._render_table()

    def _render_table(self) -> None:
        experiment = self.experiment
        if experiment is None:
            return
        rule = str(self.rule.value)
        self.rule_help.value = f"<span class='awb-hint'>{html.escape(RULE_HELP[rule])}</span>"
        chosen = self.chosen_step
        old = self._row_widgets
        cells: list[widgets.Widget] = [
            widgets.HTML("<b></b>"), widgets.HTML("<b>Step</b>"),
            widgets.HTML("<b>Training score</b>"), widgets.HTML("<b>Evaluation score</b>"),
        ]
        for cell in cells:
            cell.add_class("awb-th")
        self._radios = {}
        self._rows = {}
        interactive = rule == "specific"
        for ckpt in ordered_checkpoints(experiment.checkpoints, rule):
            cells.extend(self._table_row(ckpt, chosen, interactive))
        self.table.children = cells
        self._row_widgets = cells
        for widget in old:
            widget.close()  # rows are rebuilt on every rule change: free the old ones
        self._mark_charts()
        self._update_create()

    def _mark_charts(self) -> None:
        """Ring the chosen checkpoint on both charts (none for Specific before a pick)."""
        for chart in (self.training_chart, self.evaluation_chart):
            chart.chosen = self.chosen_step

    def _table_row(self, ckpt: CheckpointInfo, chosen: int | None,
                   interactive: bool) -> list[widgets.Widget]:
        selected = ckpt.step == chosen
        radio = widgets.RadioButtons(options=[("", ckpt.step)],
                                     value=ckpt.step if selected else None,
                                     disabled=not interactive,
                                     layout=widgets.Layout(width="30px", margin="0"))
        radio.observe(self._on_pick, "value")
        self._radios[ckpt.step] = radio
        cells: list[widgets.Widget] = [
            radio,
            widgets.HTML(f"{ckpt.step:,}"),
            widgets.HTML(format_score(ckpt.training_score)),
            widgets.HTML(format_score(ckpt.evaluation_score)),
        ]
        for cell in cells:
            cell.add_class("awb-td")
            if selected:
                cell.add_class("awb-chosen")
            if not interactive:
                cell.add_class("awb-dim")
        self._rows[ckpt.step] = cells
        return cells

    def _on_pick(self, change: dict[str, Any]) -> None:
        if change["new"] is None or self.rule.value != "specific":
            return
        step = int(change["new"])
        self._specific = step
        for other, radio in self._radios.items():
            if other != step and radio.value is not None:
                radio.value = None
        for row_step, cells in self._rows.items():
            for cell in cells:
                if row_step == step:
                    cell.add_class("awb-chosen")
                else:
                    cell.remove_class("awb-chosen")
        self._mark_charts()
        self._update_create()

    def pick(self, step: int) -> None:
        """Choose Specific and the checkpoint at ``step`` (its radio, or its dot on a chart)."""
        if step not in self._radios:
            return
        self.rule.value = "specific"
        self._radios[step].value = step

    @property
    def decoder_missing(self) -> bool:
        """A LatentPPO source with no decoder picked (Create stays off)."""
        return is_latent(self.experiment) and self.decoder.value is None

    def _update_create(self) -> None:
        self.create_button.disabled = (self.step != 1 or self.chosen_step is None
                                       or self.decoder_missing)

    # -- create --------------------------------------------------------------------------------

    def request(self) -> CreateRequest | None:
        """The request the current choices make, or None while incomplete."""
        experiment = self.experiment
        step = self.chosen_step
        if experiment is None or step is None or not self.details_complete:
            return None
        options: dict[str, Any] | None = None
        if is_latent(experiment):
            if self.decoder.value is None:
                return None
            name, decoder_step = self.decoder.value
            options = {"decoder": {"experiment": name, "step": decoder_step}}
        if self.backend.value:
            options = {**(options or {}), "backend": self.backend.value}
        rule = str(self.rule.value)
        return CreateRequest(
            name=self.name.value.strip(), experiment=experiment.name,
            checkpoint=step if rule == "specific" else rule,
            description=self.description.value.strip(), options=options)

    def submit(self) -> None:
        """Hand the request to the panel; the button stays off until it answers."""
        request = self.request()
        if request is None:
            return
        self.create_button.disabled = True
        self.create_button.description = "Creating…"
        self.error.value = ""
        self._on_create(request)

    def show_error(self, message: str) -> None:
        """Show the server's reason inline and let the user fix it."""
        self.error.value = f"<div class='awb-error'>{html.escape(message)}</div>"
        self.create_button.description = "Create"
        self._update_create()

    def close(self) -> None:
        """Close every widget the wizard made."""
        close_tree(self)
