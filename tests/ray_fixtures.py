"""Fixtures for the ``ray`` serving backend: one local Ray cluster per test module.

Test modules load them with ``pytest_plugins = ["tests.ray_fixtures"]``. The cluster runs in
the test process (2 CPUs, no dashboard) and the servers under test join it through
``AgentsWorkbenchApp.ray_address``, so each module pays for one Ray start, not one per server.
Tests that use it are marked ``ray``; ``-m "not ray"`` skips them where Ray cannot start.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ray_support import RAY_DEPLOY_TIMEOUT, leave_ray, raised_priority, ray_server_args


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """The GCS address of a local Ray cluster started for this module, stopped after it."""
    pytest.importorskip("ray")
    from server_extension.serving.ray_backend import start_local_ray

    with raised_priority(), warnings.catch_warnings():
        # A start that failed and was retried leaves Popen objects of processes it killed;
        # collected here, they would warn that they were never waited for.
        warnings.simplefilter("ignore", ResourceWarning)
        address = start_local_ray(2, attempts=4, namespace="agents-workbench-tests")
        gc.collect()
    try:
        yield address
    finally:
        leave_ray()


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def backend(request: pytest.FixtureRequest) -> str:
    """The serving backend a module's servers use by default: each test runs on both."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def backend_args(request: pytest.FixtureRequest, backend: str) -> list[str]:
    """Server arguments for :func:`backend` (a Ray cluster is started only for ``ray``)."""
    if backend == "local":
        return []
    address: Any = request.getfixturevalue("ray_cluster")
    return ray_server_args(address)


@pytest.fixture(scope="module")
def deploy_timeout(backend: str) -> float:
    """How long a deploy may take on :func:`backend`."""
    return RAY_DEPLOY_TIMEOUT if backend == "ray" else 60.0
