"""Run one episode of a deployed Classic RL agent against its live endpoint, and watch it.

:class:`EpisodePlayground` sits in the expanded row of a Deployed agent. Pick a seed, press
*Run episode*: the agent's environment is rebuilt in the kernel, every action comes from
the live endpoint through the Arena client (``agilerl.arena.inference.Agent``; hidden state
threaded for recurrent agents, per-agent dicts and action masks for multi-agent ones), and
the frames play back as an animated GIF with the return and the length. Example::

    from agents_widget.episode_playground import EpisodePlayground

    playground = EpisodePlayground(agent["endpoint"], agent["api_key"], experiment)
    playground            # display it; or playground.run(seed=3) and playground.wait()

Threads: the episode runs on a worker thread, which only sets widget values, so the kernel
stays free while it plays. The API key is a plain attribute, never a trait, so it is not
part of the widget's state and never reaches the notebook file.
"""

from __future__ import annotations

import html
import io
import threading
import time
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
import numpy as np

from workbench_core.environments import env_spec
from workbench_core.episodes import Episode, client_act, play_episode

# Milliseconds per frame by environment kind: board games step slowly enough to follow.
FRAME_MS = {"turn_based": 700, "parallel": 100, "gymnasium": 40}
MAX_FRAMES = 300
FRAME_WIDTH = 320


def resolve_env_spec(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """How to rebuild the experiment's environment.

    ``experiment["extra"]["env"]`` when the caller has it; else the experiment's
    ``experiment.json`` in the shared workspace (this kernel's root, or the one its server
    reports); else the recipe for its environment id. ``ValueError`` when none applies.
    """
    extra = experiment.get("extra")
    if not isinstance(extra, Mapping) or "env" not in extra:
        extra = _workspace_extra(str(experiment.get("name") or ""))
    return env_spec(experiment.get("environment") or experiment.get("source"), extra)


def _workspace_extra(name: str) -> dict[str, Any] | None:
    """``extra`` of experiment ``name`` in this kernel's workspace, or its server's."""
    from pathlib import Path

    from workbench_core.discovery import ServerNotFound, find
    from workbench_core.store import ExperimentStore, StoreError, default_root

    if not name:
        return None
    roots = [default_root()]
    try:
        served = find().root
    except ServerNotFound:
        served = ""
    if served:
        roots.append(Path(served))
    for root in roots:
        try:
            return ExperimentStore(root).get(name).info.extra
        except (StoreError, OSError):
            continue
    return None


def frames_to_gif(frames: list[np.ndarray], frame_ms: int, width: int = FRAME_WIDTH) -> bytes:
    """An endlessly looping animated GIF of RGB frames, scaled to ``width`` pixels."""
    from PIL import Image

    if not frames:
        return b""
    step = max(1, int(np.ceil(len(frames) / MAX_FRAMES)))
    kept = frames[::step]
    if kept[-1] is not frames[-1]:
        kept.append(frames[-1])  # always end on the final position
    images = []
    for frame in kept:
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        height = max(1, round(image.height * width / image.width))
        images.append(image.resize((width, height), Image.Resampling.BILINEAR))
    buf = io.BytesIO()
    durations = [frame_ms * step] * (len(images) - 1) + [max(1500, frame_ms * step)]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=0, optimize=False)
    return buf.getvalue()


class EpisodePlayground(widgets.VBox):
    """Seed, *Run episode*/*Run again*, the animation, and the episode's return and length."""

    def __init__(self, endpoint: str, api_key: str, experiment: Mapping[str, Any]) -> None:
        self._endpoint = endpoint
        self._api_key = api_key  # a plain attribute: never synced to the front end or saved
        self.experiment = dict(experiment)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_episode: Episode | None = None
        self.last_error: str | None = None
        try:
            self.spec: dict[str, Any] | None = resolve_env_spec(self.experiment)
            spec_error = ""
        except ValueError as exc:
            self.spec, spec_error = None, str(exc)

        turn_based = bool(self.spec and self.spec.get("kind") == "turn_based")
        self.seed = widgets.BoundedIntText(value=0, min=0, max=2**31 - 1, description="Seed",
                                           layout=widgets.Layout(width="160px"))
        self.opponent = widgets.Dropdown(
            options=[("against random moves", "random"), ("against itself", "self")],
            value="random", description="Plays",
            layout=widgets.Layout(width="300px", display="" if turn_based else "none"))
        self.run_button = widgets.Button(description="Run episode", icon="play",
                                         button_style="primary", disabled=self.spec is None)
        self.status = widgets.HTML(value=html.escape(spec_error))
        # Hidden until there is a GIF: an Image with no bytes shows the browser's broken-image
        # icon, before the first run and during it.
        # A fixed width: stretched to a wide notebook's width the frames blur and the row
        # grows taller than the window.
        self.animation = widgets.Image(format="gif", layout=widgets.Layout(
            width="480px", max_width="100%", height="auto", display="none"))
        self.summary = widgets.HTML()
        self.run_button.on_click(lambda _button: self.run())
        super().__init__(children=[
            widgets.HBox([self.seed, self.opponent, self.run_button]),
            self.status, self.animation, self.summary,
        ])

    @property
    def running(self) -> bool:
        """Whether an episode is playing right now."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, seed: int | None = None) -> threading.Thread | None:
        """Start one episode on a worker thread and return at once (``None`` if one is running).

        ``seed`` overrides the seed box. Results land in the widgets and in
        :attr:`last_episode` (or :attr:`last_error`).
        """
        with self._lock:
            if self.running or self.spec is None:
                return None
            if seed is not None:
                self.seed.value = int(seed)
            chosen = int(self.seed.value)
            self.run_button.disabled = True
            self.status.value = f"Running an episode with seed {chosen}…"
            self._thread = threading.Thread(
                target=self._play, args=(self.spec, chosen, str(self.opponent.value)),
                name=f"episode-playground-{self.experiment.get('name', '')}", daemon=True)
            self._thread.start()
            return self._thread

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current episode is done; ``True`` when nothing is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _play(self, spec: dict[str, Any], seed: int, opponent: str) -> None:
        from agilerl.arena.inference import Agent

        started = time.perf_counter()
        try:
            with Agent(self._endpoint, api_key=self._api_key) as client:
                episode = play_episode(spec, client_act(client), seed=seed, render=True,
                                       opponent=opponent, max_frames=2000)
            gif = frames_to_gif(episode.frames, FRAME_MS.get(str(spec.get("kind")), 60))
        except Exception as exc:  # noqa: BLE001 - any failure is shown in the widget instead
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.status.value = (
                "<span style='color:#b00020'>The episode stopped: "
                f"{html.escape(self.last_error)}</span>")
        else:
            self.last_episode, self.last_error = episode, None
            self.animation.value = gif
            self.animation.layout.display = ""
            self.summary.value = _summary_html(episode)
            self.status.value = (f"Seed {seed}: {episode.length} steps played against the live "
                                 f"endpoint in {time.perf_counter() - started:.1f} s.")
        finally:
            self.run_button.description = "Run again"
            self.run_button.disabled = False


def _summary_html(episode: Episode) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(agent)}</td><td style='text-align:right'>{value:.2f}</td></tr>"
        for agent, value in episode.returns.items())
    outcome = f"<b>{html.escape(episode.outcome)}</b> · " if episode.outcome else ""
    if list(episode.returns) == ["agent"]:
        return (f"{outcome}Return <b>{episode.returns['agent']:.2f}</b> · "
                f"length <b>{episode.length}</b>")
    return (f"{outcome}Length <b>{episode.length}</b>"
            f"<table><tr><th>agent</th><th>return</th></tr>{rows}</table>")
