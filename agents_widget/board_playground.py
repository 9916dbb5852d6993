"""Play tic-tac-toe against a deployed turn-based PettingZoo agent, through its live endpoint.

:class:`BoardPlayground` sits in the expanded row of a Deployed agent whose experiment is a
turn-based PettingZoo game (``extra["env"]["kind"] == "turn_based"``, tic-tac-toe here). The
user clicks a square; the game itself is the PettingZoo environment the agent was trained
on, so legality and observations are exactly the training ones; the agent's answer comes
from its endpoint through the Arena client (``agilerl.arena.inference.Agent``), with the
legal-move mask in ``info["action_mask"]``. When a game ends a result line says who won and
a running score counts the games since the playground opened. Example::

    board = BoardPlayground(agent.endpoint, lambda: state.api_key(agent.name), experiment)
    board                 # display it; or board.new_game(), board.play(4), board.wait()

Threads: the agent's moves are asked for on a worker thread, which only sets widget values,
so the kernel stays free; clicks while the agent is thinking are ignored. The key is asked
from ``key`` per game and never stored in a trait (so it is neither in the widget state nor
in the notebook file).
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np

from workbench_core.environments import make_env, policy_observation

from .episode_playground import resolve_env_spec

KeyProvider = Callable[[], str | None]
# Marks stay legible on disabled (taken, or not your turn) squares.
CSS = """
.awb-board .awb-square { font-size: 28px; font-weight: 700; opacity: 1 !important; }
.awb-board .awb-square-x { color: #1565c0 !important; }
.awb-board .awb-square-o { color: #c62828 !important; }
"""
MARKS = ("X", "O")  # the first player plays X
SIZE = 3


def is_turn_based(experiment: Mapping[str, Any]) -> bool:
    """Whether an experiment's environment is a turn-based (AEC) game the board can play."""
    try:
        return resolve_env_spec(experiment).get("kind") == "turn_based"
    except ValueError:
        return False


def square_position(action: int) -> tuple[int, int]:
    """(row, column) on screen of PettingZoo tic-tac-toe's square ``action``.

    PettingZoo numbers the squares down the columns (0 1 2 is the left column), as its own
    renderer draws them.
    """
    return action % SIZE, action // SIZE


class BoardPlayground(widgets.VBox):
    """Who starts, *New game*, the 3x3 board, a result line and the running score."""

    def __init__(self, endpoint: str, key: KeyProvider, experiment: Mapping[str, Any]) -> None:
        self._endpoint = endpoint
        self._key = key
        self.experiment = dict(experiment)
        self.spec = resolve_env_spec(self.experiment)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.env: Any = None
        self.human = ""
        self.agent_side = ""
        self.result = ""
        self.last_error: str | None = None
        self.score = {"you": 0, "agent": 0, "draw": 0}

        self.starts = widgets.ToggleButtons(
            options=[("You start (X)", "you"), ("Agent starts (X)", "agent")], value="you",
            tooltips=["You play X and move first", "The agent plays X and moves first"],
            style={"button_width": "130px"})
        self.new_button = widgets.Button(description="New game", icon="refresh",
                                         button_style="primary",
                                         tooltip="Start a new game (who starts: on the left)")
        self.squares = [widgets.Button(description="\u00a0",
                                       layout=widgets.Layout(width="64px", height="64px"))
                        for _ in range(SIZE * SIZE)]
        for action, square in enumerate(self.squares):
            square.add_class("awb-square")
            square.add_class(f"awb-square-{action}")
            square.on_click(lambda _b, action=action: self.play(action))
        # Lay the buttons out by screen position, so the grid reads like PettingZoo's board.
        ordered = sorted(range(SIZE * SIZE), key=square_position)
        self.grid = widgets.GridBox(
            [self.squares[a] for a in ordered],
            layout=widgets.Layout(grid_template_columns=f"repeat({SIZE}, 66px)",
                                  grid_gap="4px", width="210px"))
        self.grid.add_class("awb-board")
        self.status = widgets.HTML()
        self.status.add_class("awb-board-status")
        self.score_line = widgets.HTML()
        self.score_line.add_class("awb-board-score")
        self.new_button.on_click(lambda _b: self.new_game())
        style = widgets.HTML(f"<style>{CSS}</style>", layout=widgets.Layout(display="none"))
        super().__init__([style, widgets.HBox([self.starts, self.new_button]), self.grid,
                          self.status, self.score_line])
        self._show_score()
        self.new_game()

    # -- the game ------------------------------------------------------------------------------

    @property
    def thinking(self) -> bool:
        """Whether the agent's move is being asked for right now."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def over(self) -> bool:
        """Whether the current game has ended."""
        return bool(self.result)

    def new_game(self) -> None:
        """Start a game; the side in the toggle moves first (the agent at once, if it)."""
        with self._lock:
            if self.thinking:
                return
            if self.env is not None:
                self.env.close()
            self.env = make_env(self.spec)
            self.env.reset()
            first, second = self.env.possible_agents[:2]
            self.human, self.agent_side = ((first, second) if self.starts.value == "you"
                                           else (second, first))
            self.result, self.last_error = "", None
            self._draw()
            if self.env.agent_selection == self.agent_side:
                self._agent_turn()
            else:
                self._say("Your move: click a square.")

    def play(self, action: int) -> bool:
        """The user plays square ``action``; ``False`` when that is not a legal move now."""
        with self._lock:
            if self.thinking or self.over or self.env.agent_selection != self.human:
                return False
            mask = self._mask()
            if not mask[action]:
                self._say("That square is taken: pick an empty one.")
                return False
            # Say so before the board changes, so the page never shows the user's new mark
            # beside a stale "Your move".
            self._say("The agent is thinking…")
            self.env.step(int(action))
            self._draw()
            if not self._finished():
                self._agent_turn()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the agent has answered; ``True`` when it is not thinking."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.thinking

    def _agent_turn(self) -> None:
        # Called with the lock held: the worker takes it again once the answer is in.
        self._say("The agent is thinking…")
        self._set_clickable(False)
        raw = self.env.observe(self.agent_side)
        obs = policy_observation(self.spec, raw)
        mask = np.asarray(raw["action_mask"], dtype=np.int8)
        self._thread = threading.Thread(target=self._ask_agent, args=(obs, mask),
                                        name="board-playground", daemon=True)
        self._thread.start()

    def _ask_agent(self, obs: np.ndarray, mask: np.ndarray) -> None:
        from agilerl.arena.inference import Agent

        side = self.agent_side
        try:
            key = self._key()
            if not key:
                raise RuntimeError("the agent is not Deployed any more")
            with Agent(self._endpoint, api_key=key) as client:
                actions, _ = client.get_action({side: obs}, info={"action_mask": {side: mask}})
            # Multi-agent agents answer a dict keyed by agent id.
            picked = actions[side] if isinstance(actions, Mapping) else actions
            move = int(np.asarray(picked).reshape(-1)[0])
            if not mask[move]:
                raise RuntimeError(f"the agent answered square {move}, which is not legal")
        except Exception as exc:  # noqa: BLE001 - shown in the widget; the game can restart
            with self._lock:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._say(f"<span class='awb-error'>The agent could not move: "
                          f"{html.escape(self.last_error)}</span> Press New game to try again.",
                          escape=False)
            return
        with self._lock:
            self.env.step(move)
            self._draw()
            if not self._finished():
                self._say("Your move: click a square.")
                self._set_clickable(True)

    def _finished(self) -> bool:
        """If the game is over: the result line and the score; else ``False``."""
        if not all(self.env.terminations.get(a, False) or self.env.truncations.get(a, False)
                   for a in self.env.possible_agents):
            return False
        # The final move rewards both players (+1 win, -1 loss, 0 draw).
        mine = float(self.env.rewards.get(self.human, 0.0))
        if mine > 0:
            self.result, line = "you", "You win!"
        elif mine < 0:
            self.result, line = "agent", "The agent wins."
        else:
            self.result, line = "draw", "Draw."
        self.score[self.result] += 1
        # Each widget change reaches the page as its own message: the score and the locked
        # board go first, so a page showing the result line already shows the new score.
        self._show_score()
        self._set_clickable(False)
        self._say(f"{line} Press New game to play again.")
        return True

    # -- the view ------------------------------------------------------------------------------

    def _mask(self) -> np.ndarray:
        return np.asarray(self.env.observe(self.env.agent_selection)["action_mask"], dtype=bool)

    def _draw(self) -> None:
        squares = list(self.env.unwrapped.board.squares)
        for action, button in enumerate(self.squares):
            owner = int(squares[action])  # 0 empty, 1 first player, 2 second player
            button.description = MARKS[owner - 1] if owner else "\u00a0"
            button.disabled = bool(owner) or self.env.agent_selection != self.human
            for mark in ("x", "o"):
                button.remove_class(f"awb-square-{mark}")
            if owner:
                button.add_class(f"awb-square-{MARKS[owner - 1].lower()}")

    def _set_clickable(self, clickable: bool) -> None:
        squares = list(self.env.unwrapped.board.squares)
        for action, button in enumerate(self.squares):
            button.disabled = not clickable or bool(squares[action])

    def _say(self, text: str, *, escape: bool = True) -> None:
        self.status.value = html.escape(text) if escape else text

    def _show_score(self) -> None:
        s = self.score
        self.score_line.value = (f"Score: you <b>{s['you']}</b> · agent <b>{s['agent']}</b> · "
                                 f"draws <b>{s['draw']}</b>")

    def close(self) -> None:
        """Close the environment and the widgets."""
        if self.env is not None:
            self.env.close()
        super().close()
