"""Imported by the warm template process (multiprocessing's fork server) before any fork.

The frameworks to import come from ``AGENTS_WORKBENCH_PRELOAD`` (set by the supervisor), so
the template pays only for what the workspace's experiments use. Nothing here may raise: a
failing preload would take the template down, and every worker is forked from it.

The template dies with the server (``PR_SET_PDEATHSIG``, even when the server is killed with
SIGKILL), and each worker takes its own session down when the template goes (``child.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal

from server_extension.serving.worker import child, tree

_server = int(os.environ.get("AGENTS_WORKBENCH_SERVER_PID", "0") or 0)
if _server:
    tree.parent_death_signal(signal.SIGKILL, _server)

# A worker that needs a module that failed here imports it itself and reports why.
with contextlib.suppress(Exception):
    child.preload([f for f in os.environ.get("AGENTS_WORKBENCH_PRELOAD", "").split(",") if f])
