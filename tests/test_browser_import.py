"""The panel's Import dialog in a real Chromium (the Voila app started with --allow-import).

A DQN saved by hand with AgileRL's ``save_checkpoint`` sits in the served folder. The user
opens Import, types its path and the environment, clicks Detect and sees what the file is
(framework, algorithm, spaces, steps, that nothing more is needed), clicks Import, and finds
the experiment in New Agent's source list, with the header naming the folder the app serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import import_support
from tests.browser_support import (
    Api,
    Shots,
    assert_fits,
    button,
    in_browser,
    open_app,
    shots,
    shown,
)
from tests.servers import VoilaApp, wait_until

__all__ = ["shots"]  # a fixture used by name below

pytestmark = [pytest.mark.browser, pytest.mark.slow]
# Detect and Import each load the file in a worker process (torch and AgileRL imported).
WORKER_MS = 240_000


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoilaApp]:
    """The app over an empty workspace holding one checkpoint file; imports allowed there."""
    root = tmp_path_factory.mktemp("browser-import")
    import_support.save_dqn(root / "runs" / "my_agent.pt")
    made = VoilaApp(Path(root), "--allow-import")
    try:
        yield made
    finally:
        made.stop()


def evaluated(api: Api) -> bool:
    """Whether the server finished scoring the imported checkpoint."""
    experiments = api("GET", "experiments").json()["experiments"]
    return bool(experiments) and experiments[0]["evaluation"]["state"] == "done"


# Two worker loads (Detect, Import) and the background evaluation's: ~90 s on a busy machine.
def test_import_dialog_detects_imports_and_new_agent_offers_it(app: VoilaApp,
                                                               shots: Shots) -> None:
    api = Api(app.url, app.token)
    path = app.root / "runs" / "my_agent.pt"

    def steps(page: Any) -> None:
        open_app(page, f"{app.url}?token={app.token}")
        # The header names the folder the app serves.
        shown(page.locator(".awb-subtitle code.awb-root", has_text=str(app.root)))
        button(page, "Import").click()
        dialog = page.locator(".awb-import")
        dialog.wait_for()
        page.get_by_label("Path", exact=True).fill(str(path))
        page.get_by_label("Environment", exact=True).fill("CartPole-v1")
        button(page, "Detect", dialog).click()
        preview = dialog.locator(".awb-preview")
        preview.wait_for(timeout=WORKER_MS)
        text = preview.inner_text()
        assert "agilerl" in text
        assert "DQN" in text
        assert re.search(r"1 at steps \[0\]", text), text
        assert "Box(" in text  # the observation space the file records
        assert "Ready to import" in text
        assert "evaluates each checkpoint" in text  # where its scores will come from
        assert not (app.root / "experiments" / "my_agent").exists()  # Detect wrote nothing
        assert "registry.sqlite3" not in dialog.locator("select").inner_text()
        page.set_viewport_size({"width": 1360, "height": 900})
        assert_fits(page, "Voila, Import dialog preview")
        preview.scroll_into_view_if_needed()
        shots.take(page, "import-preview", docs="import-dialog", target=dialog)
        button(page, "Import", dialog).click()
        shown(dialog.get_by_text(re.compile(r"Imported my_agent: agilerl DQN")).first)
        # Scored in the background; the line above the dialog says how far it is (unless
        # the evaluation finished before the panel's first read after the import).
        wait_until(lambda: page.locator(".awb-evaluating", has_text="my_agent").count() > 0
                   or evaluated(api), timeout=60, what="'evaluating 0/1' in the panel")
        shots.take(page, "imported")
        button(page, "Cancel", dialog).click()
        button(page, "New Agent").click()
        wizard = page.locator(".awb-wizard")
        wizard.wait_for()
        source = page.get_by_label("Source experiment *")
        wait_until(lambda: any("my_agent" in t for t in source.locator("option")
                               .all_inner_texts()), timeout=60, what="my_agent in New Agent")
        shots.take(page, "in-new-agent")

    in_browser(app.url, steps, shots, timeout=600)
    experiments = {e["name"]: e for e in api("GET", "experiments").json()["experiments"]}
    assert experiments["my_agent"]["algorithm"] == "DQN"
    assert experiments["my_agent"]["evaluation"]["total"] == 1
    wait_until(lambda: evaluated(api), timeout=300, what="the background evaluation")
    scored = api("GET", "experiments").json()["experiments"][0]["checkpoints"][0]
    assert isinstance(scored["evaluation_score"], float)
