"""The environments experiments train on, described so anyone can rebuild them.

An experiment's ``extra["env"]`` holds one of these specs: which gymnasium or PettingZoo
environment, its arguments, and how the raw observation becomes what the policy sees (the
recurrent CartPole demo hides the velocities, tic-tac-toe's policy sees the board without the
mask). The demo trainers write it, the episode player and the panel's snippets read it, and a
user's own experiment can carry one too.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# How to rebuild each environment: the same dict lands in experiment.json's extra["env"].
ENV_SPECS: dict[str, dict[str, Any]] = {
    "tictactoe_v3": {
        "kind": "turn_based", "module": "pettingzoo.classic.tictactoe_v3", "kwargs": {},
        # PettingZoo gives {"observation": (3, 3, 2), "action_mask": (9,)}; the policy sees
        # the board flattened to 18 numbers and the mask travels separately.
        "observation": {"flatten_key": "observation"},
    },
    "simple_spread_v3": {
        "kind": "parallel", "module": "mpe2.simple_spread_v3",
        "kwargs": {"N": 2, "max_cycles": 25, "continuous_actions": True},
    },
    "simple_speaker_listener_v4": {
        "kind": "parallel", "module": "mpe2.simple_speaker_listener_v4",
        "kwargs": {"max_cycles": 25, "continuous_actions": False},
    },
}
# The recurrent demo's CartPole: cart position and pole angle only, so velocities must be
# inferred from memory. (A plain "CartPole-v1" experiment keeps all four numbers.)
MEMORY_ENV: dict[str, Any] = {
    "kind": "gymnasium", "id": "CartPole-v1", "kwargs": {}, "observation": {"keep": [0, 2]},
}


def env_spec(environment: str | None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The environment recipe of an experiment.

    ``extra["env"]`` when recorded; else the recipe of a known PettingZoo environment id;
    else a plain ``gymnasium.make(environment)``. ``ValueError`` when none applies.
    """
    stored = (extra or {}).get("env")
    if isinstance(stored, Mapping):
        return copy.deepcopy(dict(stored))
    if environment in ENV_SPECS:
        return copy.deepcopy(ENV_SPECS[environment])
    if environment:
        import gymnasium as gym

        if environment in gym.registry:
            return {"kind": "gymnasium", "id": environment, "kwargs": {}}
    raise ValueError(
        f"Don't know how to build environment {environment!r}: record extra['env'] when "
        "logging the experiment (a dict like demo_classic.MEMORY_ENV), or use a gymnasium id "
        f"or one of {sorted(ENV_SPECS)}."
    )


def make_env(spec: Mapping[str, Any], render_mode: str | None = None) -> Any:
    """Build the environment a spec describes (a PettingZoo AEC/parallel env or a gym env)."""
    kwargs = dict(spec.get("kwargs") or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    kind = spec.get("kind")
    if kind == "gymnasium":
        import gymnasium as gym

        return gym.make(str(spec["id"]), **kwargs)
    module = importlib.import_module(str(spec["module"]))
    if kind == "turn_based":
        return module.env(**kwargs)
    if kind == "parallel":
        return module.parallel_env(**kwargs)
    raise ValueError(f"Unknown environment kind {kind!r}; use turn_based, parallel or gymnasium.")


def policy_observation(spec: Mapping[str, Any], raw: Any) -> np.ndarray:
    """What the policy observes given the environment's raw observation for one agent."""
    rule = spec.get("observation") or {}
    if "flatten_key" in rule:
        return np.asarray(raw[rule["flatten_key"]], dtype=np.float32).reshape(-1)
    if "keep" in rule:
        return np.asarray(raw, dtype=np.float32)[list(rule["keep"])]
    return np.asarray(raw, dtype=np.float32)


def policy_observation_space(spec: Mapping[str, Any], space: Any) -> Any:
    """The gymnasium space of :func:`policy_observation` for an environment space."""
    from gymnasium import spaces

    rule = spec.get("observation") or {}
    if "flatten_key" in rule:
        inner = space[rule["flatten_key"]]
        return spaces.Box(np.asarray(inner.low, np.float32).reshape(-1),
                          np.asarray(inner.high, np.float32).reshape(-1), dtype=np.float32)
    if "keep" in rule:
        keep = list(rule["keep"])
        return spaces.Box(space.low[keep].astype(np.float32),
                          space.high[keep].astype(np.float32), dtype=np.float32)
    return space

