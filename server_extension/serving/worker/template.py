"""Imported by a warm template process (a multiprocessing fork server) before any fork.

Which family to import comes from ``AGENTS_WORKBENCH_PRELOAD`` (set by the supervisor for
this one template; ``families.py`` lists what each family imports). Nothing here may raise: a
failing preload would take the template down, and every worker of its family is forked from
it. When the imports are done the template creates the file named by
``AGENTS_WORKBENCH_TEMPLATE_READY`` plus its pid: that is how the server knows a Connect no
longer waits for imports (and the panel stops saying "starting the model runtime").

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
    child.preload(os.environ.get("AGENTS_WORKBENCH_PRELOAD", "") or "full")

_ready = os.environ.get("AGENTS_WORKBENCH_TEMPLATE_READY", "")
if _ready:
    with contextlib.suppress(OSError):
        os.close(os.open(f"{_ready}.{os.getpid()}", os.O_WRONLY | os.O_CREAT, 0o600))
