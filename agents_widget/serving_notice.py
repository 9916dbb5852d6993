"""The line the panel shows while the workspace's serving server does not respond.

Several servers may share a workspace; one of them loads the agents (the server's
``serving/lease.py``). When that one stops beating (frozen by Ctrl-Z or SIGSTOP, hung), every
other server's panel says so here, with a **Take over serving** button that makes the server
behind this panel the serving one. Hidden the rest of the time. Example::

    notice = ServingNotice(on_take_over=panel.take_over_serving)
    notice.show(client.serving())
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from .viewkit import gap


class ServingNotice(widgets.HBox):
    """A warning and the takeover button, shown only while a takeover is possible."""

    def __init__(self, on_take_over: Callable[[], Any]) -> None:
        self.text = widgets.HTML()
        self.button = widgets.Button(description="Take over serving", icon="exchange",
                                     button_style="warning",
                                     tooltip="Load this workspace's agents in this server")
        self.button.on_click(lambda _b: on_take_over())
        super().__init__([self.text, self.button],
                         layout=widgets.Layout(width="100%", display="none"))
        gap(self, 8)
        self.state: dict[str, Any] = {}

    def show(self, state: dict[str, Any]) -> None:
        """Show or hide the notice for the server's ``GET agents/api/serving`` answer."""
        self.state = state
        if state.get("can_take_over") and state.get("message"):
            self.text.value = (f"<div class='awb-notice'>{html.escape(str(state['message']))}"
                               "</div>")
            self.button.disabled = False
            self.layout.display = "flex"
        else:
            self.layout.display = "none"

    @property
    def visible(self) -> bool:
        """Whether the notice (and its button) is on show."""
        return self.layout.display != "none"
