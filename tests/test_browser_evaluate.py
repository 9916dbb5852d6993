"""The Evaluate section of a Deployed Classic agent, in a real Chromium.

The Voila app over the quick demo workspace: the visitor opens the ``cartpole-dqn`` agent's
row, opens *Evaluate*, presses the button and reads the summary: the served mean with its
interval beside the score training recorded, and the verdict on training's own seeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    Api,
    Shots,
    button,
    details_part,
    in_browser,
    open_app,
    row,
    shots,
    shown,
    wait_deployed,
)
from tests.servers import VoilaApp, copy_workspace

__all__ = ["shots"]  # a fixture used by name below

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path) -> Iterator[VoilaApp]:
    root = copy_workspace(tmp_path_factory.mktemp("browser-evaluate") / "ws", demo_experiments)
    made = VoilaApp(root)
    try:
        yield made
    finally:
        made.stop()


def test_evaluate_shows_the_served_scores_beside_the_recorded_one(app: VoilaApp,
                                                                  shots: Shots) -> None:
    api = Api(app.url, app.token)
    name = "cartpole-eval"
    step = api.deploy(name, "cartpole-dqn")["checkpoint_step"]
    experiments = {e["name"]: e for e in api("GET", "experiments").json()["experiments"]}
    recorded = next(c["evaluation_score"] for c in experiments["cartpole-dqn"]["checkpoints"]
                    if c["step"] == step)

    def steps(page: Any) -> None:
        open_app(page, f"{app.url}?token={app.token}")
        wait_deployed(page, name, api)
        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.get_by_text("Evaluate", exact=True).filter(visible=True).first.click()
        details = page.locator(".awb-details")
        episodes = details.locator(".widget-inline-hbox", has_text="Episodes").locator("input")
        episodes.fill("6")
        episodes.press("Tab")
        button(page, "Evaluate", details).click()
        summary = details.locator(".widget-html", has=page.locator(".awb-served"))
        shown(summary)
        shown(details.locator("svg.awb-eval-chart"))
        text = summary.inner_text()
        summary.scroll_into_view_if_needed()
        shots.take(page, "evaluated", docs="evaluate", target=details_part(page, "Evaluate"))
        assert "over 6 episodes, seeds 1000 to 1005" in text, text
        assert f"Training recorded {recorded:,.2f} at step {step}" in text, text
        assert "the same as recorded" in text, text

    in_browser(app.url, steps, shots)
