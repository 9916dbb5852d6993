"""Evaluate deployed Classic RL agents through their live endpoints, as DataFrames.

Episodes are played in this process (the kernel), each action asked of the agent's live
endpoint with the Arena client (``agilerl.arena.inference.Agent``), the path users' own
clients take; the server's event loop only answers the calls. Example::

    import agents_widget as aw

    aw.evaluate("cartpole", episodes=20, seed=0)          # one row per episode
    aw.compare(["cartpole", "cartpole-step0"])            # mean, std, 95% CI, and a plot
    aw.head_to_head("ttt-a", "ttt-b", games=10)           # tic-tac-toe, sides alternated

:func:`training_protocol` says which seeds and how many episodes the experiment's recorded
evaluation score used, so ``evaluate(agent, **training_protocol(experiment))`` replays
exactly the episodes that score averaged.

The agent's own key is read from the management API and handed to the Arena client only; it
is never a column, an attribute that prints, or part of an error message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import pandas as pd

from workbench_core.environments import env_spec
from workbench_core.episodes import ActFn, Episode, client_act, play_episode

from .client import AgentInfo, ExperimentInfo, WorkbenchClient
from .dataframes import find_experiment, resolve_client

__all__ = ["compare", "evaluate", "head_to_head", "recorded_score", "summarize",
           "training_protocol"]

# The demo trainers score checkpoints on env seeds 1000, 1001, ... (see
# server_extension/training/agilerl.py); newer experiments record the seed themselves.
DEFAULT_EVAL_SEED = 1000
SIDES_BOTH = "both"
CONFIDENCE = 0.95


def training_protocol(experiment: ExperimentInfo) -> dict[str, int]:
    """``{"seed": first env seed, "episodes": count}`` of the recorded evaluation score.

    Read from ``extra["training"]`` (``eval_seed``, ``eval_episodes``), else from the
    score's description ("... env seeds 1000 to 1004"), else the demo trainers' defaults.
    """
    training = experiment.extra.get("training")
    training = training if isinstance(training, dict) else {}
    seed = training.get("eval_seed")
    episodes = training.get("eval_episodes")
    described = re.search(r"seeds (\d+) to (\d+)", str(experiment.extra.get("evaluation_score")))
    if seed is None and described:
        seed = int(described.group(1))
        episodes = episodes or int(described.group(2)) - int(described.group(1)) + 1
    return {"seed": int(seed if seed is not None else DEFAULT_EVAL_SEED),
            "episodes": int(episodes or 5)}


def recorded_score(experiment: ExperimentInfo, step: int | None) -> float | None:
    """The evaluation score training logged for checkpoint ``step`` (``None`` if none)."""
    for checkpoint in experiment.checkpoints:
        if checkpoint.step == step:
            return checkpoint.evaluation_score
    return None


def _deployed(client: WorkbenchClient, agent: str | AgentInfo) -> AgentInfo:
    name = agent.name if isinstance(agent, AgentInfo) else str(agent)
    info = client.agent(name)
    if info.status != "Deployed" or not info.endpoint or info.api_key is None:
        raise ValueError(
            f"Agent {name!r} is {info.status}, so it has no live endpoint to evaluate; press "
            f"Connect in the Agents panel (or client.connect({name!r})) and wait for Deployed.")
    if info.tab != "classic":
        raise ValueError(f"Agent {name!r} is an Advanced Training agent; evaluate() plays "
                         "episodes of Classic RL agents' environments.")
    return info


@contextmanager
def _endpoint_act(info: AgentInfo, timeout: float) -> Iterator[ActFn]:
    """An ``act`` asking ``info``'s live endpoint, with its own key, for every action."""
    from agilerl.arena.inference import Agent

    key, endpoint = info.api_key, info.endpoint
    if key is None or endpoint is None:
        raise ValueError(f"Agent {info.name!r} has no live endpoint any more.")
    with Agent(endpoint, api_key=key, timeout=max(1, round(timeout))) as arena:
        yield client_act(arena)


def _by_side(acts: dict[str, ActFn]) -> ActFn:
    """One ``act`` for a turn-based game: each side's move asked of that side's policy."""

    def act(obs: Any, mask: Any, hidden: Any) -> tuple[Any, Any]:
        side = next(iter(obs))
        return acts[side](obs, mask, hidden)

    return act


def _outcome(mine: float) -> str:
    return "win" if mine > 0 else "draw" if mine == 0 else "loss"


def _sides(spec: dict[str, Any], sides: str | Sequence[str]) -> list[str]:
    from workbench_core.environments import make_env

    env = make_env(spec)
    try:
        players = list(env.possible_agents)
    finally:
        env.close()
    chosen = players if sides == SIDES_BOTH else [sides] if isinstance(sides, str) \
        else list(sides)
    unknown = [s for s in chosen if s not in players]
    if unknown:
        raise ValueError(f"Unknown side(s) {unknown}; this game's sides are {players} "
                         f"(or sides={SIDES_BOTH!r}).")
    return chosen


def evaluate(agent: str | AgentInfo, episodes: int = 20, seed: int = 0, *,
             opponent: str | None = "random", sides: str | Sequence[str] = SIDES_BOTH,
             client: WorkbenchClient | None = None, timeout: float = 30.0) -> pd.DataFrame:
    """Play ``episodes`` seeded episodes of ``agent``'s environment through its live endpoint.

    Env seeds are ``seed, seed + 1, ...``, played as the demo trainers score checkpoints,
    so a deterministic agent scores what training recorded on the same seeds (see
    :func:`training_protocol`). One row per episode: ``agent``, ``seed``, ``return``,
    ``length`` and ``score`` (the number training's evaluation score averages: the return;
    the mean return over agents for multi-agent environments; 1 for a win, else 0, in
    turn-based games). Multi-agent environments add ``return_<agent id>`` columns.

    Turn-based games (tic-tac-toe): each seed is played once per side in ``sides`` (both by
    default) against ``opponent``: ``"random"`` legal moves, or the name of another Deployed
    agent, asked through its own endpoint. Rows add ``side``, ``opponent`` and ``outcome``
    (win, draw or loss, for the evaluated agent).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}.")
    client = resolve_client(client)
    info = _deployed(client, agent)
    experiment = find_experiment(client, info.experiment)
    spec = env_spec(experiment.environment or experiment.source, experiment.extra)
    seeds = range(int(seed), int(seed) + int(episodes))
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        act = stack.enter_context(_endpoint_act(info, timeout))
        if spec.get("kind") == "turn_based":
            other: ActFn | None = None
            if opponent not in (None, "random"):
                rival = _deployed(client, str(opponent))
                other = stack.enter_context(_endpoint_act(rival, timeout))
            for side in _sides(spec, sides):
                for s in seeds:
                    rows.append(_turn_row(spec, act, other, side=side, seed=s,
                                          opponent=str(opponent or "random")))
        else:
            for s in seeds:
                episode = play_episode(spec, act, seed=s)
                rows.append(_episode_row(episode, s))
    frame = pd.DataFrame(rows)
    frame.insert(0, "agent", pd.Series([info.name] * len(frame), dtype="string"))
    frame.attrs.update({"agent": info.name, "experiment": info.experiment,
                        "checkpoint_step": info.checkpoint_step})
    return _typed(frame)


def _episode_row(episode: Episode, seed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"seed": seed, "return": episode.total, "length": episode.length,
                           "score": episode.total}
    if list(episode.returns) != ["agent"]:
        row.update({f"return_{k}": float(v) for k, v in episode.returns.items()})
    return row


def _turn_row(spec: dict[str, Any], act: ActFn, other: ActFn | None, *, side: str, seed: int,
              opponent: str) -> dict[str, Any]:
    if other is None:
        episode = play_episode(spec, act, seed=seed, opponent="random", agent_side=side)
    else:
        players = _sides(spec, SIDES_BOTH)
        acts = {p: (act if p == side else other) for p in players}
        episode = play_episode(spec, _by_side(acts), seed=seed, opponent="self")
    mine = float(episode.returns[side])
    outcome = _outcome(mine)
    row: dict[str, Any] = {"seed": seed, "side": side, "opponent": opponent, "return": mine,
                           "length": episode.length, "score": 1.0 if outcome == "win" else 0.0,
                           "outcome": outcome}
    row.update({f"return_{k}": float(v) for k, v in episode.returns.items()})
    return row


OUTCOMES = pd.CategoricalDtype(["win", "draw", "loss"])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    types: dict[str, Any] = {"seed": "int64", "length": "int64", "return": "float64",
                             "score": "float64", "side": "string", "opponent": "string",
                             "outcome": OUTCOMES}
    for column in frame.columns:
        if column in types:
            frame[column] = frame[column].astype(types[column])
        elif column.startswith("return_"):
            frame[column] = frame[column].astype("float64")
    return frame


def _t_quantile(dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof))


def summarize(results: pd.DataFrame, by: str = "agent", value: str = "return") -> pd.DataFrame:
    """Per ``by``: episodes, mean, std, and the 95% confidence interval of the mean of
    ``value`` (Student's t; the interval is the mean itself for a single episode)."""
    rows = []
    for name, group in results.groupby(by, sort=False, observed=True):
        values = group[value].astype(float).to_numpy()
        n = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        half = _t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        rows.append({by: name, "episodes": n, "mean": mean, "std": std,
                     "ci_low": mean - half, "ci_high": mean + half})
    summary = pd.DataFrame(rows).set_index(by)
    return summary.astype({"episodes": "int64", "mean": "float64", "std": "float64",
                           "ci_low": "float64", "ci_high": "float64"})


def compare(agents: Sequence[str | AgentInfo | pd.DataFrame], episodes: int = 20,
            seed: int = 0, *, value: str = "return", plot: bool = True, ax: Any = None,
            client: WorkbenchClient | None = None, **evaluate_options: Any) -> pd.DataFrame:
    """Evaluate several agents (or checkpoints, each deployed as an agent) on the same seeds.

    Items may also be frames :func:`evaluate` returned. Returns :func:`summarize`'s table,
    one row per agent; with ``plot`` it also draws each mean with its 95% interval (on
    ``ax``, or a new matplotlib figure), which a notebook shows under the cell.
    """
    if not agents:
        raise ValueError("compare() needs at least one agent name.")
    frames = [item if isinstance(item, pd.DataFrame)
              else evaluate(item, episodes, seed, client=client, **evaluate_options)
              for item in agents]
    summary = summarize(pd.concat(frames, ignore_index=True), "agent", value)
    if plot:
        plot_summary(summary, value=value, ax=ax)
    return summary


def plot_summary(summary: pd.DataFrame, *, value: str = "return", ax: Any = None) -> Any:
    """Each row's mean with its confidence interval as error bars; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _figure, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(summary)), 3.2))
    means = summary["mean"].to_numpy()
    errors = np.vstack([means - summary["ci_low"].to_numpy(),
                        summary["ci_high"].to_numpy() - means])
    positions = np.arange(len(summary))
    ax.bar(positions, means, yerr=errors, capsize=6, color="#7aa6d8")
    ax.set_xticks(positions, [str(i) for i in summary.index])
    ax.set_ylabel(f"mean {value} (95% CI)")
    return ax


def head_to_head(first: str | AgentInfo, second: str | AgentInfo, games: int = 10,
                 seed: int = 0, *, client: WorkbenchClient | None = None,
                 timeout: float = 30.0) -> pd.DataFrame:
    """Two Deployed turn-based agents play ``games`` games through their endpoints.

    Sides alternate: ``first`` moves first in even-numbered games, ``second`` in odd ones.
    One row per game: game, seed, player_1 and player_2 (agent names), winner (an agent
    name, or ``draw``), length, and first_result (win, draw or loss for ``first``).
    """
    if games < 1:
        raise ValueError(f"games must be at least 1, got {games}.")
    client = resolve_client(client)
    a, b = _deployed(client, first), _deployed(client, second)
    experiment = find_experiment(client, a.experiment)
    spec = env_spec(experiment.environment or experiment.source, experiment.extra)
    if spec.get("kind") != "turn_based":
        raise ValueError(f"{a.name!r} plays {experiment.environment!r}, not a turn-based "
                         "game; head_to_head() needs two tic-tac-toe (turn-based) agents.")
    players = _sides(spec, SIDES_BOTH)
    rows = []
    with _endpoint_act(a, timeout) as act_a, _endpoint_act(b, timeout) as act_b:
        for game in range(games):
            order = (a, b) if game % 2 == 0 else (b, a)
            acts = {players[0]: act_a if order[0] is a else act_b,
                    players[1]: act_b if order[0] is a else act_a}
            episode = play_episode(spec, _by_side(acts), seed=seed + game, opponent="self")
            first_side = players[0] if order[0] is a else players[1]
            result = _outcome(float(episode.returns[first_side]))
            winner = (a.name if result == "win" else b.name if result == "loss"
                      else "draw")
            rows.append({"game": game, "seed": seed + game, "player_1": order[0].name,
                         "player_2": order[1].name, "winner": winner,
                         "length": episode.length, "first_result": result})
    frame = pd.DataFrame(rows)
    return frame.astype({"game": "int64", "seed": "int64", "player_1": "string",
                         "player_2": "string", "winner": "string", "length": "int64",
                         "first_result": OUTCOMES})


def head_to_head_line(results: pd.DataFrame, first: str, second: str) -> str:
    """One line of a head-to-head's tally, as the panel shows it."""
    counts = results["first_result"].value_counts()
    return (f"{first} vs {second}: {int(counts.get('win', 0))} won, "
            f"{int(counts.get('draw', 0))} drawn, {int(counts.get('loss', 0))} lost "
            f"over {len(results)} games (sides alternated)")

