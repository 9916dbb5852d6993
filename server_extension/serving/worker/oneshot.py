"""One-shot workers: a ``main(argv)`` run once in a process forked from a warm template.

An import's check and an evaluation load the user's checkpoint, so they run outside the
server, as before; but where each used to start a fresh interpreter (seconds of importing
torch and AgileRL, every time) they now fork from their family's template, as an agent's
worker does. The template starts on first use when none runs yet (the CLI's one import pays
the imports once, as a fresh interpreter did).

A :class:`ForkedRun` has the part of :class:`subprocess.Popen` its callers use (``poll``,
``wait``, ``kill``), with the worker's guarantees: the run leads a session of its own, is
signalled only through the pidfd it sent at start, and whatever it started dies with it.

Example::

    run = ForkedRun("agilerl", "server_extension.serving.importing.worker:main",
                    ["worker", "request.json", "result.json"], log_path)
    code = run.wait(timeout=300)  # None: still running
    run.kill()  # the run and its session; safe to call when it has ended
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

from server_extension.serving.worker import child, families, tree
from server_extension.serving.worker.supervisor import (
    Template,
    WorkerDied,
    fork_from,
    start_template,
    worker_process,
)


class ForkedRun:
    """``entry(argv)`` running in a fork of ``framework``'s family template."""

    def __init__(self, framework: str, entry: str, argv: list[str], log_path: Path, *,
                 name: str = "one-shot") -> None:
        family = families.family_of(framework)
        for attempt in (1, 2):
            # start_template starts the family's template again when it has died.
            template = start_template(family)
            try:
                self._pidfd: int | None = self._fork(template, entry, argv, log_path, name)
                return
            except WorkerDied:
                # A run (this user's code) may just have killed the template: once it is
                # gone, the next start_template starts a new one.
                if attempt == 2 or not template.wait_gone(5.0):
                    raise

    def _fork(self, template: Template, entry: str, argv: list[str], log_path: Path,
              name: str) -> int:
        parent, sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = worker_process(child.run_once,
                                   (sock, template.pid, str(log_path), entry, list(argv)), name)
        try:
            return fork_from(template, self.proc, parent, sock,
                             describe=lambda: how_it_ended(self.proc.exitcode))
        finally:
            sock.close()
            parent.close()

    @property
    def pid(self) -> int:
        """The run's process id (its session id too)."""
        return int(self.proc.pid or 0)

    def poll(self) -> int | None:
        """Its exit status (negative: the signal that killed it), or ``None`` while it runs."""
        return self.wait(0)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds for it to end; its exit status, ``None`` if it runs
        on. Once it has ended, what it left in its session is killed."""
        self.proc.join(timeout)
        code = self.proc.exitcode
        if code is not None:
            self._release()
        return code

    def kill(self) -> int | None:
        """Stop it and its session now (SIGKILL); its exit status once gone."""
        if self._pidfd is not None:
            tree.signal_pidfd(self._pidfd, signal.SIGKILL)
        self._kill_session()
        return self.wait(10.0)

    def _kill_session(self) -> None:
        # After the run itself has gone its id names the session still: the kernel hands an
        # id that a live session or group uses to no new process.
        if self._pidfd is not None and self.pid:
            tree.kill_session(self.pid)

    def _release(self) -> None:
        self._kill_session()
        tree.close_quietly(self._pidfd)
        self._pidfd = None


def how_it_ended(code: int | None) -> str:
    """A run's exit status in words: "exited with status 3", "was killed by signal
    SIGKILL", "was stopped" (``None``: no status, it was stopped before it ended)."""
    if code is None:
        return "was stopped"
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by signal {signal.Signals(-code).name}"
    except ValueError:  # a signal number with no name (a real-time signal)
        return f"was killed by signal {-code}"


__all__ = ["ForkedRun", "how_it_ended"]
