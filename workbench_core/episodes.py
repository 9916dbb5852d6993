"""Playing whole episodes with any policy: a loaded runtime, a live endpoint, or random play.

The players take an ``act`` function with the Arena client's unbatched calling convention,
so the demo trainers score checkpoints, the panel's episode playground replays a deployed
agent, and a notebook plays an endpoint, all with the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench_core.environments import make_env, policy_observation

# act(obs, action_mask, hidden_state) -> (action, next hidden_state); all unbatched, as with
# ``Agent.get_action(obs, hidden_state=..., info={"action_mask": ...})``.
ActFn = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclass
class Episode:
    """One played episode: return per agent (``"agent"`` for single-agent), length, frames."""

    returns: dict[str, float]
    length: int
    frames: list[np.ndarray] = field(default_factory=list)
    outcome: str = ""

    @property
    def total(self) -> float:
        """The mean return over agents (the return itself for single-agent episodes)."""
        return float(np.mean(list(self.returns.values())))


def runtime_act(runtime: Any) -> ActFn:
    """An unbatched ``act`` over a loaded runtime (adds and strips the batch axis)."""

    def act(obs: Any, mask: Any, hidden: Any) -> tuple[Any, Any]:
        def batch(tree: Any) -> Any:
            if tree is None:
                return None
            if isinstance(tree, Mapping):
                return {k: batch(v) for k, v in tree.items()}
            return np.asarray(tree)[None]

        def unbatch(tree: Any) -> Any:
            if tree is None:
                return None
            if isinstance(tree, Mapping):
                return {k: unbatch(v) for k, v in tree.items()}
            return np.asarray(tree)[0]

        action, next_hidden = runtime.get_action(
            batch(obs), hidden_state=batch(hidden), action_mask=batch(mask))
        return unbatch(action), unbatch(next_hidden)

    return act


def client_act(client: Any) -> ActFn:
    """An unbatched ``act`` over an ``agilerl.arena.inference.Agent`` client."""

    def act(obs: Any, mask: Any, hidden: Any) -> tuple[Any, Any]:
        info = {"action_mask": mask} if mask is not None else None
        action, next_hidden = client.get_action(obs, hidden_state=hidden, info=info)
        return action, next_hidden

    return act


def _random_legal(space: Any, mask: Any, rng: np.random.Generator) -> Any:
    if mask is not None:
        return int(rng.choice(np.flatnonzero(np.asarray(mask))))
    if hasattr(space, "n"):
        return int(rng.integers(space.n))
    return rng.uniform(space.low, space.high).astype(space.dtype)


def play_episode(
    spec: Mapping[str, Any],
    act: ActFn | None,
    *,
    seed: int,
    render: bool = False,
    opponent: str = "self",
    agent_side: str | None = None,
    max_frames: int = 400,
) -> Episode:
    """Play one seeded episode with ``act`` (``None``: uniformly random legal actions).

    Turn-based games: ``opponent="self"`` lets the policy play every side; ``"random"``
    gives it only ``agent_side`` (default: the first player) against random moves.
    Recurrent policies get their hidden state threaded from step to step (``None`` first).
    Frames (``rgb_array``) are kept when ``render``, at most ``max_frames`` of them.
    """
    kind = spec.get("kind")
    env = make_env(spec, render_mode="rgb_array" if render else None)
    film = _Film(env, render, max_frames)
    rng = np.random.default_rng(seed)
    try:
        if kind == "turn_based":
            return _play_turn_based(spec, env, act, film, rng, seed=seed, opponent=opponent,
                                    agent_side=agent_side)
        if kind == "parallel":
            return _play_parallel(spec, env, act, film, rng, seed=seed)
        return _play_gym(spec, env, act, film, seed=seed)
    finally:
        env.close()


class _Film:
    """Collects rendered frames, up to a limit, when rendering is on."""

    def __init__(self, env: Any, render: bool, max_frames: int) -> None:
        self.env, self.render, self.max_frames = env, render, max_frames
        self.frames: list[np.ndarray] = []

    def shoot(self) -> None:
        if self.render and len(self.frames) < self.max_frames:
            frame = self.env.render()
            if frame is not None:
                self.frames.append(np.asarray(frame, dtype=np.uint8))


def _play_turn_based(spec: Mapping[str, Any], env: Any, act: ActFn | None, film: _Film,
                     rng: np.random.Generator, *, seed: int, opponent: str,
                     agent_side: str | None) -> Episode:
    env.reset(seed=seed)
    side = agent_side or env.possible_agents[0]
    returns = dict.fromkeys(env.possible_agents, 0.0)
    length = 0
    film.shoot()
    for agent_id in env.agent_iter():
        raw, reward, terminated, truncated, _ = env.last()
        returns[agent_id] += float(reward)
        if terminated or truncated:
            env.step(None)
            continue
        mask = np.asarray(raw["action_mask"], dtype=np.int8)
        if act is not None and (opponent == "self" or agent_id == side):
            actions, _ = act({agent_id: policy_observation(spec, raw)}, {agent_id: mask}, None)
            action = int(np.asarray(actions[agent_id]).reshape(-1)[0])
        else:
            action = _random_legal(env.action_space(agent_id), mask, rng)
        env.step(action)
        length += 1
        film.shoot()
    best = max(returns.values())
    winners = [a for a, r in returns.items() if r == best and r > 0]
    outcome = f"{winners[0]} wins" if winners else "draw"
    return Episode(returns=returns, length=length, frames=film.frames, outcome=outcome)


def _play_parallel(spec: Mapping[str, Any], env: Any, act: ActFn | None, film: _Film,
                   rng: np.random.Generator, *, seed: int) -> Episode:
    obs, _ = env.reset(seed=seed)
    returns = dict.fromkeys(env.possible_agents, 0.0)
    length = 0
    film.shoot()
    while env.agents:
        live = {a: policy_observation(spec, obs[a]) for a in env.agents}
        if act is None:
            actions = {a: _random_legal(env.action_space(a), None, rng) for a in live}
        else:
            answer, _ = act(live, None, None)
            actions = {a: _env_action(env.action_space(a), answer[a]) for a in live}
        obs, rewards, _, _, _ = env.step(actions)
        for agent_id, reward in rewards.items():
            returns[agent_id] += float(reward)
        length += 1
        film.shoot()
    return Episode(returns=returns, length=length, frames=film.frames)


def _play_gym(spec: Mapping[str, Any], env: Any, act: ActFn | None, film: _Film, *,
              seed: int) -> Episode:
    raw, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    total, length, hidden, done = 0.0, 0, None, False
    film.shoot()
    while not done:
        if act is None:
            action = env.action_space.sample()
        else:
            answer, hidden = act(policy_observation(spec, raw), None, hidden)
            action = _env_action(env.action_space, answer)
        raw, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        length += 1
        done = bool(terminated or truncated)
        film.shoot()
    return Episode(returns={"agent": total}, length=length, frames=film.frames)


def _env_action(space: Any, action: Any) -> Any:
    if hasattr(space, "n"):
        return int(np.asarray(action).reshape(-1)[0])
    return np.asarray(action, dtype=space.dtype).reshape(space.shape)


