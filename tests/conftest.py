"""Shared fixtures: one quick-trained workspace per run, real servers around it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from tests.servers import ServerProcess, copy_workspace, running_server

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Torch on 2 shared cores: one thread per process keeps test servers from fighting the runner.
os.environ.setdefault("OMP_NUM_THREADS", "1")


BUILDS_ENV = "AGENTS_WORKBENCH_TEST_BUILDS"


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """A folder ``build`` fills once per test run, however many xdist workers ask for it.

    Under xdist every worker has its own session, so a session fixture alone would train the
    demo once per worker. The workers' temp folders share one parent for the run: the first
    worker to get there builds under a file lock and the others wait and reuse its result.
    Callers treat the folder as read-only (tests copy it before writing).
    """
    base = tmp_path_factory.getbasetemp()
    run_root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    # scripts/test.sh runs pytest twice (parallel, then serial) and names one folder for
    # both, so the serial phase reuses what the parallel one trained.
    shared = os.environ.get(BUILDS_ENV)
    if shared:
        run_root = Path(shared)
        run_root.mkdir(parents=True, exist_ok=True)
    target = run_root / f"built-{name}"
    with FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            # A worker that died mid-build leaves a partial folder: build it afresh.
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            (target / ".complete").touch()
    return target


def _build_demo(root: Path) -> None:
    from server_extension.demos.classic import build_demo

    build_demo(root, quick=True)


def _build_advanced(root: Path) -> None:
    from server_extension.demos.latent import build_latent_demo
    from server_extension.demos.llm import build_llm_demo
    from server_extension.demos.supervised import build_supervised_demo

    build_llm_demo(root, quick=True)
    build_supervised_demo(root, quick=True)
    build_latent_demo(root, quick=True)


@pytest.fixture(scope="session")
def demo_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiments/`` of a quick demo workspace (real AgileRL training, seconds long)."""
    return built_once(tmp_path_factory, "demo-workspace", _build_demo) / "experiments"


@pytest.fixture(scope="session")
def advanced_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiments/`` with a quick tiny LLM (full model and LoRA), a supervised model and a
    LatentPPO policy decoding through that supervised model."""
    return built_once(tmp_path_factory, "advanced-workspace", _build_advanced) / "experiments"


@pytest.fixture
def advanced_workspace(tmp_path: Path, advanced_experiments: Path) -> Path:
    """A fresh workspace root holding a copy of the Advanced Training experiments."""
    return copy_workspace(tmp_path / "advanced", advanced_experiments)


@pytest.fixture
def workspace(tmp_path: Path, demo_experiments: Path) -> Path:
    """A fresh workspace root (own registry) holding a copy of the demo experiments."""
    return copy_workspace(tmp_path / "workspace", demo_experiments)


@pytest.fixture
def jp_server_config(workspace: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """In-process server: the workbench on, no unauthenticated access, fast health checks.

    Agents run in worker processes, except in tests marked ``in_process``, which inject faults
    into a loaded runtime object and so need it in the server's own process.
    """
    isolation = "thread" if request.node.get_closest_marker("in_process") else "process"
    return {
        "ServerApp": {
            "jpserver_extensions": {"server_extension": True},
            "allow_unauthenticated_access": False,
        },
        "AgentsWorkbenchApp": {
            "root_dir": str(workspace),
            "health_check_interval": 0.5,
            "health_check_failures": 2,
            "isolation": isolation,
        },
    }


@pytest.fixture
def advanced_server(advanced_workspace: Path) -> Iterator[ServerProcess]:
    """A real ``jupyter server`` child process over the Advanced Training workspace."""
    with running_server(advanced_workspace) as proc:
        yield proc


@pytest.fixture
def server(workspace: Path) -> Iterator[ServerProcess]:
    """A real ``jupyter server`` child process over ``workspace``."""
    with running_server(workspace) as proc:
        yield proc


# Modules that measure time or load the whole machine: they run in the second, serial phase
# of scripts/test.sh (pytest -m serial, one process), never beside other tests: the soak
# judges a server's memory over time. Not the multi-node Ray module (it asserts placement and
# recovery, and runs in the `ray` group: never beside another Ray cluster) nor the benchmark
# smoke test (it checks that every table is written with no failed request, not the
# numbers; its load runs allow 10 s per request): each runs on one worker of the parallel
# phase. In the serial phase they had left the cores 40% idle for their 235 s.
SERIAL_MODULES = {"test_soak"}


# tryfirst: before -m deselects by marker and before xdist reads the groups.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the serial modules, and give every test an xdist group for ``--dist loadgroup``.

    A test's group is its module, so a module's shared servers are started by one worker only;
    every test that starts Ray shares one group (one worker), so two Ray clusters never fight
    for the two cores. Groups are queued in :func:`_queue_position`'s order.
    """
    for item in items:
        # nbval's notebook cells have no module: group them by their file.
        owner = getattr(item, "module", None)
        module = owner.__name__.rsplit(".", 1)[-1] if owner else Path(item.path).stem
        if module in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("xdist_group") is None:
            group = "ray" if item.get_closest_marker("ray") else module
            item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=_queue_position)
    # Set on xdist workers under --dist loadgroup; absent without xdist (-n 0, the serial phase).
    if config.getoption("loadgroup", default=False):
        _name_groups(items)


# Modules whose servers stop in the background for long after their last test (a hub's
# orderly shutdown, up to two minutes: tests/servers.py stop_in_background). They start early,
# so that the stop overlaps other modules: scheduled last, the session waited 160 s for it at
# its end (ci26: the last test at 01:30:56, the session's end at 01:33:36).
EARLY_MODULES = {"test_jupyterhub"}


def _queue_position(item: pytest.Item) -> int:
    """Where ``item``'s group goes in xdist's queue: Ray first (the longest single queue),
    then :data:`EARLY_MODULES`, then the rest in collection order."""
    if item.get_closest_marker("ray"):
        return 0
    return 1 if Path(item.path).stem in EARLY_MODULES else 2


def _name_groups(items: list[pytest.Item]) -> None:
    """Append ``@group`` to each node id on an xdist worker, as xdist itself means to.

    xdist 3.8 does it by assigning ``item._nodeid``, which pytest 9 no longer reads (a node's
    id lives in ``_id``): the groups were then silently ignored, every test was scheduled on
    its own, and modules set their servers up on both workers at once (two Ray clusters, two
    hubs). Under pytest 8 ``_id`` does not exist and xdist's own hook does the work.
    """
    try:
        from _pytest.nodeid import coerce_node_id  # pytest 9's structured node ids
    except ImportError:
        return
    for item in items:
        marker = item.get_closest_marker("xdist_group")
        if marker is not None and hasattr(item, "_id") and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{marker.args[0]}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Wait for servers whose shutdown was left to run in the background (tests/servers.py)."""
    from tests.servers import wait_for_background_stops

    wait_for_background_stops()

