"""The panel in JupyterLab and Notebook 7, in a real Chromium: open Agents.ipynb, run it, use it.

The same notebook the Voila app publishes, run by a JupyterLab user (file browser open, as a
newcomer has it, and closed) and by a Notebook 7 user who starts at ``/tree``: the panel
renders in the cell's output, a Connect round-trip updates the row in place, the key field's
front-end code (reveal, copy) works under each widget manager, no text in the panel is cut
off at 1280 or 1440 px, and after Create the panel and its "Created" line stay on screen.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    Api,
    Shots,
    assert_fits,
    assert_not_blank,
    at_widths,
    button,
    in_browser,
    panel_loaded,
    pill,
    row,
    shots,
    wait_clipboard,
    wait_deployed,
)
from tests.servers import REPO, ServerProcess, start_server, wait_until

__all__ = ["shots"]  # a fixture used by name below

pytestmark = pytest.mark.browser

KERNEL_IDLE = (
    "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
    " const k = w && w.sessionContext && w.sessionContext.session"
    " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }")
LEFT_OPEN = "() => !window.jupyterapp.shell.leftCollapsed"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           demo_experiments: Path) -> Iterator[ServerProcess]:
    """One server for JupyterLab and Notebook 7 (both front ends expose their app object)."""
    root = tmp_path_factory.mktemp("browser-lab") / "ws"
    made = start_server(root, demo_experiments,
                        extra_args=["--LabApp.expose_app_in_browser=True",
                                    "--JupyterNotebookApp.expose_app_in_browser=True",
                                    # Layouts saved by earlier runs (left area closed...)
                                    # must not leak into this one, or out of it.
                                    f"--LabApp.workspaces_dir={root.parent / 'workspaces'}"])
    shutil.copy(REPO / "notebooks" / "Agents.ipynb", root / "Agents.ipynb")
    try:
        yield made
    finally:
        made.stop()


def shut_down_sessions(server: ServerProcess) -> None:
    """Shut down every notebook session (and its kernel) the server has."""
    for session in server.session.get(server.url + "api/sessions", timeout=10).json():
        gone = server.session.delete(f"{server.url}api/sessions/{session['id']}", timeout=30)
        assert gone.status_code == 204, gone.text


def run_notebook(page: Any, url: str) -> None:
    """Open the notebook at ``url``, run its cells and wait for the panel's first read."""
    page.goto(url)
    page.wait_for_function(KERNEL_IDLE, timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    panel_loaded(page)
    # JupyterLab's "get notified about news?" toast would sit over the panel's corner.
    no_news = page.locator(".jp-toast-button", has_text=re.compile(r"^\s*No\s*$"))
    if no_news.count():
        no_news.first.click()


def create_in_wizard(page: Any, name: str) -> None:
    """New Agent, a name and the first source, Next, Create (the Best checkpoint)."""
    button(page, "New Agent").click()
    wizard = page.locator(".awb-wizard")
    wizard.wait_for()
    page.get_by_label("Name *").fill(name)
    page.get_by_label("Source experiment *").select_option(index=0)
    next_button = button(page, "Next", wizard)
    page.wait_for_function("b => !b.disabled", arg=next_button.element_handle())
    next_button.click()
    create = button(page, "Create", wizard)
    page.wait_for_function("b => !b.disabled", arg=create.element_handle())
    # The user scrolled down to the Create button, as they must on a short window.
    create.scroll_into_view_if_needed()
    create.click()


def test_lab_panel_fits_connects_in_place_and_stays_in_view_after_create(
        server: ServerProcess, shots: Shots) -> None:
    api = Api(server.url, server.token)
    name = "lab-agent"
    api.create(name, "cartpole-dqn")

    def steps(page: Any) -> None:
        page.set_viewport_size({"width": 1280, "height": 900})
        run_notebook(page, f"{server.url}lab/tree/Agents.ipynb?token={server.token}")
        pill(page, name, "Undeployed").wait_for()
        # The file browser open, as a newcomer has it.
        page.evaluate("window.jupyterapp.shell.expandLeft()")
        page.wait_for_function(LEFT_OPEN)
        at_widths(page, "Lab, file browser open, Classic RL")
        page.get_by_role("tab", name="Advanced Training").click()
        at_widths(page, "Lab, file browser open, Advanced Training")
        page.get_by_role("tab", name="Classic RL").click()
        shots.take(page, "lab-panel")

        # The panel element is marked; after Connect the same element shows Deployed.
        page.evaluate("document.querySelector('.awb-panel').__awbMark = true")
        button(page, "Connect", row(page, name)).click()
        wait_deployed(page, name, api)
        assert page.evaluate("document.querySelector('.awb-panel').__awbMark === true")
        agent = api.agent(name)
        assert agent["status"] == "Deployed"
        disconnect = button(page, "Disconnect", row(page, name))
        assert "off" in (disconnect.get_attribute("title") or "")  # a tooltip that says so
        at_widths(page, "Lab, a Deployed row")
        assert_not_blank(page, "Connect")
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
        at_widths(page, "Lab, the expanded row")
        shots.take(page, "lab-expanded")

        disconnect.click()
        pill(page, name, "Undeployed").wait_for()
        assert api.agent(name)["connected"] is False

        # File browser closed: the panel gets the whole width, and still fits.
        page.evaluate("window.jupyterapp.shell.collapseLeft()")
        page.wait_for_function(f"() => !({LEFT_OPEN})()")
        at_widths(page, "Lab, file browser closed")

        # Create: the wizard (tall) gives way to the table (short); the panel and the line
        # saying what happened must be on screen, not an empty notebook area below them.
        page.set_viewport_size({"width": 1280, "height": 700})
        create_in_wizard(page, "lab-made")
        pill(page, "lab-made", "Undeployed").wait_for()
        created = page.get_by_text("Created lab-made (Undeployed)")
        created.wait_for()
        page.wait_for_function(
            "e => { const r = e.getBoundingClientRect();"
            " return r.top >= 0 && r.bottom <= window.innerHeight; }",
            arg=created.element_handle(), timeout=15_000)
        assert_not_blank(page, "Create")
        shots.take(page, "lab-created")

    try:
        in_browser(server.url, steps, shots)
    finally:
        for made in (name, "lab-made"):
            api("DELETE", f"agents/{made}")


def test_notebook7_from_tree_runs_the_panel_as_lab_does(server: ServerProcess,
                                                        shots: Shots) -> None:
    api = Api(server.url, server.token)
    name = "nb7-agent"
    api.create(name, "cartpole-dqn")
    # A user coming from the file list gets a new kernel. Without this the notebook attached
    # to the kernel the JupyterLab test left running, which holds that test's panel; in 3 of
    # 5 clean-clone CI runs the Connect clicks of the panel run again there never reached the
    # server (see the #26 note: open, not reproduced outside CI).
    shut_down_sessions(server)

    def steps(page: Any) -> None:
        # Where many users start: the file list at /tree, which offers the notebook.
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{server.url}tree?token={server.token}")
        listed = page.locator(".jp-DirListing-item", has_text="Agents.ipynb")
        listed.wait_for(timeout=120_000)
        shots.take(page, "nb7-tree")
        run_notebook(page, f"{server.url}notebooks/Agents.ipynb?token={server.token}")
        assert "/notebooks/" in page.url
        pill(page, name, "Undeployed").wait_for()
        at_widths(page, "Notebook 7, Classic RL")
        page.get_by_role("tab", name="Advanced Training").click()
        at_widths(page, "Notebook 7, Advanced Training")
        page.get_by_role("tab", name="Classic RL").click()

        button(page, "Connect", row(page, name)).click()
        # Should a click be lost again (see the fresh kernel above), one more click, only
        # when the first did not reach the server, so that the rest of the test runs; a lost
        # second click still fails below, and the kernels' states are printed.
        try:
            wait_until(lambda: api.agent(name)["status"] != "Undeployed", timeout=20,
                       what=f"{name}'s Connect to reach the server")
        except AssertionError:
            shots.take(page, "nb7-connect-lost")
            kernels = server.session.get(server.url + "api/kernels", timeout=10).json()
            print("Connect lost; kernels:", kernels, "Connect buttons for the row:",
                  button(page, "Connect", row(page, name)).count())
            button(page, "Connect", row(page, name)).click()
        wait_deployed(page, name, api)
        assert_not_blank(page, "Connect in Notebook 7")
        key = api.agent(name)["api_key"]
        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.locator(".aw-kt-value").wait_for()
        assert key not in page.content()
        button(page, "Copy key").click()
        wait_clipboard(page, key)
        at_widths(page, "Notebook 7, the expanded row")
        shots.take(page, "nb7-expanded")

        page.set_viewport_size({"width": 1280, "height": 700})
        create_in_wizard(page, "nb7-made")
        page.get_by_text("Created nb7-made (Undeployed)").wait_for()
        assert_not_blank(page, "Create in Notebook 7")
        assert_fits(page, "Notebook 7, after Create")
        shots.take(page, "nb7-created")

    try:
        in_browser(server.url, steps, shots)
    finally:
        for made in (name, "nb7-made"):
            api("DELETE", f"agents/{made}")
