"""The chat playground in a real Chromium: a deployed tiny LLM's reply streams into the page.

The Voila app over the Advanced Training demo (a tiny causal LM); the test watches the
page's DOM while the reply arrives and checks that it grew piece by piece, as the server
flushed it, before it settled into the transcript.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_support import (
    Api,
    Shots,
    at_widths,
    button,
    details_part,
    in_browser,
    open_app,
    row,
    shots,
    wait_deployed,
)
from tests.servers import VoilaApp, copy_workspace

__all__ = ["shots"]  # a fixture used by name below

pytestmark = pytest.mark.browser

# The reply text of an assistant turn (without its "Assistant" title).
REPLY_TEXT = """turn => Array.from(turn.childNodes)
  .filter(n => !(n.classList && n.classList.contains('awb-chat-role')))
  .map(n => n.textContent).join('')"""
# Every text the last assistant turn showed while the reply streamed, in order.
RECORD_REPLIES = f"""() => {{
  const text = {REPLY_TEXT};
  window.__awbReplies = [];
  new MutationObserver(() => {{
    const turns = document.querySelectorAll('.awb-chat-assistant');
    if (!turns.length) return;
    const now = text(turns[turns.length - 1]);
    const seen = window.__awbReplies;
    if (seen[seen.length - 1] !== now) seen.push(now);
  }}).observe(document.body, {{subtree: true, childList: true, characterData: true}});
}}"""


# The README's screenshot shows the full demo model's answers: point this at the
# experiments/ folder of a workspace the main job trained to run against it instead of the
# quick (untrained) model; the answers are then checked word for word.
FULL_DEMO_ENV = "AGENTS_WORKBENCH_CHAT_EXPERIMENTS"


@pytest.fixture
def app(tmp_path: Path, advanced_experiments: Path) -> Iterator[VoilaApp]:
    source = Path(os.environ.get(FULL_DEMO_ENV) or advanced_experiments)
    made = VoilaApp(copy_workspace(tmp_path / "ws", source))
    try:
        yield made
    finally:
        made.stop()


def test_chat_playground_streams_the_reply_into_the_page(app: VoilaApp, shots: Shots) -> None:
    from server_extension.demos.llm import SFT_EXPERIMENT

    api = Api(app.url, app.token)
    name = "chatty"
    api.deploy(name, SFT_EXPERIMENT)
    info = json.loads((app.root / "experiments" / SFT_EXPERIMENT / "experiment.json")
                      .read_text())
    trained = info["extra"].get("quick") is False

    def steps(page: Any) -> None:
        open_app(page, f"{app.url}?token={app.token}")
        page.get_by_role("tab", name="Advanced Training").click()
        wait_deployed(page, name, api)
        at_widths(page, "Voila, Advanced Training")  # the Base Model cell, the headers
        shots.take(page, "advanced-tab", docs="advanced-tab")
        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.get_by_text("Chat playground").click()
        prompt = page.get_by_placeholder("Ask the agent something")
        prompt.wait_for()
        page.get_by_label("Max tokens").fill("48")
        # Greedy by default: the same reply every run, so its length (and the streaming
        # check) is stable.
        assert not page.get_by_label("Sample").is_checked()
        page.evaluate(RECORD_REPLIES)
        prompt.fill("What is the capital of France?")
        button(page, "Send").click()
        transcript = page.locator(".awb-chat-assistant")
        # Done: Send is back on and the reply sits in the transcript.
        page.wait_for_function(
            "() => { const b = Array.from(document.querySelectorAll('button'))"
            ".find(b => b.textContent.trim() === 'Send');"
            " return b && !b.disabled && window.__awbReplies.length > 0"
            " && !document.body.innerText.includes('No messages yet'); }", timeout=120_000)
        final = transcript.last.evaluate(REPLY_TEXT)
        assert final.strip(), "no reply in the transcript"
        pieces = [r for r in page.evaluate("window.__awbReplies") if r.strip() not in ("", "…")]
        # Streamed: several partial replies were on show, each the start of the final one.
        partial = [r for r in pieces if r != final]
        assert len(partial) >= 2, f"the reply arrived in one piece: {pieces}"
        assert all(final.startswith(r) for r in partial), pieces
        assert "What is the capital of France?" in page.locator(".awb-chat-user").last.inner_text()
        if trained:
            assert final.strip() == "The capital of France is Paris."
            # A second in-domain question in the same session: the earlier turn is part of
            # the prompt now, and the answer must not derail.
            prompt.fill("Which city is the capital of Germany?")
            button(page, "Send").click()
            page.wait_for_function(
                "() => document.querySelectorAll('.awb-chat-assistant').length === 2"
                " && Array.from(document.querySelectorAll('button'))"
                ".find(b => b.textContent.trim() === 'Send').disabled === false",
                timeout=120_000)
            second = transcript.last.evaluate(REPLY_TEXT)
            assert second.strip() == "The capital of Germany is Berlin.", second
        at_widths(page, "Voila, the chat playground")  # Temperature, prompt, Sessions
        shots.take(page, "chat", docs="chat-playground",
                   target=details_part(page, "Chat playground"))

        # New session: the list no longer highlights the old session; after the first
        # message it highlights the new one.
        sessions = page.locator(".awb-details select[multiple], .awb-details select[size]")
        selected = ("s => s.selectedIndex < 0 ? '' :"
                    " s.options[s.selectedIndex].text.replace(/\\u00a0/g, ' ')")
        before = sessions.first.evaluate(selected)
        assert before.startswith("What is the capital of France?"), before
        button(page, "New session").click()
        page.wait_for_function(f"s => ({selected})(s) === ''",
                               arg=sessions.first.element_handle())
        prompt.fill("Hello")
        button(page, "Send").click()
        page.wait_for_function(f"s => ({selected})(s).startsWith('Hello')",
                               arg=sessions.first.element_handle(), timeout=120_000)

    try:
        in_browser(app.url, steps, shots)
    finally:
        api("DELETE", f"agents/{name}")
