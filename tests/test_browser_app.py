"""The Voila app (``agents-workbench app``) in a real Chromium: the panel as a visitor uses it.

Each test opens the app's page (Voila runs Agents.ipynb in a fresh kernel for it), clicks
through the panel and checks what the page shows, and what the server did, from outside:
the management API and the deployment's own endpoint, called with ``requests``.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.browser_support import (
    Api,
    Shots,
    agent_block,
    assert_not_blank,
    at_widths,
    broken_images,
    button,
    clipboard,
    details_part,
    gone,
    in_browser,
    open_app,
    pill,
    row,
    shots,
    shown,
    wait_clipboard,
    wait_deployed,
)
from tests.servers import VoilaApp, copy_workspace, wait_until

__all__ = ["shots"]  # a fixture used by name below

pytestmark = pytest.mark.browser

CLASSIC_HEADERS = ["Agent", "Description", "Source Experiment", "Status", "Actions"]
ADVANCED_HEADERS = ["Agent", "Description", "Source Experiment", "Base Model", "Status",
                    "Actions"]
# A copy of the demo's CartPole run whose checkpoints a test may break, leaving the rest whole.
BREAKABLE = "cartpole-breakable"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path) -> Iterator[VoilaApp]:
    root = copy_workspace(tmp_path_factory.mktemp("browser-app") / "ws", demo_experiments)
    breakable = root / "experiments" / BREAKABLE
    shutil.copytree(root / "experiments" / "cartpole-dqn", breakable)
    info = breakable / "experiment.json"
    info.write_text(info.read_text().replace('"cartpole-dqn"', f'"{BREAKABLE}"'))
    made = VoilaApp(root)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="module")
def api(app: VoilaApp) -> Api:
    return Api(app.url, app.token)


def page_url(app: VoilaApp) -> str:
    return f"{app.url}?token={app.token}"


def visible_headers(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(".awb-th").filter(visible=True).all_inner_texts()]


def get_action(endpoint: str, key: str) -> requests.Response:
    """One ``get_action`` call for a CartPole observation, as any contract client sends it."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 4), dtype=np.float32), allow_pickle=False)
    body = {"obs": base64.b64encode(buf.getvalue()).decode("ascii"), "batch_size": 1}
    return requests.post(f"{endpoint.rstrip('/')}/get_action", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})


# -- an empty workspace -----------------------------------------------------------------------


def test_empty_workspace_shows_both_tabs_and_gates_new_agent(tmp_path: Path,
                                                             shots: Shots) -> None:
    app = VoilaApp(copy_workspace(tmp_path / "ws", None))

    def steps(page: Any) -> None:
        open_app(page, page_url(app))
        tabs = page.get_by_role("tab")
        assert tabs.all_inner_texts() == ["Classic RL", "Advanced Training"]
        assert visible_headers(page) == CLASSIC_HEADERS
        new_agent = button(page, "New Agent")
        assert new_agent.is_disabled()
        tooltip = new_agent.get_attribute("title") or ""
        assert "No Classic RL experiment has checkpoints" in tooltip
        assert "start_experiment" in tooltip  # says what to do about it
        shown(page.get_by_text("No Classic RL experiment with checkpoints yet"))
        at_widths(page, "Voila, empty Classic RL")
        shots.take(page, "classic-empty")

        page.get_by_role("tab", name="Advanced Training").click()
        wait_until(lambda: visible_headers(page) == ADVANCED_HEADERS, timeout=15,
                   what="the Advanced Training columns")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.awb-topbar button'))"
            ".some(b => b.title.includes('No Advanced Training experiment'))")
        assert new_agent.is_disabled()
        shots.take(page, "advanced-empty")

    try:
        in_browser(app.url, steps, shots)
    finally:
        app.stop()


# -- the issue #10 walkthrough: wizard, Deployed, key, snippet, rotate, disconnect, delete ----


def test_create_deploy_copy_key_and_call_the_agent(app: VoilaApp, api: Api, shots: Shots,
                                                   tmp_path: Path) -> None:
    experiment = next(e for e in api("GET", "experiments").json()["experiments"]
                      if e["name"] == "cartpole-dqn")
    steps_available = sorted(c["step"] for c in experiment["checkpoints"])
    picked = steps_available[len(steps_available) // 2]
    name = "walkthrough"
    taken = "already-here"
    api.create(taken, "cartpole-dqn")
    seen: dict[str, Any] = {}

    def wizard(page: Any) -> None:
        open_app(page, page_url(app))
        assert visible_headers(page) == CLASSIC_HEADERS
        # A visitor sees the panel, not notes for whoever runs the server.
        assert "AGENTS_WORKBENCH_URL" not in page.inner_text("body")
        at_widths(page, "Voila, Classic RL")
        shots.take(page, "classic-tab")
        button(page, "New Agent").click()
        wizard = page.locator(".awb-wizard")
        wizard.wait_for()
        next_button = button(page, "Next", wizard)
        assert next_button.is_disabled()

        # Details: a bad name is explained and keeps Next off; a good one and a source turn it on.
        page.get_by_label("Name *").fill("not a name!")
        wizard.get_by_text("Use 1-100 letters, digits").wait_for()
        assert next_button.is_disabled()
        # A name in use is caught here, as it is typed, not at Create on the next step.
        page.get_by_label("Name *").fill(taken)
        wizard.get_by_text(f"An agent named {taken} already exists").wait_for()
        assert next_button.is_disabled()
        page.get_by_label("Name *").fill(name)
        page.get_by_label("Description").fill("CartPole, made in the browser")
        source = page.get_by_label("Source experiment *")
        labels = [t.replace("\xa0", " ") for t in source.locator("option").all_inner_texts()]
        source.select_option(index=labels.index("cartpole-dqn (CartPole-v1)"))
        page.wait_for_function("b => !b.disabled", arg=next_button.element_handle())
        gone(wizard.get_by_text("Use 1-100 letters"))
        gone(wizard.get_by_text("already exists"))
        assert page.get_by_label("Backend").evaluate(
            "s => s.options[s.selectedIndex].text").replace("\xa0", " ") == "Server default"
        at_widths(page, "Voila, wizard Details")
        shots.take(page, "wizard-details", docs="wizard-details")
        next_button.click()

        # Checkpoint: the table and both score charts; each rule highlights its pick, on
        # the charts too.
        wizard.get_by_text("Best: the checkpoint with the highest evaluation score").wait_for()
        charts = wizard.locator(".awb-chart svg").filter(visible=True)
        wait_until(lambda: charts.count() == 2, timeout=20, what="both score charts")
        chosen = wizard.locator(".awb-chosen")

        def chosen_step() -> int:
            return int(chosen.nth(1).inner_text().replace(",", ""))

        def ringed() -> list[str]:
            return [str(d.get_attribute("data-step"))
                    for d in wizard.locator(".awb-chart-chosen").all()]

        best = best_step(experiment["checkpoints"])
        assert chosen_step() == best
        wait_until(lambda: ringed() == [str(best)] * 2, timeout=15,
                   what="the Best checkpoint marked on both charts")
        at_widths(page, "Voila, wizard Checkpoint")
        shots.take(page, "wizard-checkpoint-best", docs="wizard-checkpoint")
        button(page, "Final", wizard).click()
        wait_until(lambda: chosen_step() == steps_available[-1], timeout=15,
                   what="Final to pick the last step")
        button(page, "Specific", wizard).click()
        create = button(page, "Create", wizard)
        page.wait_for_function("b => b.disabled", arg=create.element_handle())
        step_cell = wizard.locator(".awb-td", has_text=re.compile(f"^{picked:,}$"))
        radios = wizard.locator("input[type=radio]")
        cells = wizard.locator(".awb-td")
        index = cells.all_inner_texts().index(f"{picked:,}")
        # Each table row is radio, step, training score, evaluation score.
        radios.nth(index // 4).check()
        wait_until(lambda: "awb-chosen" in (step_cell.get_attribute("class") or ""),
                   timeout=15, what="the picked row highlighted")
        wait_until(lambda: ringed() == [str(picked)] * 2, timeout=15,
                   what="the picked checkpoint marked on both charts")
        # A dot on a chart chooses its checkpoint too: the last one, then back to the pick.
        last = steps_available[-1]
        wizard.locator(f".awb-chart-point[data-step='{last}']").first.click()
        wait_until(lambda: ringed() == [str(last)] * 2, timeout=15,
                   what="the clicked checkpoint chosen")
        last_cell = wizard.locator(".awb-td", has_text=re.compile(f"^{last:,}$"))
        assert "awb-chosen" in (last_cell.get_attribute("class") or "")
        wizard.locator(f".awb-chart-point[data-step='{picked}']").last.click()
        wait_until(lambda: "awb-chosen" in (step_cell.get_attribute("class") or ""),
                   timeout=15, what="the picked row highlighted again")
        shots.take(page, "wizard-checkpoint-specific")
        page.wait_for_function("b => !b.disabled", arg=create.element_handle())
        create.click()

        # Back on the table: the new row, Undeployed, with no chevron yet.
        pill(page, name, "Undeployed").wait_for()
        page.get_by_text(f"Created {name} (Undeployed)").wait_for()
        assert_not_blank(page, "Create")
        chevron = row(page, name).locator("button:has(i.fa-chevron-down)")
        gone(chevron)
        shots.take(page, "created")

        # Connect: the row turns Deployed by itself; the marker proves the page never reloaded.
        page.evaluate("window.__awbSamePage = true")
        button(page, "Connect", row(page, name)).click()
        wait_deployed(page, name, api)
        assert page.evaluate("window.__awbSamePage === true")
        shown(chevron)
        assert_not_blank(page, "Connect")
        agent = api.agent(name)
        assert agent["checkpoint_step"] == picked
        assert agent["description"] == "CartPole, made in the browser"
        shots.take(page, "deployed", docs="classic-tab")

        # Expand: the key is masked (nowhere in the page), revealed on demand, then copied.
        chevron.click()
        value = page.locator(".aw-kt-value")
        value.wait_for()
        key = agent["api_key"]
        assert key not in page.content()
        at_widths(page, "Voila, the expanded row")
        shots.take(page, "expanded-masked", docs="expanded-row")
        button(page, "Reveal").click()
        page.wait_for_function("k => document.querySelector('.aw-kt-value').textContent === k",
                               arg=key)
        shots.take(page, "expanded-revealed")
        button(page, "Hide").click()
        wait_until(lambda: key not in page.content(), timeout=15, what="the key masked again")
        button(page, "Copy key").click()
        button(page, "Copied ✓").wait_for()
        wait_clipboard(page, key)
        seen["key"] = clipboard(page)
        button(page, "Copy", page.locator(".awb-details")).first.click()
        wait_clipboard(page, agent["endpoint"])

        # The Manual HTTP snippet, as shown in the page.
        page.get_by_role("tab", name="Manual HTTP").click()
        code = page.locator(".awb-code pre").filter(visible=True)
        code.wait_for()
        seen["snippet"] = code.inner_text()
        assert agent["endpoint"].rstrip("/") in seen["snippet"]
        shots.take(page, "manual-http")
        seen["endpoint"] = agent["endpoint"]
        seen["page"] = page

    def run_snippet() -> None:
        script = tmp_path / "manual_http.py"
        script.write_text(seen["snippet"])
        env = {**os.environ, "ARENA_API_KEY": seen["key"]}
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert re.search(r"^action: [01]\b", done.stdout, re.M), done.stdout

    def rotate_disconnect_delete(page: Any) -> None:
        old_key = seen["key"]
        button(page, "Rotate key").click()
        page.get_by_text("The old key stops working at once").wait_for()
        shots.take(page, "rotate-confirm")
        button(page, "Rotate", page.locator(".awb-details")).click()
        page.get_by_text("New key issued; the old one no longer works").wait_for()
        new_key = api.agent(name)["api_key"]
        assert new_key != old_key
        assert get_action(seen["endpoint"], old_key).status_code == 401
        assert get_action(seen["endpoint"], new_key).status_code == 200
        button(page, "Copy key").click()
        wait_clipboard(page, new_key)

        button(page, "Disconnect", row(page, name)).click()
        pill(page, name, "Undeployed").wait_for()
        # The details close with it (the browser applies the widget messages one by one).
        gone(page.locator(".awb-details"))
        assert api.agent(name)["connected"] is False
        assert get_action(seen["endpoint"], new_key).status_code in (404, 503)

        button(page, "Delete", row(page, name)).click()
        question = page.get_by_text(f"Delete {name}?")
        question.wait_for()
        shots.take(page, "delete-confirm")
        page.locator(".awb-row button.mod-danger", has_text="Delete").click()
        row(page, name).wait_for(state="detached")
        assert api("GET", f"agents/{name}").status_code == 404
        assert_not_blank(page, "Delete")
        shots.take(page, "deleted")

    def all_steps(page: Any) -> None:
        wizard(page)
        run_snippet()
        rotate_disconnect_delete(page)

    try:
        in_browser(app.url, all_steps, shots)
    finally:
        api("DELETE", f"agents/{taken}")


def best_step(checkpoints: list[dict[str, Any]]) -> int:
    """What Best picks on the demo runs, which log an evaluation score for every step."""
    return int(max(checkpoints, key=lambda c: (c["evaluation_score"], c["step"]))["step"])


# -- Failed, with its reason, and Retry -------------------------------------------------------


def test_failed_agent_shows_its_reason_and_retry_reconnects(app: VoilaApp, api: Api,
                                                            shots: Shots) -> None:
    name = "breaks"
    api.create(name, BREAKABLE)
    step = api.agent(name)["checkpoint_step"]
    checkpoint = app.root / "experiments" / BREAKABLE / "checkpoints" / f"step_{step}.pt"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(b"this is not a checkpoint")

    def steps(page: Any) -> None:
        open_app(page, page_url(app))
        button(page, "Connect", row(page, name)).click()
        pill(page, name, "Failed").wait_for()
        reason = api.agent(name)["error"]
        assert reason
        # Under the row, full width: its first line on show, the rest folded away.
        line = agent_block(page, name).locator(".awb-reason")
        shown(line)
        assert row(page, name).locator(".awb-reason").count() == 0  # not in Status
        summary, _, rest = reason.strip().partition("\n")
        assert line.evaluate("e => e.firstChild.nextSibling.textContent").strip() == (
            summary.strip())
        assert line.locator("details").count() == (1 if rest.strip() else 0)
        assert line.locator("details[open]").count() == 0
        box = line.bounding_box()
        grid = row(page, name).bounding_box()
        assert box is not None
        assert grid is not None
        assert box["width"] >= grid["width"] * 0.9
        at_widths(page, "Voila, a Failed row")
        # Still switched on: Retry reconnects, the power button switches it off.
        shown(button(page, "Retry", row(page, name)))
        shown(row(page, name).locator("button:has(i.fa-power-off)"))
        gone(row(page, name).locator("button:has(i.fa-chevron-down)"))
        shots.take(page, "failed-with-reason", docs="failed-row")

        checkpoint.write_bytes(good)  # the user fixes the file, then retries
        button(page, "Retry", row(page, name)).click()
        wait_deployed(page, name, api)
        gone(agent_block(page, name).locator(".awb-reason"))
        shots.take(page, "retried")
        button(page, "Disconnect", row(page, name)).click()
        pill(page, name, "Undeployed").wait_for()

    try:
        in_browser(app.url, steps, shots)
    finally:
        checkpoint.write_bytes(good)
        api("DELETE", f"agents/{name}")


# -- the episode playground -------------------------------------------------------------------


def test_episode_playground_plays_an_animation(app: VoilaApp, api: Api, shots: Shots) -> None:
    name = "player"
    api.deploy(name, "cartpole-dqn")

    def steps(page: Any) -> None:
        open_app(page, page_url(app))
        wait_deployed(page, name, api)
        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.get_by_text("Run an episode").click()
        run = button(page, "Run episode")
        run.wait_for()
        # No broken-image icon where the animation will be, before the first run or during it.
        assert broken_images(page) == 0
        at_widths(page, "Voila, the episode playground")
        run.click()
        assert broken_images(page) == 0
        page.get_by_text("steps played against the live endpoint").wait_for(timeout=120_000)
        animation = page.locator(".awb-details img").filter(visible=True)
        wait_until(lambda: animation.evaluate("i => i.complete && i.naturalWidth > 0"),
                   timeout=20, what="the animation to load")
        # An animated, looping GIF: the header and the looping extension of several frames.
        header = animation.evaluate(
            "async i => { const b = new Uint8Array(await (await fetch(i.src)).arrayBuffer());"
            " const s = String.fromCharCode(...b.slice(0, 6));"
            " const all = new TextDecoder('latin1').decode(b);"
            " return [s, all.includes('NETSCAPE2.0'), all.split('\\x00\\x21\\xf9').length]; }")
        assert header[0] == "GIF89a"
        assert header[1], "the GIF does not loop: not an animation"
        assert header[2] > 2, "one frame is no animation"
        shown(page.get_by_text(re.compile(r"Return \d")))
        button(page, "Run again").wait_for()
        animation.scroll_into_view_if_needed()
        shots.take(page, "episode", docs="episode-playground",
                   target=details_part(page, "Run an episode"))

    try:
        in_browser(app.url, steps, shots)
    finally:
        api("DELETE", f"agents/{name}")
