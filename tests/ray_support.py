"""Constants and helpers for tests of the ``ray`` backend (fixtures: tests/ray_fixtures.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# Joining Ray and starting a replica (which imports torch and AgileRL) takes tens of seconds
# on a busy 2-core machine; the first deploy of a server waits this long.
RAY_DEPLOY_TIMEOUT = 240.0
# Fractions of a CPU per replica, so a module's agents fit on the 2-CPU cluster together.
REPLICA_CPUS = 0.1


def ray_server_args(address: str, *, default_backend: str = "ray") -> list[str]:
    """``jupyter server`` arguments that point the workbench at the cluster at ``address``."""
    return [f"--AgentsWorkbenchApp.ray_address={address}",
            f"--AgentsWorkbenchApp.backend={default_backend}",
            f"--AgentsWorkbenchApp.ray_replica_cpus={REPLICA_CPUS}"]


def leave_ray() -> None:
    """Disconnect this test process from its cluster, and forget Serve's controller handle.

    Serve caches that handle in a module global, tied to the driver's job id; job ids start
    again on every cluster, so the next module's driver on another cluster (same job id)
    would be handed the old cluster's controller and fail with "Can't find actor".
    """
    import ray
    from ray.serve import context

    ray.shutdown()
    context._disconnect()


@contextmanager
def raised_priority() -> Iterator[None]:
    """Start child processes at a higher CPU priority (where allowed), then return to normal.

    Ray 2.60's raylet aborts its own start when its Python agents take more than a few
    seconds to come up, which is what happens on a shared 2-core machine under load. Niceness
    is per thread on Linux and a child inherits its forking thread's, so the cluster's
    processes (and the replicas they spawn) keep the boost while this thread goes back.
    """
    try:
        os.nice(-10)
    except PermissionError:
        yield
        return
    try:
        yield
    finally:
        os.nice(10)
