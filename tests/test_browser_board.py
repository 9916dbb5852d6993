"""Tic-tac-toe against a deployed IPPO agent, in a real Chromium: a game played to the end.

The Voila app over a workspace holding the quick ``tictactoe-ippo`` run: the visitor opens
the agent's row, picks *Play against it*, clicks squares until the game ends, reads the
result line and the running score, then lets the agent start a second game.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_extension.demos.classic_multi_recurrent import TICTACTOE
from tests.browser_support import (
    Api,
    Shots,
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

pytest_plugins = ["tests.classic_fixtures"]
pytestmark = pytest.mark.browser

RESULT = re.compile(r"You win!|The agent wins\.|Draw\.")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, classic_experiments: Path
        ) -> Iterator[VoilaApp]:
    root = copy_workspace(tmp_path_factory.mktemp("browser-board") / "ws", classic_experiments)
    made = VoilaApp(root)
    try:
        yield made
    finally:
        made.stop()


def _squares(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(".awb-board button").all_inner_texts()]


def _play_to_the_end(page: Any) -> int:
    """Click the first empty square whenever it is the user's turn, until a result shows."""
    status = page.locator(".awb-board-status")
    for clicks in range(6):
        # The user's turn: the prompt and a clickable square (or the game is over).
        page.wait_for_function(
            "() => { const s = document.querySelector('.awb-board-status');"
            " if (!s) return false; if (/You win|agent wins|Draw/.test(s.textContent))"
            " return true; return /Your move/.test(s.textContent) && Array.from("
            "document.querySelectorAll('.awb-board button')).some(b => !b.disabled); }")
        if RESULT.search(status.inner_text()):
            return clicks
        empty = page.locator(".awb-board button:enabled").first
        before = sum(1 for s in _squares(page) if s)
        empty.click()
        # Our mark, then (unless the game ended) the agent's, land on the board.
        page.wait_for_function(
            "n => Array.from(document.querySelectorAll('.awb-board button'))"
            ".filter(b => b.textContent.trim()).length > n", arg=before)
    shown(page.locator(".awb-board-status", has_text=RESULT))
    return 6


def _wait_for_games(page: Any, games: int) -> None:
    """Until the running score counts ``games`` games (it is its own widget message)."""
    page.wait_for_function(
        "n => { const s = document.querySelector('.awb-board-score');"
        " return !!s && (s.textContent.match(/\\d+/g) || []).map(Number)"
        ".reduce((a, b) => a + b, 0) === n; }", arg=games)


def test_a_game_against_the_deployed_agent_is_played_to_the_end(app: VoilaApp,
                                                                shots: Shots) -> None:
    api = Api(app.url, app.token)
    name = "ttt-board"
    api.deploy(name, TICTACTOE)

    def steps(page: Any) -> None:
        open_app(page, f"{app.url}?token={app.token}")
        wait_deployed(page, name, api)
        row(page, name).locator("button:has(i.fa-chevron-down)").click()
        page.get_by_text("Play against it").click()
        page.locator(".awb-board").wait_for()
        shown(page.locator(".awb-board-status", has_text="Your move"))
        assert _squares(page) == [""] * 9
        shots.take(page, "board-empty")

        clicks = _play_to_the_end(page)
        assert clicks >= 3, "a tic-tac-toe game needs at least three moves of the first player"
        result = page.locator(".awb-board-status").inner_text()
        assert RESULT.search(result), result
        _wait_for_games(page, 1)
        score = page.locator(".awb-board-score").inner_text()
        counts = [int(n) for n in re.findall(r"\d+", score)]
        assert sum(counts) == 1, score
        marks = _squares(page)
        assert marks.count("X") in (marks.count("O"), marks.count("O") + 1)
        page.locator(".awb-board").scroll_into_view_if_needed()
        shots.take(page, "board-game-over", docs="board-playground",
                   target=details_part(page, "Play against it"))

        # The agent starts the second game: it plays X before the user clicks anything.
        page.get_by_text("Agent starts (X)").click()
        page.locator("button", has_text=re.compile(r"^\s*New game\s*$")).click()
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('.awb-board button'))"
            ".map(b => b.textContent.trim()).join('') === 'X'")
        shown(page.locator(".awb-board-status", has_text="Your move"))
        _play_to_the_end(page)
        _wait_for_games(page, 2)
        score = page.locator(".awb-board-score").inner_text()
        assert sum(int(n) for n in re.findall(r"\d+", score)) == 2, score
        shots.take(page, "board-second-game")

    try:
        in_browser(app.url, steps, shots)
    finally:
        api("DELETE", f"agents/{name}")
