"""Spaces as JSON, environment recipes from what the user typed, and the checks between them.

Runs in the import's worker process: building an environment imports its library.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from workbench_core.environments import (
    ENV_SPECS,
    make_env,
    policy_observation,
    policy_observation_space,
)


class RecipeError(ValueError):
    """An environment recipe that cannot be built or does not fit the checkpoint."""


def space_json(space: Any) -> dict[str, Any]:  # noqa: PLR0911 - one return per kind
    """What a check needs of a gymnasium space: its type and shape or size."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(v) for v in np.asarray(space.nvec).ravel()]}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": [int(d) for d in space.shape]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_json(v) for v in space.spaces]}
    return {"type": type(space).__name__}


def recipe(env: str, kwargs: dict[str, Any], *, multi_agent: bool,
           checkpoint_obs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The environment spec (``extra["env"]``) for what the user typed.

    ``env`` is a Gymnasium id (``CartPole-v1``), a PettingZoo module path
    (``mpe2.simple_spread_v3``, ``pettingzoo.classic.tictactoe_v3``) or one of the workbench's
    named recipes (``tictactoe_v3``; its kwargs then replace the recipe's).
    """
    import copy

    if env in ENV_SPECS:
        spec = copy.deepcopy(ENV_SPECS[env])
        if kwargs:
            spec["kwargs"] = dict(kwargs)
        return spec
    if "." in env and "/" not in env:
        try:
            module = importlib.import_module(env)
        except ImportError as exc:
            raise RecipeError(f"env {env!r} looks like a PettingZoo module path but cannot be "
                              f"imported ({exc}); install its package, or give a Gymnasium id "
                              "such as CartPole-v1.") from exc
        kind = ("parallel" if multi_agent and hasattr(module, "parallel_env")
                else "turn_based" if hasattr(module, "env") else None)
        if kind is None:
            raise RecipeError(f"env module {env!r} has neither env() nor parallel_env(); give "
                              "a PettingZoo environment module such as mpe2.simple_spread_v3.")
        return {"kind": kind, "module": env, "kwargs": dict(kwargs)}
    import gymnasium as gym

    if env in gym.registry:
        return {"kind": "gymnasium", "id": env, "kwargs": dict(kwargs)}
    known = ", ".join(sorted(ENV_SPECS))
    raise RecipeError(f"env {env!r} is neither a Gymnasium id nor an importable PettingZoo "
                      f"module; give e.g. CartPole-v1, mpe2.simple_spread_v3, "
                      f"pettingzoo.classic.tictactoe_v3 or one of {known}.")


def environment_spaces(spec: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{agent id: (raw observation space, action space)}``; ``"agent"`` for a gym env."""
    try:
        env = make_env(spec)
    except Exception as exc:
        raise RecipeError(f"the environment could not be built: {type(exc).__name__}: "
                          f"{exc}. Check env and env_kwargs.") from exc
    try:
        if spec.get("kind") == "gymnasium":
            return {"agent": (env.observation_space, env.action_space)}
        return {str(a): (env.observation_space(a), env.action_space(a))
                for a in env.possible_agents}
    finally:
        close = getattr(env, "close", None)
        if callable(close):
            close()


def fit_observation(spec: dict[str, Any], raw_space: Any, wanted: dict[str, Any]) -> None:
    """Record in ``spec`` how the environment's observation becomes what the policy saw:
    a dict observation whose ``observation`` entry flattens to the checkpoint's Box."""
    from gymnasium import spaces

    if spec.get("observation") or not isinstance(raw_space, spaces.Dict):
        return
    inner = raw_space.spaces.get("observation")
    if (isinstance(inner, spaces.Box) and wanted.get("type") == "Box"
            and [int(np.prod(inner.shape))] == list(wanted.get("shape") or [])):
        spec["observation"] = {"flatten_key": "observation"}


def check(spec: dict[str, Any], saved: dict[str, dict[str, Any]]) -> list[str]:
    """Compare the checkpoint's spaces with the environment's; return the mismatches.

    ``saved`` maps agent ids (``"agent"`` for a single agent) to ``{"observation",
    "action"}`` space JSON. A single-agent checkpoint on a turn-based environment must fit
    every seat (one policy plays both sides).
    """
    env_spaces = environment_spaces(spec)
    problems: list[str] = []
    single = list(saved) == ["agent"]
    if single:
        pairs = [(aid, saved["agent"]) for aid in env_spaces]
    else:
        missing = sorted(set(saved) - set(env_spaces))
        extra = sorted(set(env_spaces) - set(saved))
        if missing or extra:
            return [f"the environment's agents are {sorted(env_spaces)} but the checkpoint's "
                    f"are {sorted(saved)}"]
        pairs = list(saved.items())
    for aid, want in pairs:
        raw_obs, act = env_spaces[aid]
        fit_observation(spec, raw_obs, want["observation"])
        got_obs = space_json(policy_observation_space(spec, raw_obs))
        who = "" if aid == "agent" else f"{aid}: "
        if got_obs != want["observation"]:
            problems.append(f"{who}the environment observes {_short(got_obs)} but the "
                            f"checkpoint expects {_short(want['observation'])}")
        got_act = space_json(act)
        if got_act != want["action"]:
            problems.append(f"{who}the environment's actions are {_short(got_act)} but the "
                            f"checkpoint's are {_short(want['action'])}")
    return problems


def sample_observations(spec: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """One observation per agent, sampled from the environment's spaces and put through the
    recorded preprocessing (what the policy sees)."""
    out = {}
    for aid, (raw_space, _act) in environment_spaces(spec).items():
        raw_space.seed(seed)
        out[aid] = policy_observation(spec, raw_space.sample())
    return out


def _short(space: dict[str, Any]) -> str:
    kind = space.get("type")
    if kind == "Box":
        return f"Box{tuple(space['shape'])}"
    if kind == "Discrete":
        return f"Discrete({space['n']})"
    return str(space)


__all__ = ["RecipeError", "check", "environment_spaces", "recipe", "sample_observations",
           "space_json"]
