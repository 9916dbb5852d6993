"""Constants and helpers for tests of the ``ray`` backend (fixtures: tests/ray_fixtures.py)."""

from __future__ import annotations

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
