"""Imported by the warm template process (multiprocessing's fork server) before any fork.

The frameworks to import come from ``AGENTS_WORKBENCH_PRELOAD`` (set by the supervisor), so
the template pays only for what the workspace's experiments use. Nothing here may raise: a
failing preload would take the template down, and every worker is forked from it.
"""

from __future__ import annotations

import contextlib
import os

from server_extension.serving.worker import child

# A worker that needs a module that failed here imports it itself and reports why.
with contextlib.suppress(Exception):
    child.preload([f for f in os.environ.get("AGENTS_WORKBENCH_PRELOAD", "").split(",") if f])
