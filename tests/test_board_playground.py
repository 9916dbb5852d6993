"""The tic-tac-toe board against a real deployed IPPO agent on a real server (no browser).

Games are played through the widget's own methods (what a click calls), so every agent move
is a real ``get_action`` on the live endpoint with the legal-move mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from agents_widget.board_playground import BoardPlayground, is_turn_based, square_position
from server_extension.demos.classic_multi_recurrent import SPREAD, TICTACTOE
from tests.servers import ServerProcess
from workbench_core.store import ExperimentStore

pytest_plugins = ["tests.classic_fixtures"]


@pytest.fixture(scope="module")
def ttt(classic_server: ServerProcess) -> Iterator[dict[str, Any]]:
    agent = classic_server.deploy("board-ttt", TICTACTOE)
    yield agent
    classic_server.api("DELETE", "agents/board-ttt")


def _experiment(root: Any, name: str) -> dict[str, Any]:
    info = ExperimentStore(root).get(name).info
    return {"name": name, "environment": info.environment, "extra": info.extra}


def _play_out(board: BoardPlayground) -> list[int]:
    """Play the lowest legal square each turn until the game ends; the user's moves."""
    moves = []
    for _ in range(9):
        assert board.wait(30), "the agent did not answer"
        assert board.last_error is None, board.last_error
        if board.over:
            return moves
        legal = [a for a, s in enumerate(board.env.unwrapped.board.squares) if s == 0]
        assert board.play(legal[0])
        moves.append(legal[0])
    assert board.wait(30)
    assert board.over
    return moves


def test_full_games_against_the_live_agent_keep_score(ttt: dict[str, Any],
                                                       classic_root: Any) -> None:
    key = ttt["api_key"]
    board = BoardPlayground(ttt["endpoint"], lambda: key, _experiment(classic_root, TICTACTOE))
    try:
        assert board.human == "player_1"
        assert "Your move" in board.status.value
        _play_out(board)
        assert board.result in ("you", "agent", "draw")
        assert sum(board.score.values()) == 1
        assert any(w in board.status.value for w in ("You win", "The agent wins", "Draw"))
        assert all(s.disabled for s in board.squares)  # the game is over: no more clicks
        marks = [s.description for s in board.squares]
        assert marks.count("X") + marks.count("O") == sum(
            1 for s in board.env.unwrapped.board.squares if s)

        # The user lets the agent start: it plays X at once, through the endpoint.
        board.starts.value = "agent"
        board.new_game()
        assert board.wait(30)
        assert board.last_error is None
        assert board.human == "player_2"
        assert [s.description for s in board.squares].count("X") == 1
        _play_out(board)
        assert sum(board.score.values()) == 2
        assert f"you <b>{board.score['you']}</b>" in board.score_line.value
    finally:
        board.close()


def test_a_taken_square_is_refused_and_the_game_goes_on(ttt: dict[str, Any],
                                                       classic_root: Any) -> None:
    key = ttt["api_key"]
    board = BoardPlayground(ttt["endpoint"], lambda: key, _experiment(classic_root, TICTACTOE))
    try:
        assert board.play(4)
        assert board.wait(30)
        assert board.last_error is None
        taken = [a for a, s in enumerate(board.env.unwrapped.board.squares) if s]
        assert len(taken) == 2  # the user's square and the agent's (legal) answer
        assert not board.play(taken[1])
        assert "taken" in board.status.value
        assert board.play(next(a for a in range(9) if a not in taken))
    finally:
        board.close()


def test_a_rotated_key_is_reported_not_raised(ttt: dict[str, Any], classic_root: Any) -> None:
    board = BoardPlayground(ttt["endpoint"], lambda: "not-the-key",
                            _experiment(classic_root, TICTACTOE))
    try:
        assert board.play(0)
        assert board.wait(30)
        assert board.last_error is not None
        assert "could not move" in board.status.value
        assert not board.over
    finally:
        board.close()


def test_only_turn_based_games_get_a_board(classic_root: Any) -> None:
    assert is_turn_based(_experiment(classic_root, TICTACTOE))
    assert not is_turn_based(_experiment(classic_root, SPREAD))
    assert not is_turn_based({"name": "x", "environment": "CartPole-v1"})
    # PettingZoo numbers squares down the columns; the grid shows them that way.
    assert [square_position(a) for a in (0, 1, 3, 8)] == [(0, 0), (1, 0), (0, 1), (2, 2)]
    assert np.array_equal(sorted(range(9), key=square_position), [0, 3, 6, 1, 4, 7, 2, 5, 8])
