"""What the panel knows about the server, and the rules that turn it into what it shows.

No widgets here: plain data and pure functions, so the rules (which tab an agent belongs to,
when New Agent is enabled, when the chevron shows, which checkpoint Best and Final pick)
are testable on their own.

Thread-safety: :class:`PanelState` swaps whole immutable tuples, so a reader on another
thread sees either the old or the new list, never half of an update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .client import AgentInfo, CheckpointInfo, ExperimentInfo, Tab

TABS: tuple[Tab, ...] = ("classic", "advanced")
TAB_LABELS: dict[Tab, str] = {"classic": "Classic RL", "advanced": "Advanced Training"}
RULES = ("best", "final", "specific")


@dataclass(frozen=True)
class Gate:
    """Whether a control is enabled, and the tooltip that says why (not)."""

    enabled: bool
    tooltip: str


class PanelState:
    """The experiments and agents last read from the server."""

    def __init__(self) -> None:
        self.experiments: tuple[ExperimentInfo, ...] = ()
        self.agents: tuple[AgentInfo, ...] = ()
        self.loaded = False

    def set_experiments(self, experiments: Iterable[ExperimentInfo]) -> None:
        """Replace the experiments."""
        self.experiments = tuple(experiments)

    def set_agents(self, agents: Iterable[AgentInfo]) -> None:
        """Replace the agents (ordered oldest first, like the platform's table)."""
        self.agents = tuple(sorted(agents, key=lambda a: (a.created_at, a.name)))
        self.loaded = True

    def put_agent(self, agent: AgentInfo) -> None:
        """Add or replace one agent (after create, connect, rotate...)."""
        others = [a for a in self.agents if a.name != agent.name]
        self.set_agents([*others, agent])

    def drop_agent(self, name: str) -> None:
        """Forget a deleted agent."""
        self.set_agents(a for a in self.agents if a.name != name)

    def agent(self, name: str) -> AgentInfo | None:
        """The agent called ``name``, if known."""
        return next((a for a in self.agents if a.name == name), None)

    def api_key(self, name: str) -> str | None:
        """The current key of a Deployed agent (never stored anywhere but here)."""
        agent = self.agent(name)
        return agent.api_key if agent is not None and agent.status == "Deployed" else None

    def experiment(self, name: str) -> ExperimentInfo | None:
        """The experiment called ``name``, if known."""
        return next((e for e in self.experiments if e.name == name), None)

    def agents_of(self, tab: Tab) -> list[AgentInfo]:
        """The agents of one tab; agents of the other tab never show here."""
        return [a for a in self.agents if a.tab == tab]

    def sources(self, tab: Tab) -> list[ExperimentInfo]:
        """Experiments of ``tab`` that have at least one checkpoint (wizard choices)."""
        return [e for e in self.experiments if e.tab == tab and e.checkpoints]

    def new_agent_gate(self, tab: Tab) -> Gate:
        """New Agent is enabled once an experiment of ``tab``'s project type has checkpoints."""
        if not self.loaded:
            return Gate(False, "Loading experiments from the workbench server…")
        if self.sources(tab):
            return Gate(True, f"Create a {TAB_LABELS[tab]} agent from an experiment's checkpoint")
        label = TAB_LABELS[tab]
        return Gate(
            False,
            f"No {label} experiment has checkpoints yet. Train and log one (see "
            f"agents_widget.tracking.start_experiment with project_type={tab!r}); it shows up "
            "here by itself.",
        )


def experiment_label(experiment: ExperimentInfo) -> str:
    """``name (CartPole-v1)``: the gym env on Classic RL, the data set on Advanced Training."""
    detail = experiment.environment if experiment.tab == "classic" else experiment.dataset
    detail = detail or experiment.source
    return f"{experiment.name} ({detail})" if detail else experiment.name


def chevron_visible(agent: AgentInfo) -> bool:
    """Rows expand only while the agent is Deployed and connected."""
    return agent.status == "Deployed" and agent.connected


def toggle_connects(agent: AgentInfo) -> bool:
    """Whether the row's main button connects: when switched off, or switched on but Failed.

    A Failed agent is still switched on (the server tries it again after a restart), but
    what its owner wants next is another attempt, as on the platform: Retry reconnects.
    """
    return not agent.connected or agent.status == "Failed"


def toggle_label(agent: AgentInfo) -> str:
    """Connect, Disconnect, or Retry for a connected agent that Failed."""
    if agent.connected and agent.status == "Failed":
        return "Retry"
    return "Connect" if toggle_connects(agent) else "Disconnect"


def format_score(value: float | None) -> str:
    """A score for a table cell; N/A when it was not measured."""
    if value is None or not math.isfinite(value):
        return "N/A"
    return f"{value:,.2f}"


def best_step(checkpoints: Sequence[CheckpointInfo]) -> int | None:
    """The step Best picks: highest evaluation score, the later step on ties.

    Like the server, falls back to the training score, then to the final step, when nothing
    was evaluated, so the wizard highlights the checkpoint the server will really use.
    """
    if not checkpoints:
        return None
    for key in ("evaluation_score", "training_score"):
        scored = [c for c in checkpoints if getattr(c, key) is not None]
        if scored:
            return max(scored, key=lambda c: (getattr(c, key), c.step)).step
    return final_step(checkpoints)


def final_step(checkpoints: Sequence[CheckpointInfo]) -> int | None:
    """The step Final picks: the highest one."""
    return max((c.step for c in checkpoints), default=None)


def chosen_step(checkpoints: Sequence[CheckpointInfo], rule: str,
                specific: int | None = None) -> int | None:
    """The step a rule picks (``specific`` for the Specific rule)."""
    if rule == "best":
        return best_step(checkpoints)
    if rule == "final":
        return final_step(checkpoints)
    steps = {c.step for c in checkpoints}
    return specific if specific in steps else None


def ordered_checkpoints(checkpoints: Sequence[CheckpointInfo],
                        rule: str) -> list[CheckpointInfo]:
    """The checkpoint table's order for a rule.

    Best: by evaluation score (training score when nothing was evaluated), highest first,
    unmeasured last, so the pick sits on top.
    Final: by step, highest first. Specific: by step, in training order.
    """
    if rule == "best":
        # Sort by the score Best really used (evaluation, else training), as best_step does.
        field = "evaluation_score"
        if all(c.evaluation_score is None for c in checkpoints):
            field = "training_score"

        def key(c: CheckpointInfo) -> tuple[bool, float, int]:
            score = getattr(c, field)
            return (score is None, -(score if score is not None else 0.0), -c.step)
        return sorted(checkpoints, key=key)
    if rule == "final":
        return sorted(checkpoints, key=lambda c: -c.step)
    return sorted(checkpoints, key=lambda c: c.step)
