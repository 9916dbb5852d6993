"""Fixtures shared by the OpenAI API test modules: one served tiny chat model per module.

Imported by name into each module (pytest finds fixtures in the module's namespace), so each
module still gets its own server: they run on different xdist workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from server_extension.demos.llm import SFT_EXPERIMENT, one_torch_thread
from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.llm import LLMRuntime
from tests.servers import ServerProcess, start_server
from workbench_core.store import ExperimentStore

MODEL = "chat"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # The server runs torch on one thread (OMP_NUM_THREADS=1); so does the reference here.
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           advanced_experiments: Path) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    """A server over a copy of the advanced demo, with the SFT chat model deployed as MODEL."""
    server = start_server(tmp_path_factory.mktemp("openai") / "ws", advanced_experiments)
    try:
        yield server, server.deploy(MODEL, SFT_EXPERIMENT)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent(served: tuple[ServerProcess, dict[str, Any]]) -> dict[str, Any]:
    """The deployed agent's record (endpoint and key)."""
    return served[1]


@pytest.fixture(scope="module")
def client(agent: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """The official client on the agent's ``/v1``, with its key and no retries."""
    with openai.OpenAI(base_url=agent["endpoint"] + "/v1", api_key=agent["api_key"],
                       max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(served: tuple[ServerProcess, dict[str, Any]]) -> Iterator[LLMRuntime]:
    """The deployed checkpoint (best step), loaded in this process."""
    experiment = ExperimentStore(served[0].root).get(SFT_EXPERIMENT)
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.best_step()))
    assert isinstance(runtime, LLMRuntime)
    yield runtime
    runtime.close()
