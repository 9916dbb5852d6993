"""The panel inside JupyterLab, in a real Chromium: open Agents.ipynb, run it, use the panel.

The same notebook the Voila app publishes, run by a JupyterLab user: the panel renders in
the cell's output, a Connect round-trip updates the row in place, and the key field's
front-end code (reveal, copy) works under JupyterLab's widget manager too.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    Api,
    Shots,
    button,
    in_browser,
    panel_loaded,
    pill,
    row,
    shots,
    wait_clipboard,
)
from tests.servers import REPO, start_server, wait_until

__all__ = ["shots"]  # a fixture used by name below

pytestmark = pytest.mark.browser

KERNEL_IDLE = (
    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
    " const k = w && w.sessionContext && w.sessionContext.session"
    " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }")


def test_notebook_runs_the_panel_and_connect_updates_it_in_place(
        tmp_path: Path, demo_experiments: Path, shots: Shots) -> None:
    root = tmp_path / "ws"
    server = start_server(root, demo_experiments,
                          extra_args=["--LabApp.expose_app_in_browser=True"])
    shutil.copy(REPO / "notebooks" / "Agents.ipynb", root / "Agents.ipynb")
    api = Api(server.url, server.token)
    name = "lab-agent"
    api.create(name, "cartpole-dqn")

    def steps(page: Any) -> None:
        page.goto(f"{server.url}lab/tree/Agents.ipynb?token={server.token}")
        page.wait_for_function(KERNEL_IDLE, timeout=120_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel_loaded(page)
        pill(page, name, "Undeployed").wait_for()
        shots.take(page, "lab-panel")

        # The panel element is marked; after Connect the same element shows Deployed.
        page.evaluate("document.querySelector('.awb-panel').__awbMark = true")
        button(page, "Connect", row(page, name)).click()
        pill(page, name, "Deployed").wait_for()
        assert page.evaluate("document.querySelector('.awb-panel').__awbMark === true")
        agent = api.agent(name)
        assert agent["status"] == "Deployed"
        shots.take(page, "lab-deployed")

        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.locator(".aw-kt-value").wait_for()
        key = agent["api_key"]
        assert key not in page.content()
        button(page, "Reveal").click()
        page.wait_for_function("k => document.querySelector('.aw-kt-value').textContent === k",
                               arg=key)
        button(page, "Hide").click()
        wait_until(lambda: key not in page.content(), timeout=15, what="the key masked again")
        button(page, "Copy key").click()
        wait_clipboard(page, key)
        shots.take(page, "lab-expanded")

        button(page, "Disconnect", row(page, name)).click()
        pill(page, name, "Undeployed").wait_for()
        assert api.agent(name)["connected"] is False

    try:
        in_browser(server.url, steps, shots)
    finally:
        server.stop()
