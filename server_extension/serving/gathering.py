"""Gathering concurrent calls into batches, without a timer: what both batchers share.

Callers on worker threads hand a :class:`Pending` request to :meth:`Gatherer.wait_for`. The
first caller with nobody ahead of it becomes the lead and runs at once; callers arriving while
a batch runs queue up. When the batch ends, the lead wakes the caller at the head of the queue
to lead the next one, which takes what ``pick`` chooses from the queue. So a lone request
never waits, and batches grow only as fast as requests pile up behind a running one.

``run`` fills in each request's result (or its ``error``); ``wait_for`` raises that error in
the caller's own thread. Used by :mod:`server_extension.serving.batching` (get_action) and
:mod:`server_extension.serving.generate_batching` (LLM generate).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar


@dataclass(kw_only=True)
class Pending:
    """A request waiting to be run in a batch; subclasses add its input and result."""

    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # set instead of a result: this caller runs the next batch
    error: BaseException | None = None


P = TypeVar("P", bound=Pending)


class Gatherer(Generic[P]):
    """The queue and the lead hand-off.

    ``pick(queue)`` returns ``(batch, rest)``: the requests to run now (the queue's head among
    them) and those left waiting. ``run(batch)`` runs them and sets each one's result or error.
    Thread-safe; ``pick`` is called under the gatherer's lock, ``run`` outside it.
    """

    def __init__(self, pick: Callable[[list[P]], tuple[list[P], list[P]]],
                 run: Callable[[list[P]], None]) -> None:
        self._pick = pick
        self._run = run
        self._lock = threading.Lock()
        self._queue: list[P] = []
        self._running = False

    @property
    def waiting(self) -> int:
        """Requests queued behind the running batch."""
        with self._lock:
            return len(self._queue)

    def wait_for(self, request: P) -> None:
        """Run ``request`` in a batch and return once it is done; raise its error if any."""
        with self._lock:
            self._queue.append(request)
            lead = not self._running
            self._running = True
        if not lead:
            request.done.wait()
            lead = request.lead
        if lead:
            self._lead()
        if request.error is not None:
            raise request.error

    def _lead(self) -> None:
        """Run one batch from the queue's head, then pass the lead on (or stand down)."""
        with self._lock:
            batch, self._queue = self._pick(self._queue)
        try:
            self._run(batch)
        finally:
            with self._lock:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    self._running = False
            for item in batch:
                item.done.set()
