"""Bring part of the panel back into view after it changes size under the user.

When the wizard (tall) gives way to the tables (short), the notebook keeps its scroll
position, which now lies below the panel: the user sees an empty notebook area and has to
scroll up to find the table and the "Created ..." line. :class:`ScrollKeeper` sits invisibly
in the panel; :meth:`ScrollKeeper.reveal` asks each page showing it to scroll the panel's top
(or one of its parts) into view when it is out of sight. Example::

    keeper = ScrollKeeper()
    panel.children = [..., keeper]
    keeper.reveal()                  # after replacing the wizard with the tables
"""

from __future__ import annotations

import anywidget
import ipywidgets as widgets

_SCROLL_JS = r"""
function render({ model, el }) {
  model.on("msg:custom", (msg) => {
    if (!msg || msg.type !== "reveal") return;
    // After the widget messages that came before this one have been laid out.
    requestAnimationFrame(() => requestAnimationFrame(() => {
      const panel = el.closest(".awb-panel");
      if (!panel) return;
      const target = (msg.selector && panel.querySelector(msg.selector)) || panel;
      const box = target.getBoundingClientRect();
      const height = window.innerHeight || document.documentElement.clientHeight;
      if (box.top < 0 || box.top > height - 60) target.scrollIntoView({ block: "start" });
    }));
  });
}
export default { render };
"""


class ScrollKeeper(anywidget.AnyWidget):
    """An invisible widget that scrolls its panel into view on request."""

    _esm = _SCROLL_JS

    def __init__(self) -> None:
        super().__init__(layout=widgets.Layout(display="none"))

    def reveal(self, selector: str = "") -> None:
        """Scroll the panel (or its first element matching ``selector``) into view."""
        self.send({"type": "reveal", "selector": selector})
