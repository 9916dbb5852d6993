"""The expanded row of a Deployed agent: API key, endpoint, key rotation, deployment code,
traffic, playgrounds and (Classic RL) evaluation.

The key is shown by :class:`~agents_widget.clipboard.SecretField`: masked, revealed or
copied through custom messages only, so it is never a widget trait (not in saved widget
state, not in notebook outputs). The snippets read it from ``ARENA_API_KEY``. Example::

    details = DeploymentDetails(agent, experiment, key=lambda: state.api_key(agent.name),
                                on_rotate=panel.rotate_key)
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .client import AgentInfo, ExperimentInfo, WorkbenchClient
from .clipboard import CopyButton, SecretField, TextProvider
from .evaluation_view import evaluation_section
from .metrics_view import MetricsView
from .snippets import BASE_URL_ENV, KEY_ENV, build_snippets, snippet_kind
from .viewkit import close_tree, gap


def _label(text: str) -> widgets.HTML:
    label = widgets.HTML(html.escape(text))
    label.add_class("awb-label")
    return label


class DeploymentDetails(widgets.VBox):
    """What the chevron opens under a Deployed, connected agent's row."""

    def __init__(self, agent: AgentInfo, experiment: ExperimentInfo | None, *,
                 key: TextProvider, on_rotate: Callable[[str], object],
                 client: WorkbenchClient | None = None) -> None:
        self.agent_name = agent.name
        self.endpoint = agent.endpoint or ""
        self._on_rotate = on_rotate
        self._experiment = experiment
        self._key = key

        self.secret = SecretField(key, copy_label="Copy key")
        self.endpoint_view = widgets.HTML(f"<code>{html.escape(self.endpoint)}</code>")
        endpoint = self.endpoint
        self.copy_endpoint = CopyButton(lambda: endpoint, label="Copy",
                                        hint="Copy the endpoint URL")

        self.rotate_button = widgets.Button(description="Rotate key", icon="refresh",
                                            tooltip="Issue a new key; the old one stops at once")
        self.rotate_confirm = widgets.Button(description="Rotate", button_style="danger")
        self.rotate_cancel = widgets.Button(description="Cancel")
        self.rotate_question = widgets.HTML(
            f"Rotate the key of <b>{html.escape(agent.name)}</b>? The old key stops working "
            "at once: clients still using it get 401.")
        self.confirm_box = gap(widgets.HBox(
            [self.rotate_question, self.rotate_confirm, self.rotate_cancel],
            layout=widgets.Layout(display="none", align_items="center")), 6)
        self.rotate_status = widgets.HTML()
        self.rotate_button.on_click(lambda _b: self.ask_rotate())
        self.rotate_cancel.on_click(lambda _b: self._show_confirm(False))
        self.rotate_confirm.on_click(lambda _b: self.confirm_rotate())

        self.snippets = build_snippets(self.endpoint, experiment)
        pages = []
        for title, snippet in self.snippets.items():
            code = snippet.code
            copy = CopyButton(lambda code=code: code, label="Copy code",  # type: ignore[misc]
                              hint=f"Copy the {title} snippet")
            view = widgets.HTML(f"<pre>{html.escape(code)}</pre>")
            view.add_class("awb-code")
            pages.append(widgets.VBox([copy, view]))
        self.code_tabs = widgets.Tab(pages, titles=tuple(self.snippets))
        hint = widgets.HTML(
            f"<span class='awb-hint'>The snippets read the credential from "
            f"<code>{KEY_ENV}</code>: create an access token with <b>Access tokens</b> at the "
            f"top of the panel and <code>export {KEY_ENV}=…</code> (the Arena client and CLI "
            f"also need <code>{BASE_URL_ENV}</code>, shown in their tab). Manual HTTP also "
            "takes the key above. Neither is ever written into this notebook.</span>")

        rows: list[widgets.Widget] = [
            gap(widgets.HBox([_label("API key"), self.secret, self.rotate_button],
                             layout=widgets.Layout(align_items="center")), 8),
            self.confirm_box,
            self.rotate_status,
            gap(widgets.HBox([_label("Endpoint"), self.endpoint_view, self.copy_endpoint],
                             layout=widgets.Layout(align_items="center")), 8),
            _label("Deployment code"),
            hint,
            self.code_tabs,
        ]
        # Live traffic figures; they poll on their own thread only while the row is open.
        self.metrics_view = MetricsView(client, agent.name) if client is not None else None
        if self.metrics_view is not None:
            rows += [_label("Traffic"), self.metrics_view]
        self.playground_box = self._playground_section(agent)
        if self.playground_box is not None:
            rows.append(self.playground_box)
        # Classic agents: seeded episodes through the endpoint vs the score training recorded.
        self.evaluation_box = evaluation_section(agent, experiment, client)
        if self.evaluation_box is not None:
            rows.append(self.evaluation_box)
        super().__init__(rows)
        gap(self, 6)
        self.add_class("awb-details")

    # -- key rotation --------------------------------------------------------------------------

    def _show_confirm(self, shown: bool) -> None:
        self.confirm_box.layout.display = "" if shown else "none"
        self.rotate_button.disabled = shown

    def ask_rotate(self) -> None:
        """Ask for confirmation before rotating."""
        self.rotate_status.value = ""
        self._show_confirm(True)

    def confirm_rotate(self) -> None:
        """Confirmed: the panel rotates the key on its worker thread."""
        self._show_confirm(False)
        self.rotate_button.disabled = True
        self.rotate_status.value = "<span class='awb-hint'>Rotating the key…</span>"
        self._on_rotate(self.agent_name)

    def key_rotated(self, error: str | None = None) -> None:
        """The panel's answer: mask any revealed (now stale) key and say what happened."""
        self.rotate_button.disabled = False
        if error:
            self.rotate_status.value = f"<div class='awb-error'>{html.escape(error)}</div>"
            return
        self.secret.hide()
        self.rotate_status.value = (
            "<span class='awb-ok'>New key issued; the old one no longer works. Update "
            f"{KEY_ENV} wherever the old key was used.</span>")
        if self.playground_box is not None:
            self._reset_playground()

    # -- episode playground (Classic RL) -------------------------------------------------------

    def _playground_section(self, agent: AgentInfo) -> widgets.Accordion | None:
        # LLM agents get the chat playground; supervised/LatentPPO ones have none yet.
        self._chat = (agent.tab == "advanced" and self._experiment is not None
                      and snippet_kind(self._experiment) == "llm")
        if self._experiment is None or (agent.tab != "classic" and not self._chat):
            return None
        from .board_playground import is_turn_based

        # Turn-based games (tic-tac-toe) also get a board to play on against the agent.
        self._board = not self._chat and is_turn_based(self._experiment_dict())
        titles: tuple[str, ...] = ("Chat playground",) if self._chat else (
            ("Play against it", "Run an episode") if self._board else ("Run an episode",))
        section = widgets.Accordion([widgets.VBox() for _ in titles], titles=titles,
                                    selected_index=None)
        section.observe(self._on_playground_open, "selected_index")
        return section

    def _experiment_dict(self) -> dict[str, Any]:
        exp = self._experiment
        if exp is None:
            return {}
        return {"name": exp.name, "environment": exp.environment, "source": exp.source,
                "extra": exp.extra}

    def _on_playground_open(self, change: dict[str, Any]) -> None:
        index = change["new"]
        box = self.playground_box.children[index] if self.playground_box and index is not None \
            else None
        if box is None or box.children:
            return
        key = self._key()
        if key is None or self._experiment is None:
            box.children = [widgets.HTML("The agent is not Deployed any more.")]
            return
        if self._board and index == 0:
            from .board_playground import BoardPlayground

            box.children = [BoardPlayground(self.endpoint, self._key, self._experiment_dict())]
            return
        if self._chat:
            from .chat_playground import ChatPlayground

            # Handed the provider, not the key: it asks per request, so rotation needs no rebuild.
            box.children = [ChatPlayground(self.endpoint, self._key)]
            return
        try:
            from .episode_playground import EpisodePlayground
        except ImportError as exc:
            box.children = [widgets.HTML(f"The episode playground is unavailable: "
                                         f"{html.escape(str(exc))}")]
            return
        experiment = {"name": self._experiment.name,
                      "environment": self._experiment.environment,
                      "source": self._experiment.source}
        box.children = [EpisodePlayground(self.endpoint, key, experiment)]

    def _reset_playground(self) -> None:
        # The playground holds the key it was built with; rebuild it on next open.
        if self.playground_box is None or self._chat:
            return
        for box in self.playground_box.children:
            for child in box.children:
                close_tree(child)
            box.children = []
        self.playground_box.selected_index = None

    def close(self) -> None:
        """Close every widget of the details."""
        close_tree(self)
