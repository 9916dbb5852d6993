"""Entries for the one-shot worker tests (``test_oneshot.py``): each is a ``main(argv)`` that
a run forked from a template calls, as the import's check and the evaluation are called."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def report(argv: list[str]) -> int:
    """Print a line, write this process's parent and session to ``argv[1]``, exit with
    ``argv[2]``."""
    print("one-shot says hello", flush=True)
    Path(argv[1]).write_text(f"{os.getppid()} {os.getsid(0)} {os.getpid()}", "utf-8")
    return int(argv[2])


def leave_a_child(argv: list[str]) -> int:
    """Fork a child that would sleep for five minutes, write its pid to ``argv[1]``, return."""
    pid = os.fork()
    if pid == 0:
        time.sleep(300)
        os._exit(0)
    Path(argv[1]).write_text(str(pid), "utf-8")
    return 0


def hang(argv: list[str]) -> int:
    """Never return (a checkpoint whose loading hangs)."""
    print("hanging", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)


def kill_the_template(argv: list[str]) -> int:
    """SIGKILL this run's parent, the template (user code can: it runs as the user), then
    write ``argv[1]``. It ignores the SIGTERM the template's death sends it, so that it
    can say when it has signalled."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.kill(os.getppid(), signal.SIGKILL)
    Path(argv[1]).write_text("done", "utf-8")
    return 0
