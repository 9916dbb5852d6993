"""The episode playground against live deployed agents (real server, real Arena client)."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
from PIL import Image

from agents_widget.episode_playground import EpisodePlayground, frames_to_gif
from server_extension.demos.classic_multi_recurrent import MEMORY, SPREAD, TICTACTOE
from tests.servers import ServerProcess

pytest_plugins = ["tests.classic_fixtures"]
pytestmark = pytest.mark.slow


def _experiment(server: ServerProcess, name: str) -> dict[str, Any]:
    """The experiment as the panel has it: an entry of GET agents/api/experiments."""
    listed = server.api("GET", "experiments").json()["experiments"]
    return next(e for e in listed if e["name"] == name)


def _all_state(widget: Any) -> str:
    states = [widget.get_state()]
    for child in getattr(widget, "children", ()):
        states.append(_all_state(child))
    return json.dumps(states, default=repr)


def test_recurrent_episode_runs_off_the_kernel_thread(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The kernel shares the server's workspace: the playground reads extra["env"] from it.
    monkeypatch.setenv("AGENTS_WORKBENCH_ROOT", str(classic_server.root))
    agent = classic_agents["memory"]
    playground = EpisodePlayground(agent["endpoint"], agent["api_key"],
                                   _experiment(classic_server, MEMORY))
    assert playground.spec is not None
    assert playground.spec["observation"] == {"keep": [0, 2]}

    started = time.perf_counter()
    thread = playground.run(seed=4)
    returned_in = time.perf_counter() - started
    assert thread is not None
    assert thread is not threading.current_thread()
    assert returned_in < 0.25
    assert playground.run() is None or not playground.running  # one episode at a time
    assert playground.status.value.startswith("Running")
    assert playground.wait(timeout=60)
    assert playground.last_error is None, playground.last_error

    episode = playground.last_episode
    assert episode is not None
    assert episode.length >= 8
    assert episode.returns["agent"] == float(episode.length)   # CartPole: +1 per step
    gif = Image.open(io.BytesIO(playground.animation.value))
    assert gif.format == "GIF"
    assert 2 <= getattr(gif, "n_frames", 1) <= len(episode.frames)  # identical frames merge
    assert f"length <b>{episode.length}</b>" in playground.summary.value
    assert playground.run_button.description == "Run again"
    assert not playground.run_button.disabled


def test_multi_agent_game_shows_returns_per_agent(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess
) -> None:
    agent = classic_agents["ttt"]
    playground = EpisodePlayground(agent["endpoint"], agent["api_key"],
                                   _experiment(classic_server, TICTACTOE))
    assert playground.opponent.layout.display != "none"
    playground.run(seed=1)
    assert playground.wait(timeout=60)
    assert playground.last_error is None, playground.last_error
    first = playground.last_episode
    assert first is not None
    assert set(first.returns) == {"player_1", "player_2"}
    assert first.outcome in ("player_1 wins", "player_2 wins", "draw")
    assert "player_2" in playground.summary.value
    assert playground.animation.value[:6] == b"GIF89a"

    playground.opponent.value = "self"
    playground.seed.value = 2
    playground.run_button.click()              # "Run again"
    assert playground.wait(timeout=60)
    assert playground.last_episode is not first
    assert playground.last_error is None


def test_continuous_multi_agent_episode(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess
) -> None:
    agent = classic_agents["spread"]
    playground = EpisodePlayground(agent["endpoint"], agent["api_key"],
                                   _experiment(classic_server, SPREAD))
    assert playground.opponent.layout.display == "none"
    playground.run(seed=0)
    assert playground.wait(timeout=60)
    assert playground.last_error is None, playground.last_error
    episode = playground.last_episode
    assert episode is not None
    assert episode.length == 25
    assert set(episode.returns) == {"agent_0", "agent_1"}
    assert len(episode.frames) == 26


def test_api_key_stays_out_of_widget_state(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess
) -> None:
    agent = classic_agents["ttt"]
    playground = EpisodePlayground(agent["endpoint"], agent["api_key"],
                                   _experiment(classic_server, TICTACTOE))
    assert agent["api_key"] not in _all_state(playground)
    assert not {"api_key", "_api_key"} & set(playground.trait_names())
    playground.close()


def test_wrong_key_is_reported_in_the_widget(
    classic_agents: dict[str, dict[str, Any]], classic_server: ServerProcess
) -> None:
    agent = classic_agents["ttt"]
    playground = EpisodePlayground(agent["endpoint"], "awb_wrong-key",
                                   _experiment(classic_server, TICTACTOE))
    playground.run(seed=0)
    assert playground.wait(timeout=60)
    assert playground.last_error is not None
    assert "401" in playground.last_error or "Unauthorized" in playground.last_error
    assert "stopped" in playground.status.value
    assert not playground.run_button.disabled


def test_unknown_environment_disables_running() -> None:
    playground = EpisodePlayground("http://127.0.0.1:9/agents/d/x", "k",
                                   {"name": "mystery", "environment": "NoSuchEnv-v0"})
    assert playground.run_button.disabled
    assert playground.run() is None
    assert "NoSuchEnv-v0" in playground.status.value


def test_gif_keeps_the_last_frame_and_caps_length() -> None:
    import numpy as np

    frames = [np.full((10, 20, 3), i % 256, np.uint8) for i in range(650)]
    gif = Image.open(io.BytesIO(frames_to_gif(frames, 40, width=40)))
    assert gif.size == (40, 20)
    assert getattr(gif, "n_frames", 1) <= 301
    assert frames_to_gif([], 40) == b""
