"""The key field's front-end code in a real browser: in the Voila app and in JupyterLab.

Chromium (through Playwright) opens the page, expands a Deployed agent, reveals the key and
copies the key and the endpoint; the test reads the clipboard back. Opt in with
``AGENTS_WORKBENCH_BROWSER_TESTS=1`` (they add about 30 s); they need a Chromium: Playwright's
own, or a system one (``chromium``, ``chromium-browser``, ``google-chrome``, or $CHROMIUM).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.panel_support import REPO, VoilaApp, start_server, wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(os.environ.get("AGENTS_WORKBENCH_BROWSER_TESTS") != "1",
                       reason="browser tests are opt-in: AGENTS_WORKBENCH_BROWSER_TESTS=1"),
]


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                      "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def in_browser(origin: str, steps: Callable[[Any], None]) -> None:
    """Run ``steps(page)`` in Chromium, on a thread of its own.

    Playwright's sync API runs an event loop on its thread; on pytest's main thread that
    loop would collide with the Jupyter test plugin's loop handling at teardown.
    """
    sync_api = pytest.importorskip("playwright.sync_api")

    def run() -> None:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium(),
                                                 args=["--no-sandbox"])
            try:
                context = browser.new_context(viewport={"width": 1300, "height": 1000})
                context.grant_permissions(["clipboard-read", "clipboard-write"],
                                          origin=origin)
                steps(context.new_page())
            finally:
                browser.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result(timeout=240)


def check_key_controls(page: Any, agent: dict[str, Any]) -> None:
    """Expand the agent's row, reveal and copy its key, copy its endpoint."""
    key, endpoint = agent["api_key"], agent["endpoint"]
    page.locator(".awb-pill-Deployed").wait_for(timeout=60_000)
    page.locator("button:has(i.fa-chevron-down)").first.click()
    value = page.locator(".aw-kt-value")
    value.wait_for(timeout=30_000)
    assert key not in page.content()  # masked: the key is nowhere in the page
    page.get_by_role("button", name="Reveal", exact=True).click()
    page.wait_for_function("k => document.querySelector('.aw-kt-value').textContent === k",
                           arg=key, timeout=15_000)
    page.get_by_role("button", name="Hide", exact=True).click()
    assert key not in page.content()
    page.get_by_role("button", name="Copy key").click()
    page.get_by_role("button", name="Copied ✓").wait_for(timeout=15_000)
    assert page.evaluate("navigator.clipboard.readText()") == key
    page.get_by_role("button", name="Copy", exact=True).click()
    wait_until(lambda: page.evaluate("navigator.clipboard.readText()") == endpoint,
               timeout=15, what="the endpoint in the clipboard")


def test_copy_and_reveal_in_the_voila_app(tmp_path: Path,
                                          demo_experiments: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(demo_experiments, root / "experiments")
    app = VoilaApp(root)
    try:
        agent = deploy(app.url, app.token, "voila-agent")

        def steps(page: Any) -> None:
            page.goto(f"{app.url}?token={app.token}")
            check_key_controls(page, agent)

        in_browser(app.url.rstrip("/"), steps)
    finally:
        app.stop()


def test_copy_and_reveal_in_jupyterlab(tmp_path: Path,
                                       demo_experiments: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "Agents.ipynb", root / "Agents.ipynb")
    server = start_server(root, demo_experiments,
                          extra_args=["--LabApp.expose_app_in_browser=True"])
    try:
        agent = server.deploy("lab-agent", "cartpole-dqn")

        def steps(page: Any) -> None:
            page.goto(f"{server.url}lab/tree/Agents.ipynb?token={server.token}")
            page.wait_for_function(
                "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                " const k = w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel; return k && k.status === 'idle'; }",
                timeout=90_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            check_key_controls(page, agent)

        in_browser(server.url.rstrip("/"), steps)
    finally:
        server.stop()


def deploy(url: str, token: str, name: str) -> dict[str, Any]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"token {token}"
    api = f"{url}agents/api/agents"
    assert session.post(api, json={"name": name, "experiment": "cartpole-dqn"},
                        timeout=10).status_code == 201
    session.post(f"{api}/{name}/connect", timeout=10)
    return wait_until(lambda: (a := session.get(f"{api}/{name}", timeout=10).json())
                      ["status"] == "Deployed" and a, timeout=60, what="Deployed")
