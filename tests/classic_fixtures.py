"""Fixtures for the multi-agent and recurrent Classic RL tests.

Test modules load them with ``pytest_plugins = ["tests.classic_fixtures"]``, so the quick
demo is trained once per run and one real server (all four agents deployed) is shared.
"""

from __future__ import annotations

import gc
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_extension.demos.classic_multi_recurrent import (
    MEMORY,
    SPEAKER_LISTENER,
    SPREAD,
    TICTACTOE,
)
from tests.servers import ServerProcess

CLASSIC_AGENTS = {
    "ttt": TICTACTOE,
    "spread": SPREAD,
    "speaker": SPEAKER_LISTENER,
    "memory": MEMORY,
}


@pytest.fixture(scope="session")
def classic_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiments/`` of a quick classic demo workspace (real AgileRL training, seconds)."""
    from server_extension.demos.classic_multi_recurrent import build_classic_demo
    from tests.conftest import built_once

    def build(root: Path) -> None:
        build_classic_demo(root, quick=True)

    return built_once(tmp_path_factory, "classic-workspace", build) / "experiments"


@pytest.fixture(scope="session")
def classic_root(classic_experiments: Path) -> Path:
    """The workspace root holding :func:`classic_experiments` (read-only for tests)."""
    return classic_experiments.parent


@pytest.fixture(scope="session")
def classic_server(
    tmp_path_factory: pytest.TempPathFactory, classic_experiments: Path
) -> Iterator[ServerProcess]:
    """A real ``jupyter server`` over a copy of the classic workspace, shared by the session."""
    root = tmp_path_factory.mktemp("classic-served")
    shutil.copytree(classic_experiments, root / "experiments")
    with warnings.catch_warnings():
        # ServerProcess.start never closes its copy of the log file; the handle sits in a
        # reference cycle until the collector runs, so collect it here, quietly.
        warnings.simplefilter("ignore", ResourceWarning)
        proc = ServerProcess(root).start()
        gc.collect()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def classic_agents(classic_server: ServerProcess) -> dict[str, dict[str, Any]]:
    """Every classic demo experiment deployed once: short name -> agent JSON (endpoint, key)."""
    return {short: classic_server.deploy(short, experiment)
            for short, experiment in CLASSIC_AGENTS.items()}
