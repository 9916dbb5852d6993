"""Whether any page shows the panel, and where that page is: so polling stops with nobody
watching, and URLs name the host the user's browser reached.

The kernel side of an ipywidget is not told when its views go away: a closed notebook tab or
a cleared output leaves the model, and with it a panel polling the server forever (which
also keeps JupyterHub's idle culler from stopping the server). :class:`ViewWatch` sits
invisibly in the panel; each view of it (anywidget runs its ``render`` once per view)
reports ``open`` with its page's ``location.origin``, a ``beat`` every :data:`BEAT_S` seconds
while it lives, and ``closed`` from the cleanup anywidget runs when the view is removed. A tab
that is closed outright sends nothing more: its view lapses :data:`LAPSE_BEATS` beats later.

Example::

    watch = ViewWatch(on_change=lambda: poller.poke())
    panel.children = [..., watch]
    watch.watched()        # a view was seen lately, or none was ever seen yet (grace)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

BEAT_S = 20.0
LAPSE_BEATS = 3  # a view silent this many beats is gone (its tab was closed)
UNSEEN_GRACE_S = 120.0  # how long a panel no page has shown yet keeps polling

_WATCH_JS = r"""
function render({ model, el }) {
  const id = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const say = (event) => {
    try { model.send({ event, id, origin: window.location.origin }); } catch (e) { }
  };
  say("open");
  const timer = setInterval(() => say("beat"), model.get("beat_ms"));
  return () => { clearInterval(timer); say("closed"); };
}
export default { render };
"""


class ViewWatch(anywidget.AnyWidget):
    """An invisible widget whose views say when they open, live on and close."""

    _esm = _WATCH_JS
    beat_ms = traitlets.Int(int(BEAT_S * 1000)).tag(sync=True)

    def __init__(self, on_change: Callable[[], None] | None = None, *,
                 beat_s: float = BEAT_S, unseen_grace_s: float = UNSEEN_GRACE_S) -> None:
        super().__init__(layout=widgets.Layout(display="none"), beat_ms=int(beat_s * 1000))
        self.beat_s = beat_s
        self.unseen_grace_s = unseen_grace_s
        self.origin: str | None = None
        self.on_change = on_change
        self._lock = threading.Lock()
        self._views: dict[str, float] = {}  # view id -> when it last spoke (monotonic)
        self._born = time.monotonic()
        self._ever_seen = False
        self.on_msg(self._message)

    def _message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("id"), str):
            return
        event, view = content.get("event"), content["id"][:64]
        origin = content.get("origin")
        with self._lock:
            before = self._open_locked()
            if event == "closed":
                self._views.pop(view, None)
            elif event in ("open", "beat"):
                self._views[view] = time.monotonic()
                self._ever_seen = True
                if isinstance(origin, str) and origin.startswith(("http://", "https://")):
                    self.origin = origin
            after = self._open_locked()
        if before != after and self.on_change is not None:
            self.on_change()

    def _open_locked(self) -> int:
        cutoff = time.monotonic() - self.beat_s * LAPSE_BEATS
        for view in [v for v, seen in self._views.items() if seen < cutoff]:
            del self._views[view]
        return len(self._views)

    @property
    def open_views(self) -> int:
        """How many views are alive now."""
        with self._lock:
            return self._open_locked()

    def watched(self) -> bool:
        """Whether polling is worth it: a view is alive, or none was ever seen and the panel
        is younger than ``unseen_grace_s`` (its page may still be loading)."""
        with self._lock:
            if self._open_locked():
                return True
            return not self._ever_seen and time.monotonic() - self._born < self.unseen_grace_s
