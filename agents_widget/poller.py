"""A background status poller for the panel.

Example::

    poller = StatusPoller(panel.poll_once, interval=2.0)
    poller.start()
    ...
    poller.stop()

``tick`` runs on the poller's daemon thread, never on the kernel's event loop; it reads the
server and sets widget values, and returns how long to wait before the next tick (``None``
keeps the configured interval). The panel's tick returns a short delay while an agent is
Pending, so Deployed shows up about as soon as the server reports it, and backs off while
the server does not answer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("agents_workbench.panel")


class StatusPoller:
    """Calls ``tick`` every ``interval`` seconds (or whatever ``tick`` asks for) until stopped."""

    def __init__(self, tick: Callable[[], float | None], interval: float = 2.0,
                 name: str = "agents-panel-poller") -> None:
        self.tick = tick
        self.interval = interval
        self.ticks = 0
        self._name = name
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the poller thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling (no-op when already running)."""
        if self.running or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Tick now instead of at the end of the current wait (after a user action)."""
        self._wake.set()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop for good and wait up to ``timeout`` seconds for the thread to end."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                asked = self.tick()
            except Exception:  # a poller that dies silently would freeze the panel
                log.exception("status poll failed")
                asked = None
            self.ticks += 1
            delay = self.interval if asked is None else max(0.05, asked)
