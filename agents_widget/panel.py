"""The Agents panel: top bar, Classic RL and Advanced Training tabs, the wizard; the controller.

Example (in a notebook served by a Jupyter server running the workbench)::

    from agents_widget import AgentsPanel
    AgentsPanel()

Layers: :mod:`.client` (HTTP) -> :mod:`.state` (what is known, the rules) -> view builders
(:mod:`.table`, :mod:`.wizard`, :mod:`.details`) -> this controller, which wires buttons to
client calls.

Threads: button callbacks run on the kernel's event loop and never wait on HTTP: they
submit the call to the client's worker thread, which runs calls one at a time and then
applies the answer to the widgets. The :class:`~.poller.StatusPoller` thread submits a
refresh the same way, so polls and user actions never interleave. Widget updates take
``self._lock`` so a callback and the worker do not edit the same row at once.

One polling panel per server per kernel: starting a panel retires the previous one bound
to the same server (re-running the cell that made it would otherwise leave the old, no
longer visible panel polling forever). The retired panel stops polling, closes its widgets
and, if it is still on show elsewhere, says that it was replaced.
"""

from __future__ import annotations

import html
import logging
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import ipywidgets as widgets

from workbench_core import discovery
from workbench_core.discovery import ServerInfo, ServerNotFound

from .client import AgentInfo, ApiError, Tab, WorkbenchClient, WorkbenchError
from .details import DeploymentDetails
from .poller import StatusPoller
from .scroll import ScrollKeeper
from .serving_notice import ServingNotice
from .state import TAB_LABELS, TABS, PanelState, chevron_visible, toggle_connects
from .table import AgentRow, AgentTable, RowActions
from .tokens_view import AccessTokens
from .training_view import training_html
from .viewkit import close_tree, gap, stylesheet
from .views import ViewWatch
from .wizard import CreateRequest, NewAgentWizard

log = logging.getLogger("agents_workbench.panel")
T = TypeVar("T")

PENDING_POLL_S = 0.5  # while an agent is Pending: Deployed shows up within half a second
MAX_BACKOFF_S = 15.0  # while the server does not answer
EXPERIMENTS_EVERY = 4  # re-read experiments (new checkpoints) every this many polls
IDLE_CHECK_S = 5.0  # with no view open: how often the poller looks again (no server call)

# The panel that polls each server (by URL), so a newer panel can retire it. Weak values:
# the registry alone must not keep a closed panel alive.
_polling: weakref.WeakValueDictionary[str, AgentsPanel] = weakref.WeakValueDictionary()
_polling_lock = threading.Lock()


class AgentsPanel(widgets.VBox):
    """The Agents page of the Arena platform, for the workbench server this kernel belongs to.

    ``server`` (or ``client``) picks the server; by default it is discovered (the server
    that started this kernel, or ``AGENTS_WORKBENCH_URL``/``AGENTS_WORKBENCH_TOKEN``).
    ``poll_interval`` is the seconds between status polls while the panel is open.
    """

    def __init__(self, server: ServerInfo | None = None, *,
                 client: WorkbenchClient | None = None, poll_interval: float = 2.0,
                 autostart: bool = True) -> None:
        self.state = PanelState()
        self.client: WorkbenchClient | None = client
        self.poll_interval = poll_interval
        self.poller: StatusPoller | None = None
        self.wizard: NewAgentWizard | None = None
        self.server_error: str | None = None
        self._lock = threading.RLock()
        self._failures = 0
        self._offline = False
        self._closed = False

        self.title = widgets.HTML("<div class='awb-title'>Agents</div>")
        self.subtitle = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             tooltip="Read agents and experiments again")
        self.new_button = widgets.Button(description="New Agent", icon="plus",
                                         button_style="primary", disabled=True,
                                         tooltip="Loading experiments…")
        self.gate_hint = widgets.HTML()
        self.import_button = widgets.Button(description="Import", icon="upload",
                                            tooltip="Import a checkpoint trained elsewhere")
        self.import_button.on_click(lambda _b: self.open_import())
        # Built on first click: most sessions never open it, and the panel's build stays lean.
        self.tokens_button = widgets.Button(description="Access tokens", icon="key",
                                            tooltip="Tokens for the Arena SDK and CLI")
        self.tokens_area = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.tokens_button.on_click(lambda _b: self.toggle_tokens())
        topbar = gap(widgets.HBox([
            widgets.VBox([self.title, self.subtitle], layout=widgets.Layout(flex="1 1 auto")),
            self.gate_hint, self.tokens_button, self.refresh_button, self.import_button,
            self.new_button,
        ], layout=widgets.Layout(width="100%")), 8)
        topbar.add_class("awb-topbar")
        self.notice = widgets.HTML()
        self.serving_notice = ServingNotice(on_take_over=self.take_over_serving)
        self.training_line = widgets.HTML()  # experiments still training (demo_plan)

        actions = RowActions(toggle=self.toggle, delete=self.delete, expand=self.expand,
                             disconnect=self.disconnect)
        self.tables = {tab: AgentTable(tab, actions) for tab in TABS}
        self.tabs = widgets.Tab([self.tables[t] for t in TABS],
                                titles=tuple(TAB_LABELS[t] for t in TABS),
                                layout=widgets.Layout(width="100%"))
        self.retry_button = widgets.Button(description="Try again", icon="refresh")
        self.missing = widgets.VBox([self.retry_button],
                                    layout=widgets.Layout(display="none"))
        # One Layout each: close_tree closes a widget's layout with it.
        self.wizard_area = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.body = widgets.Stack(
            [widgets.VBox([self.tabs, self.missing], layout=widgets.Layout(width="100%")),
             self.wizard_area],
            selected_index=0, layout=widgets.Layout(width="100%"))

        self.tabs.observe(lambda _c: self._update_gate(), "selected_index")
        self.refresh_button.on_click(lambda _b: self.refresh())
        self.new_button.on_click(lambda _b: self.open_wizard())
        self.retry_button.on_click(lambda _b: self.retry_discovery())

        self.scroll = ScrollKeeper()
        self.public_url: str | None = None  # this server's URL as users reach it
        self.arena_base_url: str | None = None
        self.views = ViewWatch(on_change=self._views_changed)
        super().__init__([stylesheet(), self.scroll, self.views, topbar, self.notice,
                          self.serving_notice, self.training_line, self.tokens_area, self.body],
                         layout=widgets.Layout(width="100%", padding="4px"))
        self.add_class("awb-panel")

        if self.client is None:
            try:
                self.client = WorkbenchClient(server or discovery.find())
            except ServerNotFound as exc:
                self._show_missing(str(exc))
                return
        self._show_server()
        if autostart:
            self.start()

    # -- start-up ---------------------------------------------------------------------------------

    @property
    def current_tab(self) -> Tab:
        """``"classic"`` or ``"advanced"``: the tab on show."""
        return TABS[int(self.tabs.selected_index or 0)]

    def start(self) -> Future[None]:
        """Load agents and experiments, then keep polling; returns at once.

        In a Voila preheated kernel this first waits, on the worker thread, for a visitor to
        open the page: a kernel warmed up in advance must not call the API for nobody.
        """
        client = self._client()
        self._replace_previous(client.url)
        if os.environ.get("VOILA_PREHEAT") == "True":
            client.submit(_wait_for_visitor)
        return client.submit(self._first_load)

    def _first_load(self) -> None:
        try:
            self._read_public_url()
            self._load(experiments=True)
        finally:
            # Poll even when this first read failed (server restarting): the poller retries,
            # and the notice _load showed goes away once the server answers.
            if not self._closed and self.poller is None:
                self.poller = StatusPoller(self.poll_once, interval=self.poll_interval)
                self.poller.start()

    def retry_discovery(self) -> None:
        """Look for a server again (after the user started one)."""
        try:
            server = discovery.find()
        except ServerNotFound as exc:
            self._show_missing(str(exc))
            return
        self.client = WorkbenchClient(server)
        self.server_error = None
        self.missing.layout.display = "none"
        self.tabs.layout.display = ""
        self.notice.value = ""
        self._show_server()
        self.start()

    def _show_missing(self, message: str) -> None:
        self.server_error = message
        self.notice.value = f"<div class='awb-notice'>{html.escape(message)}</div>"
        self.tabs.layout.display = "none"
        self.missing.layout.display = ""
        self.new_button.disabled = True
        self.new_button.tooltip = "No workbench server found"
        self.refresh_button.disabled = True
        self.subtitle.value = "<span class='awb-subtitle'>Not connected to a server</span>"

    def _read_public_url(self) -> None:
        """Worker thread: ask the server the URL users reach it at (public_url.py)."""
        client = self._client()
        client.page_origin = self.views.origin
        try:
            info = client.server_urls()
        except WorkbenchError:
            return  # an older server, or not answering: _load says so
        self.public_url = info.get("public_url") or None
        self.arena_base_url = info.get("arena_base_url") or None
        self._show_server()

    def _views_changed(self) -> None:
        """A view of the panel opened or closed: poll again at once, or stop calling the
        server; the first page also tells where the user's browser reached the server."""
        if self.client is None or self._closed:
            return
        if self.views.origin and self.views.origin != self.client.page_origin:
            self.client.submit(self._read_public_url)
            self.client.submit(self._load)  # endpoints under the page's host
        if self.poller is not None:
            self.poller.poke()

    def _show_server(self) -> None:
        self.refresh_button.disabled = False
        url = self.public_url or self._client().url
        self.subtitle.value = (
            "<span class='awb-subtitle'>Turn trained checkpoints into HTTP endpoints · server "
            f"<code>{html.escape(url)}</code></span>")

    def _client(self) -> WorkbenchClient:
        if self.client is None:
            raise WorkbenchError(self.server_error or "No workbench server.")
        return self.client

    # -- reading the server --------------------------------------------------------------------

    def refresh(self) -> Future[None]:
        """Read agents and experiments again (on the worker thread)."""
        return self._client().submit(self._load, experiments=True)

    def poll_once(self) -> float | None:
        """One status poll (the poller's tick); returns the delay before the next one."""
        if self._closed or self.client is None:
            # Closed while the first load was starting this poller: end it from its own thread.
            if self.poller is not None:
                self.poller.stop(timeout=0)
            return None
        if not self.views.watched():
            # No page shows the panel: calling the server would only keep it from idling
            # (and from being culled). A view that opens pokes the poller.
            return IDLE_CHECK_S
        ticks = self.poller.ticks + 1 if self.poller is not None else 0
        experiments = ticks % EXPERIMENTS_EVERY == 0
        future = self.client.submit(self._load, experiments=experiments)
        try:
            future.result(timeout=60)
        except Exception:  # noqa: BLE001 - _load already showed the problem
            return min(MAX_BACKOFF_S, self.poll_interval * 2 ** min(self._failures, 4))
        if any(a.status == "Pending" for a in self.state.agents):
            return min(PENDING_POLL_S, self.poll_interval)
        return None

    def _load(self, experiments: bool = False) -> None:
        """Worker thread: read the server, then show what changed."""
        client = self._client()
        try:
            if experiments or not self.state.loaded:
                self.state.set_experiments(client.experiments())
                self.training_line.value = training_html(self.state.experiments)
            agents = client.agents()
            serving = client.serving()
        except WorkbenchError as exc:
            self._failures += 1
            with self._lock:
                self._set_notice(str(exc))
                self._offline = True
            raise
        with self._lock:
            if self._offline:  # the server answers again: drop the "cannot reach" notice
                self._set_notice("")
                self._offline = False
            self._failures = 0
            self.serving_notice.show(serving)
            self._apply_agents(agents)
            self._update_gate()

    def _apply_agents(self, agents: list[AgentInfo]) -> None:
        before = {a.name: a for a in self.state.agents}
        self.state.set_agents(agents)
        for tab in TABS:
            self.tables[tab].sync(self.state.agents_of(tab))
        # A key rotated elsewhere: never leave the old key revealed in an open row.
        for agent in agents:
            old = before.get(agent.name)
            if old is not None and old.api_key != agent.api_key:
                details = self._details(agent.name)
                if details is not None:
                    details.secret.hide()

    def _update_gate(self) -> None:
        if self.client is None:
            return
        gate = self.state.new_agent_gate(self.current_tab)
        self.new_button.disabled = not gate.enabled
        self.new_button.tooltip = gate.tooltip
        self.gate_hint.value = "" if gate.enabled or not self.state.loaded else (
            f"<span class='awb-hint'>No {TAB_LABELS[self.current_tab]} experiment with "
            "checkpoints yet</span>")

    # -- notices -------------------------------------------------------------------------------

    def _set_notice(self, message: str, ok: bool = False) -> None:
        """One line under the top bar: an error (red) or a confirmation (green); "" clears."""
        if not message:
            self.notice.value = ""
            return
        css = "awb-ok" if ok else "awb-notice"
        self.notice.value = f"<div class='{css}'>{html.escape(message)}</div>"

    # -- running actions -----------------------------------------------------------------------

    def _run(self, call: Callable[[], T], on_ok: Callable[[T], None],
             on_error: Callable[[WorkbenchError], None]) -> Future[None]:
        """Run ``call`` on the worker, then ``on_ok``/``on_error`` there under the UI lock."""
        def job() -> None:
            try:
                result = call()
            except WorkbenchError as exc:
                with self._lock:
                    on_error(exc)
                return
            with self._lock:
                on_ok(result)
        return self._client().submit(job)

    def _row(self, name: str) -> AgentRow | None:
        for table in self.tables.values():
            if name in table.rows:
                return table.rows[name]
        return None

    def row(self, name: str) -> AgentRow:
        """The row of agent ``name`` (KeyError if it is not on either tab)."""
        row = self._row(name)
        if row is None:
            raise KeyError(f"No row for agent {name!r}")
        return row

    def _details(self, name: str) -> DeploymentDetails | None:
        row = self._row(name)
        details = row.details if row is not None else None
        return details if isinstance(details, DeploymentDetails) else None

    def _agent_changed(self, agent: AgentInfo) -> None:
        self.state.put_agent(agent)
        row = self._row(agent.name)
        if row is not None:
            row.done(agent)
        self.tables[agent.tab].sync(self.state.agents_of(agent.tab))
        if self.poller is not None:
            self.poller.poke()

    def toggle(self, name: str) -> Future[None] | None:
        """Connect, Disconnect or Retry (reconnect a Failed agent), as the row's button says."""
        agent = self.state.agent(name)
        if agent is None:
            return None
        return self._switch(name, connect=toggle_connects(agent))

    def disconnect(self, name: str) -> Future[None] | None:
        """Switch the agent off, whatever its status (the Failed row's power button)."""
        return self._switch(name, connect=False)

    def _switch(self, name: str, *, connect: bool) -> Future[None] | None:
        row = self._row(name)
        if row is None or row.busy:
            return None
        client = self._client()
        with self._lock:
            row.set_busy("Connecting…" if connect else "Disconnecting…")
            self._set_notice("")

        def failed(exc: WorkbenchError) -> None:
            row.done()
            verb = "connect" if connect else "disconnect"
            self._set_notice(f"Could not {verb} {name}: {exc}")

        call = (lambda: client.connect(name)) if connect else (lambda: client.disconnect(name))
        return self._run(call, self._agent_changed, failed)

    def delete(self, name: str) -> Future[None]:
        """Delete the agent (its row asked for confirmation first)."""
        client = self._client()

        def deleted(_result: None) -> None:
            self.state.drop_agent(name)
            for table in self.tables.values():
                table.sync(self.state.agents_of(table.tab))

        def failed(exc: WorkbenchError) -> None:
            if isinstance(exc, ApiError) and exc.status == 404:
                deleted(None)  # gone already: what the user wanted
                return
            row = self._row(name)
            if row is not None:
                row.delete_failed()
            self._set_notice(f"Could not delete {name}: {exc}")

        return self._run(lambda: client.delete_agent(name), deleted, failed)

    def expand(self, name: str) -> Future[None] | None:
        """Open (or close) a Deployed, connected agent's details under its row."""
        row = self._row(name)
        if row is None:
            return None
        with self._lock:
            if row.expanded:
                row.collapse()
                return None
        # Building the snippets may import gymnasium and make an environment: worker thread.
        return self._client().submit(self._expand, name)

    def _expand(self, name: str) -> None:
        with self._lock:
            row = self._row(name)
            agent = self.state.agent(name)
            if row is None or agent is None or not chevron_visible(agent) or row.expanded:
                return
            details = DeploymentDetails(
                agent, self.state.experiment(agent.experiment),
                key=lambda: self.state.api_key(name), on_rotate=self.rotate_key,
                client=self.client)
            row.expand(details)

    def rotate_key(self, name: str) -> Future[None]:
        """Give the agent a new key (its details asked for confirmation first)."""
        client = self._client()

        def rotated(agent: AgentInfo) -> None:
            self.state.put_agent(agent)
            details = self._details(name)
            if details is not None:
                details.key_rotated()

        def failed(exc: WorkbenchError) -> None:
            details = self._details(name)
            if details is not None:
                details.key_rotated(error=f"Could not rotate the key: {exc}")
            else:
                self._set_notice(f"Could not rotate the key of {name}: {exc}")

        return self._run(lambda: client.rotate_key(name), rotated, failed)

    def take_over_serving(self) -> Future[None]:
        """Make this panel's server load the workspace's agents (its serving one stopped)."""
        client = self._client()
        self.serving_notice.button.disabled = True

        def done(state: dict[str, Any]) -> None:
            self.serving_notice.show(state)
            self._set_notice("This server now serves the workspace's agents.", ok=True)

        def failed(exc: WorkbenchError) -> None:
            self.serving_notice.button.disabled = False
            self._set_notice(f"Could not take over serving: {exc}")

        return self._run(client.take_over_serving, done, failed)

    # -- the wizard ----------------------------------------------------------------------------

    def open_wizard(self) -> NewAgentWizard | None:
        """Open Create New Agent for the current tab (when New Agent is enabled)."""
        tab = self.current_tab
        if self.new_button.disabled:
            return None
        with self._lock:
            self.close_wizard()
            self.wizard = NewAgentWizard(
                tab, self.state.sources(tab),
                on_create=self.create_agent, on_cancel=self.close_wizard,
                taken=[a.name for a in self.state.agents])
            self.wizard_area.children = [self.wizard]
            self.body.selected_index = 1
            self.scroll.reveal()
        return self.wizard

    def open_import(self) -> Any:
        """Open the Import dialog (agents_widget/import_dialog.py) in the wizard's place."""
        from .import_dialog import ImportDialog

        client = self.client
        if client is None:
            return None

        def imported(_experiment: dict[str, Any]) -> None:
            self.refresh()  # the new experiment shows in New Agent at once

        with self._lock:
            self.close_wizard()
            dialog = ImportDialog(server=client.server, submit=client.submit,
                                  root=_served_folder(client.server),
                                  on_done=imported, on_cancel=self.close_wizard)
            self.wizard_area.children = [dialog]
            self.body.selected_index = 1
        return dialog

    def close_wizard(self) -> None:
        """Back to the tables, freeing the wizard's widgets."""
        with self._lock:
            wizard, self.wizard = self.wizard, None
            self.wizard_area.children = []
            self.body.selected_index = 0
            if wizard is not None:
                wizard.close()
                # The tables are shorter than the wizard was: keep the panel, and the line
                # saying what happened, on screen instead of an empty area below it.
                self.scroll.reveal()

    def create_agent(self, request: CreateRequest) -> Future[None]:
        """Create the agent the wizard describes; errors show inline in the wizard."""
        client = self._client()
        wizard = self.wizard

        def created(agent: AgentInfo) -> None:
            self.state.put_agent(agent)
            self.tables[agent.tab].sync(self.state.agents_of(agent.tab))
            if self.wizard is wizard:
                self.close_wizard()
            self._set_notice(f"Created {agent.name} (Undeployed). Click Connect on its row to "
                             "deploy it.", ok=True)

        def failed(exc: WorkbenchError) -> None:
            if wizard is not None:
                wizard.show_error(str(exc))

        return self._run(
            lambda: client.create_agent(request.name, experiment=request.experiment,
                                        checkpoint=request.checkpoint,
                                        description=request.description,
                                        options=request.options),
            created, failed)

    # -- housekeeping --------------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until every call submitted so far has been answered and applied."""
        if self.client is not None:
            self.client.submit(lambda: None).result(timeout)

    def _replace_previous(self, url: str) -> None:
        with _polling_lock:
            previous = _polling.get(url)
            _polling[url] = self
        if previous is not None and previous is not self:
            previous.retire("This Agents panel was replaced by a newer one for the same "
                            "server (re-run the cell to use it here again).")

    def retire(self, reason: str) -> None:
        """Stop polling and free every widget but a note saying ``reason`` (still on show)."""
        self._stop()
        with self._lock:
            if self.wizard is not None:
                self.wizard.close()
                self.wizard = None
            old: list[widgets.Widget] = list(getattr(self, "children", ()))
            note = widgets.HTML(f"<div class='awb-hint'>{html.escape(reason)}</div>")
            self.children = [note]
            for child in old:
                close_tree(child)

    def _stop(self) -> None:
        self._closed = True
        if self.poller is not None:
            self.poller.stop()
        if self.client is not None:
            self.client.close()
        with _polling_lock:
            if self.client is not None and _polling.get(self.client.url) is self:
                del _polling[self.client.url]

    def toggle_tokens(self) -> AccessTokens | None:
        """Open the Access tokens section (built now), or close it; the open one or ``None``."""
        with self._lock:
            for old in self.tokens_area.children:
                close_tree(old)
            if self.tokens_area.children or self.client is None:
                self.tokens_area.children = ()
                return None
            section = AccessTokens(self.client, control_plane=self.arena_base_url)
            self.tokens_area.children = (section,)
            return section

    def close(self) -> None:
        """Stop polling, close the client and every widget of the panel."""
        self._stop()
        with self._lock:
            if self.wizard is not None:
                self.wizard.close()
                self.wizard = None
            close_tree(self)

    def __repr__(self) -> str:
        url = self.client.url if self.client is not None else None
        return f"AgentsPanel(server={url!r})"


def _wait_for_visitor() -> None:
    """Block (worker thread) until Voila hands this preheated kernel to a visitor."""
    try:
        from voila.utils import wait_for_request
    except ImportError:
        return
    try:
        wait_for_request()
    except Exception:  # worst case the panel loads now instead of later
        log.warning("Waiting for the Voila visitor failed; loading the panel now.",
                    exc_info=True)


def _served_folder(server: ServerInfo) -> Path:
    """The workspace folder the server serves (its discovery record), else the kernel's."""
    root = getattr(server, "root", None) or os.environ.get("AGENTS_WORKBENCH_ROOT")
    return Path(root).expanduser() if root else Path.cwd()
