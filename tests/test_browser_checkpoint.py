"""Change checkpoint in the expanded row of a Deployed agent, in a real Chromium (Voila app).

The agent serves ``flip-dqn`` step 1 (tests/checkpoint_fixtures.py); the user opens the row,
picks step 2 in the checkpoint table, clicks Change checkpoint, sees it serving, then rolls
back. The server's own answers (management API, the agent's ``get_action``) are checked from
outside the browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from server_extension.serving.serde import decode_array, encode_array
from tests.browser_support import (
    Api,
    Shots,
    agent_block,
    assert_fits,
    button,
    in_browser,
    open_app,
    row,
    shots,
    shown,
)
from tests.checkpoint_fixtures import (
    FLIP,
    NEW_STEP,
    OBS,
    OLD_STEP,
    expected_actions,
    write_flip_experiment,
)
from tests.servers import VoilaApp, wait_until

__all__ = ["shots"]  # a fixture used by name below

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VoilaApp]:
    root = tmp_path_factory.mktemp("browser-checkpoint")
    write_flip_experiment(root)
    made = VoilaApp(Path(root))
    try:
        yield made
    finally:
        made.stop()


def actions(agent: dict[str, Any]) -> list[int]:
    """The agent's answer to the fixed batch, through its endpoint."""
    reply = requests.post(f"{agent['endpoint']}/get_action", timeout=30,
                          json={"obs": encode_array(OBS), "batch_size": len(OBS)},
                          headers={"Authorization": f"Bearer {agent['api_key']}"})
    assert reply.status_code == 200, reply.text
    return [int(a) for a in decode_array(reply.json()["action"], "action").reshape(-1)]


def test_change_checkpoint_and_roll_back_from_the_expanded_row(app: VoilaApp,
                                                               shots: Shots) -> None:
    api = Api(app.url, app.token)
    api.create("flip", FLIP, OLD_STEP)
    assert api("POST", "agents/flip/connect").status_code == 200
    deployed = api.wait_status("flip", "Deployed")

    def steps(page: Any) -> None:
        open_app(page, f"{app.url}?token={app.token}")
        row(page, "flip").locator("button:has(i.fa-chevron-down)").click()
        section = agent_block(page, "flip").locator(".awb-checkpoint-change")
        shown(section.get_by_text(re.compile(r"Serving\s+step 1 of")))
        section.get_by_text("Specific", exact=True).click()
        section.locator("label", has_text=re.compile(r"^\s*step 2\b")).click()
        shots.take(page, "step-2-picked")
        button(page, "Change checkpoint", section).click()
        shown(section.get_by_text(re.compile(r"Serving\s+step 2 of")))
        shown(section.get_by_text(re.compile(r"Done in")))
        assert_fits(page, "Voila, Change checkpoint")
        shots.take(page, "changed")
        after = api.agent("flip")
        assert after["checkpoint"]["step"] == NEW_STEP
        assert after["status"] == "Deployed"
        assert actions(deployed) == expected_actions(app.root)[NEW_STEP]
        assert (after["endpoint"], after["api_key"]) == (deployed["endpoint"],
                                                          deployed["api_key"])
        button(page, "Roll back", section).click()
        shown(section.get_by_text(re.compile(r"Serving\s+step 1 of")))
        shots.take(page, "rolled-back")

    in_browser(app.url, steps, shots)
    wait_until(lambda: api.agent("flip")["checkpoint"]["step"] == OLD_STEP,
               what="the rollback in the registry")
    assert actions(deployed) == expected_actions(app.root)[OLD_STEP]
