"""The Agents panel, built against a live workbench server and clicked through (no browser).

Buttons are pressed with ``Button.click()`` (what a browser click runs in the kernel); the
panel does its HTTP work on its worker thread, so tests wait with ``panel.wait_idle()`` or
poll the widgets. A recording front end (:mod:`tests.panel_support`) shows what the kernel
would send to a browser, which is how key hygiene is checked.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pytest
import requests

from agents_widget import AgentsPanel
from agents_widget.details import DeploymentDetails
from agents_widget.state import best_step, final_step
from tests.panel_support import (
    browser_sends,
    custom_replies,
    front_end,
    saved_state_json,
    start_server,
    wait_until,
)
from tests.servers import ServerProcess, free_port
from workbench_core.discovery import ServerInfo
from workbench_core.store import ExperimentStore, ExperimentWriter

__all__ = ["front_end"]  # a fixture used by name below


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory,
         demo_experiments: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("panel") / "ws", demo_experiments)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server over a workspace with no experiments at all."""
    server = start_server(tmp_path_factory.mktemp("panel-empty") / "ws", None,
                          extra_args=["--AgentsWorkbenchApp.health_check_interval=0"])
    try:
        yield server
    finally:
        server.stop()


def make_panel(server: ServerProcess, poll_interval: float = 0.2) -> AgentsPanel:
    panel = AgentsPanel(ServerInfo(url=server.url, token=server.token),
                        poll_interval=poll_interval)
    panel.wait_idle()
    return panel


@pytest.fixture
def panel(live: ServerProcess, front_end: list[dict[str, Any]]) -> Iterator[AgentsPanel]:
    made = make_panel(live)
    try:
        yield made
    finally:
        made.close()


def cell_text(widget: Any) -> str:
    return str(widget.value)


# -- top bar, tabs, New Agent ----------------------------------------------------------------


def test_panel_shows_two_tabs_and_gates_new_agent_by_tab(panel: AgentsPanel) -> None:
    assert panel.tabs.titles == ("Classic RL", "Advanced Training")
    headers = [cell_text(c) for c in panel.tables["classic"].header.children]
    assert headers == ["Agent", "Description", "Source Experiment", "Status", "Actions"]
    advanced = [cell_text(c) for c in panel.tables["advanced"].header.children]
    assert advanced == ["Agent", "Description", "Source Experiment", "Base Model", "Status",
                        "Actions"]
    assert not panel.new_button.disabled  # the demo has Classic RL checkpoints
    panel.tabs.selected_index = 1
    assert panel.new_button.disabled
    assert "Advanced Training" in panel.new_button.tooltip
    assert "checkpoints" in panel.new_button.tooltip
    panel.tabs.selected_index = 0
    assert not panel.new_button.disabled
    assert panel.open_wizard() is not None


def test_empty_workspace_disables_new_agent_until_checkpoints_appear(
        empty: ServerProcess, front_end: list[dict[str, Any]]) -> None:
    panel = make_panel(empty)
    try:
        assert panel.new_button.disabled
        assert "Classic RL" in panel.new_button.tooltip
        assert "Classic RL" in panel.gate_hint.value
        panel.new_button.click()
        assert panel.wizard is None
        panel.tabs.selected_index = 1
        assert panel.new_button.disabled
        assert "Advanced Training" in panel.new_button.tooltip

        # Training code logs an Advanced Training checkpoint: the button turns on by itself.
        writer = ExperimentWriter.create(empty.root, "tiny-sft", project_type="advanced",
                                         algorithm="SFT", framework="transformers",
                                         dataset="tiny-chat", base_model="gpt2-tiny")
        writer.checkpoint_path(10, suffix=".bin").write_bytes(b"not a model")
        writer.log(10, training_score=1.0)
        wait_until(lambda: not panel.new_button.disabled, what="New Agent enabled")
        panel.tabs.selected_index = 0
        assert panel.new_button.disabled  # still nothing on Classic RL
    finally:
        panel.close()


def test_no_server_found_shows_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          front_end: list[dict[str, Any]]) -> None:
    monkeypatch.delenv("AGENTS_WORKBENCH_URL", raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    panel = AgentsPanel()
    try:
        assert panel.client is None
        assert "No running agents-workbench server" in panel.notice.value
        assert "agents-workbench run" in panel.notice.value
        assert "AGENTS_WORKBENCH_URL" in panel.notice.value
        assert panel.new_button.disabled
        assert panel.tabs.layout.display == "none"
        panel.retry_button.click()  # still none: the message stays
        assert "No running agents-workbench server" in panel.notice.value
    finally:
        panel.close()


# -- the wizard -------------------------------------------------------------------------------


def test_wizard_walkthrough_creates_an_undeployed_row(panel: AgentsPanel,
                                                      live: ServerProcess) -> None:
    panel.new_button.click()
    wizard = panel.wizard
    assert wizard is not None
    assert panel.body.selected_index == 1
    labels = dict(wizard.source.options)
    assert labels["cartpole-dqn (CartPole-v1)"] == "cartpole-dqn"
    assert all(value.startswith(("cartpole", "pendulum")) for value in labels.values())
    assert "agent" in wizard.children[2].children[0].children[1].value.lower()  # info panel

    assert wizard.backend.label == "Server default"  # shown, not a blank box
    assert wizard.name.placeholder == f"e.g. {wizard.source.options[0][1]}-agent"
    assert wizard.next_button.disabled
    wizard.name.value = "   "
    wizard.source.value = "cartpole-dqn"
    assert wizard.next_button.disabled  # the name is required (trimmed)
    wizard.name.value = "no spaces allowed"
    assert wizard.next_button.disabled
    assert "letters" in wizard.name_hint.value
    wizard.name.value = "  wizard-agent  "
    assert not wizard.next_button.disabled
    wizard.description.value = "made by the wizard"
    wizard.next_button.click()
    assert wizard.step == 1

    experiment = wizard.experiment
    assert experiment is not None
    ckpts = experiment.checkpoints
    assert len(ckpts) >= 2

    def rows() -> list[list[Any]]:
        cells = list(wizard.table.children[4:])
        return [cells[i:i + 4] for i in range(0, len(cells), 4)]

    # Best: sorted by evaluation score, the pick highlighted, the table dimmed and read-only.
    assert wizard.rule.value == "best"
    best = rows()
    assert best[0][0].value == best_step(ckpts)
    assert "awb-chosen" in best[0][1]._dom_classes
    assert all("awb-dim" in row[1]._dom_classes for row in best)
    assert all(row[0].disabled for row in best)
    scores = [row[3].value for row in best]
    assert scores == sorted(scores, key=lambda s: -float(s.replace(",", "")))

    # Final: sorted by step, highest (the pick) first.
    wizard.rule.value = "final"
    final = rows()
    steps = [int(row[1].value.replace(",", "")) for row in final]
    assert steps == sorted(steps, reverse=True)
    assert steps[0] == final_step(ckpts)
    assert "awb-chosen" in final[0][1]._dom_classes
    for old_cell in best[0]:
        assert old_cell.comm is None  # the Best table's widgets were closed

    # Specific: interactive radios, nothing picked until the user picks.
    wizard.rule.value = "specific"
    specific = rows()
    assert not any(row[0].disabled for row in specific)
    assert not any("awb-dim" in row[1]._dom_classes for row in specific)
    assert wizard.create_button.disabled
    first = min(c.step for c in ckpts)
    wizard.pick(first)
    assert not wizard.create_button.disabled
    picked = [row for row in rows() if row[0].value == first]
    assert len(picked) == 1
    assert "awb-chosen" in picked[0][1]._dom_classes

    # Charts of both scores, a dot per checkpoint; the chosen one is marked, and clicking
    # another dot chooses it.
    for chart in (wizard.training_chart, wizard.evaluation_chart):
        assert chart.points
        assert sorted(int(m[0]) for m in chart.marks) == sorted(c.step for c in ckpts)
        assert chart.chosen == first
    last = max(c.step for c in ckpts)
    wizard.evaluation_chart.click(last)
    assert wizard.chosen_step == last
    assert wizard.training_chart.chosen == last
    assert "awb-chosen" in next(row for row in rows() if row[0].value == last)[1]._dom_classes
    wizard.rule.value = "best"
    assert wizard.training_chart.chosen == best_step(ckpts)
    wizard.training_chart.click(first)  # from Best: the click switches to Specific
    assert (wizard.rule.value, wizard.chosen_step) == ("specific", first)

    wizard.back_button.click()
    assert wizard.step == 0
    wizard.next_button.click()
    wizard.create_button.click()
    panel.wait_idle()
    assert panel.wizard is None
    assert panel.body.selected_index == 0
    row = panel.row("wizard-agent")
    assert "Undeployed" in row.status_cell.value
    assert "made by the wizard" in row.description_cell.value
    assert "cartpole-dqn" in row.experiment_cell.value
    assert row.toggle_button.description == "Connect"
    assert row.chevron.layout.visibility == "hidden"
    server_side = live.api("GET", "agents/wizard-agent").json()
    assert (server_side["checkpoint_rule"], server_side["checkpoint_step"]) == ("specific",
                                                                                first)


def test_wizard_shows_server_errors_inline(panel: AgentsPanel, live: ServerProcess) -> None:
    assert live.api("POST", "agents", json={"name": "taken",
                                             "experiment": "cartpole-ppo"}).status_code == 201
    panel.refresh().result(30)
    wizard = panel.open_wizard()
    assert wizard is not None
    wizard.name.value = "taken"
    wizard.source.value = "cartpole-ppo"
    # Caught on step 1, as typed: the panel knows the agents there are.
    assert "already exists" in wizard.name_hint.value
    assert wizard.next_button.disabled
    wizard.cancel_button.click()
    # One made elsewhere after the wizard opened: the server's answer shows at Create.
    wizard = panel.open_wizard()
    assert wizard is not None
    wizard.taken = frozenset()
    wizard.name.value = "taken"
    wizard.source.value = "cartpole-ppo"
    wizard.next_button.click()
    wizard.create_button.click()
    panel.wait_idle()
    assert panel.wizard is wizard  # still open, so the user can fix the name
    assert "already exists" in wizard.error.value
    assert not wizard.create_button.disabled
    wizard.cancel_button.click()
    assert panel.wizard is None
    assert wizard.comm is None


# -- rows: connect, status, expand, key, rotate, delete ----------------------------------------


def test_status_updates_by_itself(panel: AgentsPanel, live: ServerProcess) -> None:
    """Agents made and connected elsewhere show up and turn Deployed with no click."""
    live.api("POST", "agents", json={"name": "elsewhere", "experiment": "pendulum-td3",
                                     "description": "from curl"})
    live.api("POST", "agents/elsewhere/connect")
    row = wait_until(lambda: "elsewhere" in panel.tables["classic"].rows
                     and panel.row("elsewhere"), what="the row")
    wait_until(lambda: "Deployed" in row.status_cell.value, what="Deployed")
    assert row.chevron.layout.visibility == "visible"
    live.api("DELETE", "agents/elsewhere")
    wait_until(lambda: "elsewhere" not in panel.tables["classic"].rows, what="row removed")
    assert row.comm is None
    assert row.status_cell.comm is None


def test_connect_expand_reveal_copy_rotate_disconnect_delete(
        panel: AgentsPanel, live: ServerProcess, front_end: list[dict[str, Any]]) -> None:
    live.api("POST", "agents", json={"name": "keyed", "experiment": "cartpole-dqn"})
    panel.refresh().result(10)
    row = panel.row("keyed")
    assert row.chevron.layout.visibility == "hidden"

    row.toggle_button.click()
    assert row.toggle_button.disabled  # busy while the call is on its way
    wait_until(lambda: "Deployed" in row.status_cell.value, what="Deployed")
    assert row.toggle_button.description == "Disconnect"
    assert row.chevron.layout.visibility == "visible"
    key = live.api("GET", "agents/keyed").json()["api_key"]
    assert key

    row.chevron.click()
    panel.wait_idle()
    details = row.details
    assert isinstance(details, DeploymentDetails)

    # The key is masked and is no trait of any widget: not in saved state, not in any
    # message that would create or update a widget in the browser.
    assert key not in saved_state_json()
    assert not any(key in json.dumps(m["data"], default=str) for m in front_end)
    assert details.secret.mask.startswith("•")

    # Reveal and copy: the browser asks with a custom message; the key rides only in the
    # custom reply, which is never saved.
    browser_sends(details.secret, {"type": "request", "id": "r1"})
    assert custom_replies(front_end, details.secret)[-1] == {"type": "answer", "id": "r1",
                                                             "text": key}
    browser_sends(details.copy_endpoint, {"type": "request", "id": "e1"})
    endpoint = custom_replies(front_end, details.copy_endpoint)[-1]["text"]
    assert endpoint.endswith("/agents/d/keyed")
    assert key not in saved_state_json()

    # Snippets for all three tabs, none holding the key.
    assert details.code_tabs.titles == ("Arena client", "Arena CLI", "Manual HTTP")
    for snippet in details.snippets.values():
        assert key not in snippet.code
        assert "ARENA_API_KEY" in snippet.code
    assert endpoint + "/get_action" in details.snippets["Manual HTTP"].code

    # Classic RL rows also offer a run-an-episode playground, built when first opened.
    assert details.playground_box is not None
    details.playground_box.selected_index = 0
    playground = details.playground_box.children[0].children[0]
    assert type(playground).__name__ == "EpisodePlayground"
    assert key not in saved_state_json()

    # Rotate, with confirmation; the old key stops at once, the revealed one is masked.
    details.rotate_button.click()
    assert details.confirm_box.layout.display == ""
    details.rotate_cancel.click()
    assert details.confirm_box.layout.display == "none"
    details.rotate_button.click()
    details.rotate_confirm.click()
    panel.wait_idle()
    new_key = panel.state.api_key("keyed")
    assert new_key
    assert new_key != key
    assert {"type": "reset"} in custom_replies(front_end, details.secret)
    assert "New key" in details.rotate_status.value
    refused = requests.post(endpoint + "/get_action", json={}, timeout=10,
                            headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    browser_sends(details.secret, {"type": "request", "id": "r2"})
    assert custom_replies(front_end, details.secret)[-1]["text"] == new_key
    assert new_key not in saved_state_json()

    # Disconnect: the chevron goes and the details are closed.
    row.toggle_button.click()
    wait_until(lambda: "Undeployed" in row.status_cell.value, what="Undeployed")
    assert row.chevron.layout.visibility == "hidden"
    assert not row.expanded
    assert details.comm is None
    assert details.secret.comm is None
    assert row.toggle_button.description == "Connect"

    # Delete asks first.
    row.delete_button.click()
    assert row.confirm.layout.display == ""
    assert row.buttons.layout.display == "none"
    row.confirm.no.click()
    assert row.buttons.layout.display == ""
    row.delete_button.click()
    row.confirm.yes.click()
    panel.wait_idle()
    assert "keyed" not in panel.tables["classic"].rows
    assert row.comm is None
    assert live.api("GET", "agents/keyed").status_code == 404


def test_advanced_row_shows_base_model_and_failed_reason(
        empty: ServerProcess, front_end: list[dict[str, Any]]) -> None:
    writer = ExperimentWriter.create(empty.root, "broken-lora", project_type="advanced",
                                     algorithm="SFT", framework="transformers",
                                     dataset="tiny-chat", base_model="org/base-model",
                                     overwrite=True)
    writer.checkpoint_path(5, suffix="").mkdir()
    writer.log(5, training_score=0.5, evaluation_score=0.25)
    panel = make_panel(empty)
    try:
        panel.tabs.selected_index = 1
        wizard = panel.open_wizard()
        assert wizard is not None
        assert dict(wizard.source.options)["broken-lora (tiny-chat)"] == "broken-lora"
        wizard.name.value = "broken"
        wizard.source.value = "broken-lora"
        wizard.next_button.click()
        wizard.create_button.click()
        panel.wait_idle()
        assert "broken" not in panel.tables["classic"].rows  # tabs never mix
        row = panel.row("broken")
        assert "org/base-model" in row.base_model_cell.value
        row.toggle_button.click()
        wait_until(lambda: "Failed" in row.status_cell.value, timeout=60, what="Failed")
        reason = empty.api("GET", "agents/broken").json()["error"]
        assert reason
        # The reason is under the row, full width, not squeezed into the Status column; only
        # its first line shows, the rest (the library's error) is folded away.
        summary, _, rest = reason.strip().partition("\n")
        assert row.reason.layout.display == ""
        assert html.escape(summary.strip()) in row.reason.value
        assert ("<details>" in row.reason.value) == bool(rest.strip())
        assert "awb-reason" not in row.status_cell.value
        assert row.chevron.layout.visibility == "hidden"

        # Connected but Failed: the main button retries (as on the platform), and switching
        # the agent off stays possible through the power button in the chevron's place.
        assert row.toggle_button.description == "Retry"
        assert row.chevron.layout.display == "none"
        assert row.disconnect_button.layout.display == ""
        seen: list[str] = []
        row.status_cell.observe(lambda change: seen.append(change["new"]), "value")
        row.toggle_button.click()
        wait_until(lambda: any("Pending" in v for v in seen)
                   and "Failed" in row.status_cell.value, timeout=60, what="a retry")
        assert empty.api("GET", "agents/broken").json()["connected"] is True
        row.disconnect_button.click()
        wait_until(lambda: "Undeployed" in row.status_cell.value, what="Undeployed")
        assert row.toggle_button.description == "Connect"
        assert row.disconnect_button.layout.display == "none"
        assert row.reason.layout.display == "none"
        assert empty.api("GET", "agents/broken").json()["connected"] is False
    finally:
        panel.close()


def test_unreachable_server_is_shown_and_retried(front_end: list[Any]) -> None:
    panel = AgentsPanel(ServerInfo(url=f"http://127.0.0.1:{free_port()}/", token="x"),
                        poll_interval=0.1)
    try:
        wait_until(lambda: panel.poller is not None and panel.poller.ticks >= 2,
                   what="polls despite the failure")
        assert "Cannot reach the workbench server" in panel.notice.value
        assert panel.new_button.disabled
    finally:
        panel.close()


def test_closing_the_panel_stops_polling_and_closes_widgets(live: ServerProcess,
                                                            front_end: list[Any]) -> None:
    panel = make_panel(live)
    poller = panel.poller
    assert poller is not None
    wait_until(lambda: poller.ticks >= 2, what="two polls")
    tables = list(panel.tables.values())
    panel.close()
    assert not poller.running
    assert panel.comm is None
    assert all(t.comm is None for t in tables)
    assert all(w.comm is None for w in (panel.new_button, panel.tabs, panel.notice))
    assert isinstance(panel.title, widgets.HTML)


def test_a_new_panel_retires_the_previous_one_for_the_same_server(
        live: ServerProcess, front_end: list[Any]) -> None:
    # What re-running the notebook cell does: the old panel must not poll on, unseen.
    old = make_panel(live)
    old_poller, old_table = old.poller, old.tables["classic"]
    assert old_poller is not None
    new = make_panel(live)
    try:
        assert not old_poller.running
        assert old_table.comm is None
        assert len(old.children) == 1
        assert "replaced by a newer one" in old.children[0].value
        assert new.poller is not None
        old_ticks, ticks = old_poller.ticks, new.poller.ticks
        wait_until(lambda: new.poller is not None and new.poller.ticks > ticks + 1,
                   what="the new panel to keep polling")
        assert old_poller.ticks == old_ticks
    finally:
        old.close()
        new.close()
    assert not new.poller.running


# -- the rules, on their own ------------------------------------------------------------------


def test_checkpoint_rules_match_the_server() -> None:
    from agents_widget.client import CheckpointInfo, ExperimentInfo
    from agents_widget.state import experiment_label, ordered_checkpoints

    ckpts = [CheckpointInfo(100, 1.0, 5.0), CheckpointInfo(200, 3.0, 5.0),
             CheckpointInfo(300, 9.0, None)]
    assert best_step(ckpts) == 200  # highest evaluation score; ties go to the later step
    assert final_step(ckpts) == 300
    assert [c.step for c in ordered_checkpoints(ckpts, "best")] == [200, 100, 300]
    assert [c.step for c in ordered_checkpoints(ckpts, "final")] == [300, 200, 100]
    assert [c.step for c in ordered_checkpoints(ckpts, "specific")] == [100, 200, 300]
    unevaluated = [CheckpointInfo(100, 4.0), CheckpointInfo(200, 2.0), CheckpointInfo(300)]
    assert best_step(unevaluated) == 100  # falls back to the training score
    assert ordered_checkpoints(unevaluated, "best")[0].step == 100
    assert best_step([CheckpointInfo(7), CheckpointInfo(9)]) == 9  # nothing scored: final
    advanced = ExperimentInfo.from_json({"name": "sft", "tab": "advanced",
                                         "dataset": "chat-v2", "environment": None})
    assert experiment_label(advanced) == "sft (chat-v2)"


def test_experiments_still_training_show_under_the_top_bar(
        empty: ServerProcess, front_end: list[dict[str, Any]]) -> None:
    """The main job's background training, as the panel sees it: queued, then training with
    checkpoints (New Agent lists it), then trained (the line goes)."""
    import shutil

    from server_extension.demos.plan import JOBS, queue_jobs
    from workbench_core import training_marks

    job = next(j for j in JOBS if j.name == "spread-maddpg")
    queue_jobs(empty.root, [job])
    panel = make_panel(empty)
    try:
        wait_until(lambda: "spread-maddpg" in panel.training_line.value, what="the queued line")
        assert "Still training in the background" in panel.training_line.value
        assert "(queued)" in panel.training_line.value
        assert panel.new_button.disabled  # a placeholder has no checkpoint to deploy

        training_marks.mark(empty.root, "spread-maddpg", "training")
        writer = ExperimentWriter(empty.root / "experiments" / "spread-maddpg",
                                  ExperimentStore(empty.root).get("spread-maddpg").info)
        writer.checkpoint_path(100).write_bytes(b"a checkpoint")
        writer.log(100, evaluation_score=-20.0)
        wait_until(lambda: "1 checkpoint so far" in panel.training_line.value,
                   what="the training line")
        wait_until(lambda: not panel.new_button.disabled, what="New Agent enabled")

        training_marks.clear(empty.root, "spread-maddpg")
        wait_until(lambda: panel.training_line.value == "", what="the line gone")
    finally:
        panel.close()
        training_marks.clear(empty.root, "spread-maddpg")
        shutil.rmtree(empty.root / "experiments" / "spread-maddpg", ignore_errors=True)


def test_polling_stops_when_no_view_is_open(live: ServerProcess, front_end: list[Any]) -> None:
    """Views report open / beat / closed (views.py): with none left the poller stops calling
    the server, which lets an idle hub server be culled; a view that opens resumes it and
    names the page's origin, under which the panel then shows the server's URLs."""
    panel = make_panel(live)
    try:
        client = panel._client()
        browser_sends(panel.views, {"event": "open", "id": "v1",
                                    "origin": "https://hub.example.org"})
        wait_until(lambda: (panel.public_url or "").startswith("https://hub.example.org/"),
                   what="the public URL under the page's origin")
        assert "https://hub.example.org/" in panel.subtitle.value
        assert "127.0.0.1" not in panel.subtitle.value
        before = client.request_count
        wait_until(lambda: client.request_count >= before + 2, what="polls while a view is open")
        browser_sends(panel.views, {"event": "closed", "id": "v1"})
        assert panel.views.open_views == 0
        assert not panel.views.watched()  # seen once: no grace any more
        panel.wait_idle()
        settled = client.request_count
        time.sleep(1.0)  # absence can only be waited out: five poll intervals, no view open
        assert client.request_count <= settled + 1  # at most a poll already under way
        browser_sends(panel.views, {"event": "open", "id": "v2",
                                    "origin": "https://hub.example.org"})
        wait_until(lambda: client.request_count >= settled + 2, what="polling to resume")
    finally:
        panel.close()
