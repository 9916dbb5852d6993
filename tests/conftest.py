"""Shared fixtures: one quick-trained workspace per run, real servers around it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ServerProcess, copy_workspace, running_server

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# Torch on 2 shared cores: one thread per process keeps test servers from fighting the runner.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def demo_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiments/`` of a quick demo workspace (real AgileRL training, seconds long)."""
    from server_extension.demos.classic import build_demo

    root = tmp_path_factory.mktemp("demo-workspace")
    build_demo(root, quick=True)
    return root / "experiments"


@pytest.fixture(scope="session")
def advanced_experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiments/`` with a quick tiny LLM (full model and LoRA), a supervised model and a
    LatentPPO policy decoding through that supervised model."""
    from server_extension.demos.latent import build_latent_demo
    from server_extension.demos.llm import build_llm_demo
    from server_extension.demos.supervised import build_supervised_demo

    root = tmp_path_factory.mktemp("advanced-workspace")
    build_llm_demo(root, quick=True)
    build_supervised_demo(root, quick=True)
    build_latent_demo(root, quick=True)
    return root / "experiments"


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
