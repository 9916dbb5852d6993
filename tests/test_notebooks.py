"""notebooks/Agents.ipynb runs under nbval and nbclient, and never writes a key into the file.

``pytest --nbval-lax notebooks/Agents.ipynb`` is run the way CI or a user would run it, in
a child process, pointed at a live server through AGENTS_WORKBENCH_URL/TOKEN. The
notebook is also executed with nbclient, which records widget state into the notebook's
metadata as JupyterLab's "save widget state" does, to check what the saved file holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.panel_support import start_server
from tests.servers import ServerProcess

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "Agents.ipynb"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"



@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         demo_experiments: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("notebooks") / "ws", demo_experiments)
    try:
        yield server
    finally:
        server.stop()


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    client = NotebookClient(nb, timeout=90, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    assert "widgets" not in nb.metadata


def test_agents_notebook_passes_nbval(live: ServerProcess) -> None:
    env = {**os.environ, "AGENTS_WORKBENCH_URL": live.url,
           "AGENTS_WORKBENCH_TOKEN": live.token}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", str(NOTEBOOK)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout or "1 passed" in done.stdout


def test_saved_notebook_never_holds_the_key(live: ServerProcess, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    agent = live.deploy("hygiene", "cartpole-dqn")
    monkeypatch.setenv("AGENTS_WORKBENCH_URL", live.url)
    monkeypatch.setenv("AGENTS_WORKBENCH_TOKEN", live.token)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # What a user does next: wait for the rows, open the deployed one (its key, endpoint and
    # code), display the panel again. Built in the cell so nbclient records every widget.
    nb.cells.append(nbformat.v4.new_code_cell(
        "panel.wait_idle()\n"
        "panel._expand('hygiene')\n"
        "details = panel.row('hygiene').details\n"
        "print(type(details).__name__, details.endpoint)\n"
        "panel"))
    executed = execute(nb, tmp_path)
    saved = nbformat.writes(executed)
    assert f"DeploymentDetails {agent['endpoint']}" in saved
    assert WIDGET_STATE in executed.metadata["widgets"]
    assert "SecretField" in saved or "AnyModel" in saved  # the key field was recorded
    assert agent["api_key"] not in saved


def test_notebook_without_a_server_explains(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTS_WORKBENCH_URL", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    executed = execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    state = json.dumps(executed.metadata["widgets"][WIDGET_STATE])
    assert "No running agents-workbench server" in state
    assert "agents-workbench run" in state


# Worked examples that train what they deploy: they need a server, not a prepared workspace.
EXAMPLES = ["advanced_llm.ipynb", "advanced_supervised.ipynb", "advanced_latent_ppo.ipynb"]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("examples") / "ws", None)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_notebook_passes_nbval(bare: ServerProcess, name: str) -> None:
    path = REPO / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert all(c.outputs == [] and c.execution_count is None
               for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    # The kernel learns the server from the URL and the workspace from the root variable.
    env = {**os.environ, "AGENTS_WORKBENCH_URL": bare.url,
           "AGENTS_WORKBENCH_TOKEN": bare.token, "AGENTS_WORKBENCH_ROOT": str(bare.root)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         str(path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout
