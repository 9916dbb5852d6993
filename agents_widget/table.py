"""The agents table of one tab: a header and one ``GridBox`` row per agent.

Rows are kept by agent name and updated in place (values only); a row is built when an
agent appears and closed, with everything under it, when the agent goes away. Callbacks go
to the panel, which does the HTTP work off the kernel's event loop. Example::

    table = AgentTable("classic", RowActions(toggle=..., delete=..., expand=...,
                                             disconnect=...))
    table.sync(state.agents_of("classic"))
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ipywidgets as widgets

from .client import AgentInfo, Tab
from .state import TAB_LABELS, chevron_visible, toggle_connects, toggle_label
from .viewkit import close_tree, gap

# The buttons sit in one line when the notebook is wide and wrap onto two when it is narrow
# (JupyterLab at 1280 px with the file browser open): a fixed width would push them past the
# panel's edge, where the notebook cuts them off. Every row's grid has the same template and
# only fixed minimums, so the columns line up from row to row whatever the cells hold.
# The server's note on a Pending agent whose framework's libraries are still being imported
# (server_extension.serving.deployer.STARTING_RUNTIME; a test keeps the two equal).
STARTING_RUNTIME = "Starting the model runtime"
# The start of the server's note while the workspace's serving server is silent (lease.py).
SERVER_SILENT = "The serving server ("
ACTIONS_WIDTH = "minmax(135px, 280px)"
# Headers do not wrap: "Source Experiment" needs 150 px with its padding.
COLUMNS: dict[Tab, list[tuple[str, str]]] = {
    "classic": [
        ("Agent", "minmax(100px, 1fr)"),
        ("Description", "minmax(100px, 1.6fr)"),
        ("Source Experiment", "minmax(150px, 1.2fr)"),
        ("Status", "minmax(105px, 1fr)"),
        ("Actions", ACTIONS_WIDTH),
    ],
    "advanced": [
        ("Agent", "minmax(100px, 1fr)"),
        ("Description", "minmax(100px, 1.4fr)"),
        ("Source Experiment", "minmax(150px, 1.1fr)"),
        ("Base Model", "minmax(110px, 1.1fr)"),
        ("Status", "minmax(105px, 1fr)"),
        ("Actions", ACTIONS_WIDTH),
    ],
}
# A base model inside the workspace: shown as "experiment · step N" (the path is the tooltip).
WORKSPACE_MODEL = re.compile(r"^(?:.*/)?experiments/([^/]+)/checkpoints/step_(\d+)(?:\.\w+)?/?$")


def grid_template(tab: Tab) -> str:
    """The CSS grid columns of a tab's table."""
    return " ".join(width for _, width in COLUMNS[tab])


def status_html(agent: AgentInfo) -> str:
    """A coloured status pill; a Pending one whose worker is restarting says why (a Failed
    row's reason goes under the row: :func:`reason_html`)."""
    pill = f"<span class='awb-pill awb-pill-{agent.status}'>{agent.status}</span>"
    if agent.status == "Pending" and (agent.error or "").startswith(STARTING_RUNTIME):
        # Its framework's libraries are still being imported (deployer._start_worker).
        pill += f" <span class='awb-hint'>{html.escape(agent.error or '').lower()}…</span>"
    elif (agent.error or "").startswith(SERVER_SILENT):
        # The server that loads the workspace's agents stopped beating (serving_notice.py).
        pill += (" <span class='awb-hint' title='" + html.escape(agent.error or "", quote=True)
                 + "'>serving server not responding</span>")
    elif agent.status == "Pending" and agent.error:
        # The worker died while serving and is being restarted (deployer._worker_exited).
        pill += (" <span class='awb-hint' title='" + html.escape(agent.error, quote=True)
                 + "'>restarting…</span>")
    elif agent.status == "Pending":
        pill += " <span class='awb-hint'>loading…</span>"
    return pill


def reason_html(agent: AgentInfo) -> str:
    """Why a Failed agent failed, for the full-width line under its row ("" otherwise).

    The first line is the reason in the user's terms; what follows it (the library's own
    error, a traceback) is folded away under "Details", open on demand.
    """
    if agent.status != "Failed" or not agent.error:
        return ""
    summary, _, rest = agent.error.strip().partition("\n")
    folded = (f"<details><summary>Details</summary><pre>{html.escape(rest.strip())}</pre>"
              "</details>") if rest.strip() else ""
    return (f"<div class='awb-reason'><b>Failed:</b> {html.escape(summary.strip())}"
            f"{folded}</div>")


def base_model_html(base_model: str | None) -> str:
    """The Base Model cell: short for a checkpoint in the workspace, the full value on hover."""
    if not base_model:
        return "<span class='awb-hint'>—</span>"
    found = WORKSPACE_MODEL.match(base_model)
    shown = (f"{html.escape(found[1])}<br><span class='awb-hint'>step {int(found[2]):,}</span>"
             if found else html.escape(base_model))
    return f"<span title='{html.escape(base_model, quote=True)}'>{shown}</span>"


@dataclass(frozen=True)
class RowActions:
    """What the row's buttons ask the panel to do, by agent name."""

    toggle: Callable[[str], object]
    delete: Callable[[str], object]
    expand: Callable[[str], object]
    disconnect: Callable[[str], object]


class DeleteConfirmation(widgets.HBox):
    """"Delete NAME?" with Delete and Cancel, shown in place of a row's buttons."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.question = widgets.HTML()
        self.yes = widgets.Button(description="Delete", button_style="danger",
                                  layout=widgets.Layout(width="75px"))
        self.no = widgets.Button(description="Cancel", layout=widgets.Layout(width="75px"))
        super().__init__([self.question, self.yes, self.no],
                         layout=widgets.Layout(display="none", align_items="center"))
        gap(self, 4)
        self.ask()

    def ask(self) -> None:
        """The question, with both buttons on."""
        self.yes.disabled = self.no.disabled = False
        self.question.value = f"Delete <b>{html.escape(self.name)}</b>?"

    def working(self) -> None:
        """Confirmed: both buttons off while the panel deletes."""
        self.yes.disabled = self.no.disabled = True
        self.question.value = f"Deleting <b>{html.escape(self.name)}</b>…"


class AgentRow(widgets.VBox):
    """One agent: the cells, the delete confirmation and, when expanded, the details."""

    def __init__(self, agent: AgentInfo, tab: Tab, actions: RowActions) -> None:
        self.name = agent.name
        self.agent = agent
        self._actions = actions
        self.busy = False

        self.name_cell = widgets.HTML()
        self.description_cell = widgets.HTML()
        self.experiment_cell = widgets.HTML()
        # Only the Advanced Training table has the column.
        self.base_model_cell = widgets.HTML() if tab == "advanced" else None
        self.status_cell = widgets.HTML()

        # Wide enough for "Disconnect" and its icon, the longest label it takes.
        self.toggle_button = widgets.Button(layout=widgets.Layout(width="122px"))
        self.delete_button = widgets.Button(description="Delete", icon="trash",
                                            layout=widgets.Layout(width="85px"),
                                            tooltip=f"Delete {agent.name}")
        self.chevron = widgets.Button(icon="chevron-down", layout=widgets.Layout(width="40px"),
                                      tooltip="Show API key, endpoint and code")
        # While the main button says Retry (connected but Failed), switching the agent off
        # must stay one click away; this takes the hidden chevron's place, same width.
        self.disconnect_button = widgets.Button(
            icon="power-off", layout=widgets.Layout(width="40px", display="none"),
            tooltip=f"Disconnect {agent.name}: stop trying to serve it")
        self.buttons = gap(widgets.HBox([self.toggle_button, self.delete_button,
                                         self.chevron, self.disconnect_button],
                                        layout=widgets.Layout(flex_flow="row wrap")), 4)
        # The delete confirmation is built on the first Delete click: most rows never need
        # it, and its widgets were a fifth of a row's cost in a 200-agent table.
        self._confirm: DeleteConfirmation | None = None
        self.actions_cell = widgets.VBox([self.buttons])
        actions_cell = self.actions_cell

        cells: list[widgets.Widget] = [self.name_cell, self.description_cell,
                                       self.experiment_cell]
        if self.base_model_cell is not None:
            cells.append(self.base_model_cell)
        cells += [self.status_cell, actions_cell]
        for cell in cells:
            cell.add_class("awb-td")
        self.grid = widgets.GridBox(cells, layout=widgets.Layout(
            grid_template_columns=grid_template(tab), width="100%", padding="4px 0"))
        self.grid.add_class("awb-row")
        # A Failed agent's reason: under the row, full width, not squeezed into Status.
        self.reason = widgets.HTML(layout=widgets.Layout(display="none", width="auto"))
        self.reason.add_class("awb-reason-line")
        self.details_box = widgets.Box(layout=widgets.Layout(width="100%"))

        self.toggle_button.on_click(lambda _b: self._actions.toggle(self.name))
        self.delete_button.on_click(lambda _b: self.ask_delete())
        self.chevron.on_click(lambda _b: self._actions.expand(self.name))
        self.disconnect_button.on_click(lambda _b: self._actions.disconnect(self.name))

        super().__init__([self.grid, self.reason, self.details_box],
                         layout=widgets.Layout(width="100%"))
        self.add_class("awb-agent")
        self.update(agent)

    # -- values --------------------------------------------------------------------------------

    def update(self, agent: AgentInfo) -> None:
        """Show ``agent`` as it now stands (sets widget values only)."""
        self.agent = agent
        visible = chevron_visible(agent)
        if not visible and self.expanded:
            # Close first: each change is its own comm message, and the browser should not show
            # the new status beside details that belong to the old one.
            self.collapse()
        self.name_cell.value = f"<b>{html.escape(agent.name)}</b>"
        self.description_cell.value = html.escape(agent.description) or (
            "<span class='awb-hint'>—</span>")
        step = "" if agent.checkpoint_step is None else f" · step {agent.checkpoint_step:,}"
        self.experiment_cell.value = (
            f"{html.escape(agent.experiment)}<br><span class='awb-hint'>"
            f"{html.escape(agent.checkpoint_rule)}{step}</span>")
        if self.base_model_cell is not None:
            self.base_model_cell.value = base_model_html(agent.base_model)
        self.status_cell.value = status_html(agent)
        reason = reason_html(agent)
        if self.reason.value != reason:
            self.reason.value = reason
        self.reason.layout.display = "" if reason else "none"
        if not self.busy:
            self.toggle_button.description = toggle_label(agent)
            self.toggle_button.disabled = False
            self.disconnect_button.disabled = False
        connects = toggle_connects(agent)
        retry = connects and agent.connected
        self.toggle_button.button_style = "warning" if retry else (
            "success" if connects else "")
        self.toggle_button.icon = "redo" if retry else ("plug" if connects else "power-off")
        self.toggle_button.tooltip = (
            f"Load {agent.name} again and turn its endpoint on" if retry
            else f"Load {agent.name} and turn its endpoint on" if connects
            else f"Turn {agent.name}'s endpoint off (the agent stays, Undeployed)")
        self.chevron.layout.visibility = "visible" if visible else "hidden"
        self.chevron.layout.display = "none" if retry else ""
        self.chevron.disabled = not visible
        self.disconnect_button.layout.display = "" if retry else "none"

    def set_busy(self, text: str) -> None:
        """Show that an action is on its way (the button stays off until it answers)."""
        self.busy = True
        self.toggle_button.description = text
        self.toggle_button.disabled = True
        self.disconnect_button.disabled = True

    def done(self, agent: AgentInfo | None = None) -> None:
        """The action answered; show the agent as it now is."""
        self.busy = False
        self.update(agent or self.agent)

    # -- delete --------------------------------------------------------------------------------

    @property
    def confirm(self) -> DeleteConfirmation:
        """The delete confirmation (built the first time it is needed)."""
        if self._confirm is None:
            self._confirm = DeleteConfirmation(self.name)
            self._confirm.yes.on_click(lambda _b: self.confirm_delete())
            self._confirm.no.on_click(lambda _b: self.cancel_delete())
            self.actions_cell.children = [self.buttons, self._confirm]
        return self._confirm

    def ask_delete(self) -> None:
        """Ask for confirmation in place of the buttons."""
        self.buttons.layout.display = "none"
        self.confirm.layout.display = ""

    def cancel_delete(self) -> None:
        """Back to the buttons."""
        if self._confirm is not None:
            self._confirm.layout.display = "none"
        self.buttons.layout.display = ""

    def confirm_delete(self) -> None:
        """Confirmed: the panel deletes the agent on its worker thread."""
        self.confirm.working()
        self._actions.delete(self.name)

    def delete_failed(self) -> None:
        """Deleting did not work (the panel shows why): offer the buttons again."""
        self.confirm.ask()
        self.cancel_delete()

    # -- details -------------------------------------------------------------------------------

    @property
    def expanded(self) -> bool:
        """Whether the details are open."""
        return bool(self.details_box.children)

    @property
    def details(self) -> widgets.Widget | None:
        """The open details, if any."""
        return self.details_box.children[0] if self.details_box.children else None

    def expand(self, details: widgets.Widget) -> None:
        """Open ``details`` under the row."""
        self.collapse()
        self.details_box.children = [details]
        self.chevron.icon = "chevron-up"
        self.chevron.tooltip = "Hide the details"

    def collapse(self) -> None:
        """Close the details and free their widgets."""
        old = list(self.details_box.children)
        self.details_box.children = []
        for widget in old:
            close_tree(widget)
        self.chevron.icon = "chevron-down"
        self.chevron.tooltip = "Show API key, endpoint and code"

    def close(self) -> None:
        """Close the row and everything in it."""
        close_tree(self)


class AgentTable(widgets.VBox):
    """The table of one tab; :meth:`sync` makes it match a list of agents."""

    def __init__(self, tab: Tab, actions: RowActions) -> None:
        self.tab = tab
        self._actions = actions
        self.rows: dict[str, AgentRow] = {}
        header_cells = []
        for title, _ in COLUMNS[tab]:
            cell = widgets.HTML(html.escape(title))
            cell.add_class("awb-th")
            header_cells.append(cell)
        self.header = widgets.GridBox(header_cells, layout=widgets.Layout(
            grid_template_columns=grid_template(tab), width="100%"))
        self.body = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.empty = widgets.HTML(
            f"<div class='awb-hint' style='padding:12px 6px'>No {TAB_LABELS[tab]} agents yet. "
            "Use <b>New Agent</b> to make one from an experiment's checkpoint.</div>")
        super().__init__([self.header, self.body, self.empty],
                         layout=widgets.Layout(width="100%"))

    def sync(self, agents: Sequence[AgentInfo]) -> None:
        """Update rows in place, build rows for new agents, close rows of gone ones."""
        wanted = [a for a in agents if a.tab == self.tab]
        names = [a.name for a in wanted]
        gone = [name for name in self.rows if name not in names]
        for agent in wanted:
            row = self.rows.get(agent.name)
            if row is None:
                self.rows[agent.name] = AgentRow(agent, self.tab, self._actions)
            else:
                row.update(agent)
        removed = [self.rows.pop(name) for name in gone]
        children = tuple(self.rows[name] for name in names)
        if tuple(self.body.children) != children:
            self.body.children = children
        for row in removed:
            row.close()
        self.empty.layout.display = "none" if wanted else ""

    def close(self) -> None:
        """Close the table and all its rows."""
        self.rows.clear()
        close_tree(self)
