"""The Voila app: standalone (``agents-workbench app``) and as an extension of jupyter server.

Each test runs the real thing in a child process over a demo workspace, renders the page
(which executes Agents.ipynb in a kernel) and reads the host's access log to see the
panel's kernel reach the management API.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import REPO, running_server, wait_until
from tests.servers import VoilaApp as App

KERNEL_CALL = "GET /agents/api/agents"


@pytest.fixture
def app(workspace: Path) -> Iterator[App]:
    made = App(workspace)
    try:
        yield made
    finally:
        made.stop()


def test_app_publishes_the_panel_with_the_workbench_api(app: App) -> None:
    assert "cartpole-dqn" in {e["name"] for e in app.api("experiments").json()["experiments"]}
    assert requests.get(f"{app.url}agents/api/agents", timeout=10).status_code == 403
    assert app.api("agents", token="wrong").status_code == 403
    assert requests.get(app.url, timeout=10, allow_redirects=False).status_code == 302

    discovery = list(app.runtime.glob("agents-workbench-*.json"))
    assert len(discovery) == 1
    assert json.loads(discovery[0].read_text())["url"] == app.url

    page = requests.get(f"{app.url}?token={app.token}", timeout=60)
    assert page.status_code == 200
    assert "application/vnd.jupyter.widget-view+json" in page.text
    assert "Traceback" not in page.text
    # The panel's kernel found the app's API and read it.
    wait_until(lambda: KERNEL_CALL in app.log(), timeout=30, what="the kernel's API call")

    assert app.stop() == 0
    assert not discovery[0].exists()


def test_preheated_kernel_waits_for_a_visitor(workspace: Path) -> None:
    app = App(workspace, "--preheat")
    try:
        wait_until(lambda: "is filled with 1 kernel" in app.log(), timeout=60,
                   what="the preheated kernel to run the notebook")
        time.sleep(1.0)
        assert KERNEL_CALL not in app.log()  # warm, and nobody asked: no API calls
        page = requests.get(f"{app.url}?token={app.token}", timeout=60)
        assert page.status_code == 200
        assert "Using pre-heated kernel" in app.log()
        wait_until(lambda: KERNEL_CALL in app.log(), timeout=30, what="the visitor's panel")
    finally:
        app.stop()


def test_voila_as_a_server_extension_reaches_the_workbench(workspace: Path) -> None:
    shutil.copy(REPO / "notebooks" / "Agents.ipynb", workspace / "Agents.ipynb")
    # Voila's own install enables voila.server_extension in jupyter_server_config.d.
    with running_server(workspace, extra_args=["--ServerApp.log_level=DEBUG"]) as server:
        page = server.session.get(server.url + "voila/render/Agents.ipynb", timeout=60)
        assert page.status_code == 200
        assert "application/vnd.jupyter.widget-view+json" in page.text
        wait_until(lambda: KERNEL_CALL in server.log(), timeout=30,
                   what="the kernel's API call")
