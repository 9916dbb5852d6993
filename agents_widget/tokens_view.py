"""The panel's Access tokens section: create (shown once), list, revoke with confirmation.

A token is what the Arena SDK and CLI send as ``ARENA_API_KEY`` (``ARENA_BASE_URL`` is the
server's ``agents/arena``). The secret of a new token is kept in the kernel only, behind a
:class:`~agents_widget.clipboard.SecretField` (masked, copied or revealed through custom
messages), so it never reaches widget state or notebook outputs; "Done" forgets it.

HTTP runs on the client's worker thread; the answers then set widget values. Example::

    section = AccessTokens(WorkbenchClient.discover())
    section.name_input.value = "laptop"; section.create_button.click()
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import ipywidgets as widgets

from .client import WorkbenchClient, WorkbenchError
from .clipboard import SecretField
from .viewkit import close_tree, gap


def _when(stamp: str | None) -> str:
    if not stamp:
        return "never"
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


class TokenRow(widgets.HBox):
    """One token: name, created, last used, and Revoke behind a confirmation."""

    def __init__(self, token: dict[str, Any], on_revoke: Callable[[str], object]) -> None:
        self.token_id = str(token["id"])
        self.name = str(token["name"])
        self.label = widgets.HTML(
            f"<b>{html.escape(self.name)}</b> · created {html.escape(_when(token['created_at']))}"
            f" · last used {html.escape(_when(token.get('last_used_at')))}",
            layout=widgets.Layout(flex="1 1 auto"))
        self.revoke_button = widgets.Button(description="Revoke", icon="trash",
                                            tooltip="Refuse this token from now on")
        self.confirm_button = widgets.Button(description="Revoke", button_style="danger")
        self.cancel_button = widgets.Button(description="Cancel")
        self.question = widgets.HTML(
            f"Revoke <b>{html.escape(self.name)}</b>? Scripts using it get 401 at once.")
        self.confirm_box = gap(widgets.HBox(
            [self.question, self.confirm_button, self.cancel_button],
            layout=widgets.Layout(display="none", align_items="center")), 6)
        self.revoke_button.on_click(lambda _b: self.ask(True))
        self.cancel_button.on_click(lambda _b: self.ask(False))
        self.confirm_button.on_click(lambda _b: on_revoke(self.token_id))
        super().__init__([self.label, self.revoke_button, self.confirm_box],
                         layout=widgets.Layout(width="100%", align_items="center"))

    def ask(self, show: bool) -> None:
        """Show (or hide) the revoke confirmation."""
        self.confirm_box.layout.display = "flex" if show else "none"
        self.revoke_button.layout.display = "none" if show else None


class AccessTokens(widgets.VBox):
    """Create, list and revoke the workspace's access tokens."""

    def __init__(self, client: WorkbenchClient, *, control_plane: str | None = None) -> None:
        self.client = client
        self._lock = threading.RLock()
        self._secret: str | None = None  # the newest token's secret, kernel-side only
        base = control_plane or client.url.rstrip("/") + "/agents/arena"
        self.intro = widgets.HTML(
            "<span class='awb-hint'>Access tokens let the Arena SDK and CLI use this workspace: "
            f"<code>export ARENA_BASE_URL={html.escape(base)}</code> and "
            "<code>export ARENA_API_KEY=&lt;token&gt;</code>. They also open every agent's "
            "inference URL.</span>")
        self.name_input = widgets.Text(placeholder="Token name, e.g. laptop",
                                       layout=widgets.Layout(width="260px"))
        self.create_button = widgets.Button(description="Create token", icon="plus",
                                            button_style="primary")
        self.message = widgets.HTML()
        self.secret = SecretField(lambda: self._secret, copy_label="Copy token")
        self.done_button = widgets.Button(description="Done", tooltip="Forget the secret here")
        self.new_token = gap(widgets.HBox(
            [widgets.HTML("<b>New token</b> (shown once: copy it now)"), self.secret,
             self.done_button],
            layout=widgets.Layout(display="none", align_items="center")), 6)
        self.rows = widgets.VBox(layout=widgets.Layout(width="100%"))
        self.create_button.on_click(lambda _b: self.create())
        self.done_button.on_click(lambda _b: self.forget_secret())
        super().__init__([
            self.intro,
            gap(widgets.HBox([self.name_input, self.create_button]), 6),
            self.new_token, self.message, self.rows,
        ], layout=widgets.Layout(width="100%", padding="4px 0"))
        self.refresh()

    # -- actions (HTTP on the client's worker) ---------------------------------------------

    def _run(self, work: Callable[[], object]) -> Future[None]:
        def guarded() -> None:
            try:
                work()
            except WorkbenchError as exc:
                self.message.value = f"<span class='awb-error'>{html.escape(str(exc))}</span>"
        return self.client.submit(guarded)

    def refresh(self) -> Future[None]:
        """Read the token list again."""
        return self._run(lambda: self._show(self.client.tokens()))

    def create(self) -> Future[None]:
        """Mint a token named as typed; its secret goes behind the masked field."""
        name = self.name_input.value.strip()

        def work() -> None:
            minted = self.client.create_token(name)
            with self._lock:
                self._secret = str(minted["token"])
            self.secret.hide()
            self.new_token.layout.display = "flex"
            self.name_input.value = ""
            self.message.value = (f"Created <b>{html.escape(str(minted['name']))}</b>. Copy it "
                                  "now: it is not shown again.")
            self._show(self.client.tokens())
        return self._run(work)

    def revoke(self, token_id: str) -> Future[None]:
        """Revoke a token (what a row's confirmed Revoke runs)."""
        def work() -> None:
            self.client.revoke_token(token_id)
            self.message.value = "Token revoked."
            self._show(self.client.tokens())
        return self._run(work)

    def forget_secret(self) -> None:
        """Drop the new token's secret from the kernel and hide its field."""
        with self._lock:
            self._secret = None
        self.secret.hide()
        self.new_token.layout.display = "none"

    # -- view ------------------------------------------------------------------------------

    def _show(self, tokens: list[dict[str, Any]]) -> None:
        with self._lock:
            old = list(self.rows.children)
            self.rows.children = [TokenRow(t, self.revoke) for t in tokens] or [
                widgets.HTML("<span class='awb-hint'>No access tokens yet.</span>")]
        for widget in old:
            close_tree(widget)

    def close(self) -> None:
        """Forget the secret and close every widget of the section."""
        self.forget_secret()
        close_tree(self)
