"""Serve a small AgileRL policy from its numpy form: no torch, no AgileRL, ready in a blink.

A checkpoint's *policy sidecar* (``step_<N>.policy.npz`` beside ``step_<N>.pt``, written by
:mod:`.numpy_export`) holds the weights of the greedy policy the full runtime serves
(:class:`.agilerl.GreedyPolicy`, :class:`.agilerl_multi.MultiAgentRuntime`), the arithmetic
around them (action rescaling, clipping), the spaces, the checkpoint file's SHA-256, and a
*probe set*: observations (and action masks) with the actions the library's own served path
answered for them.

:func:`load` rebuilds the policy with numpy and answers the whole probe set again before it
serves anything: discrete actions must be equal, continuous ones within
:data:`CONTINUOUS_TOLERANCE`. A sidecar that does not match its checkpoint (the checkpoint
was saved again since), that uses an operation not implemented here, or whose answers differ
raises :class:`SidecarRefused`, and the deployer serves the checkpoint with the full runtime
instead. Request checks and error messages are the full runtime's own: the single-agent
policy is served through :class:`.agilerl.AgileRLRuntime` and the multi-agent one through a
subclass of :class:`.agilerl_multi.MultiAgentRuntime` whose forward pass is numpy.

The file is read with ``allow_pickle=False``: unlike the checkpoint, it runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server_extension.serving.runtimes.agilerl import AgileRLRuntime
from server_extension.serving.runtimes.agilerl_multi import MultiAgentRuntime
from server_extension.serving.runtimes.base import AgentKind, Runtime, RuntimeLoadError
from server_extension.serving.runtimes.sb3 import SB3Runtime
from workbench_core.store import Checkpoint, Experiment

FORMAT = 1
SUFFIX = ".policy.npz"
# How far a continuous action may be from the library's (torch and numpy round differently).
CONTINUOUS_TOLERANCE = 1e-5
# Multi-agent algorithms whose actors this form can hold (their MLP actors).
MULTI_AGENT = ("MADDPG", "MATD3", "IPPO")
SINGLE_AGENT = ("DQN", "PPO", "DDPG", "TD3")
SB3 = ("PPO", "A2C", "DQN")  # Stable-Baselines3 MlpPolicy


class SidecarRefused(RuntimeLoadError):
    """The sidecar cannot serve this checkpoint; the message says why (the full runtime will)."""


def sidecar_path(checkpoint_path: Path) -> Path:
    """Where the policy sidecar of a checkpoint file lives (the store ignores that name)."""
    name = checkpoint_path.name
    stem = name.split(".", 1)[0]  # step_<N>
    return checkpoint_path.with_name(stem + SUFFIX)


def file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file (links followed): binds a sidecar to the bytes it came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The operations: exactly those AgileRL's MLPs are built from (create_mlp), nothing else
# --------------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    out: np.ndarray = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "softsign": lambda x: x / (np.float32(1) + np.abs(x)),
    "softmax": _softmax,
    "identity": lambda x: x,
}


def _layer(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
           ) -> Callable[[np.ndarray], np.ndarray]:
    op = spec.get("op")
    if op == "linear":
        weight_t = np.ascontiguousarray(arrays[spec["weight"]].astype(np.float32).T)
        bias = arrays[spec["bias"]].astype(np.float32) if spec.get("bias") else None

        def linear(x: np.ndarray) -> np.ndarray:
            out = x @ weight_t
            return out + bias if bias is not None else out

        return linear
    if op == "layer_norm":
        gain = arrays[spec["weight"]].astype(np.float32) if spec.get("weight") else None
        shift = arrays[spec["bias"]].astype(np.float32) if spec.get("bias") else None
        eps = np.float32(spec["eps"])

        def layer_norm(x: np.ndarray) -> np.ndarray:
            mean = x.mean(axis=-1, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
            out = (x - mean) / np.sqrt(var + eps)
            if gain is not None:
                out = out * gain
            return out + shift if shift is not None else out

        return layer_norm
    if op == "elu":
        alpha = np.float32(spec["alpha"])
        return lambda x: np.where(x > 0, x, alpha * np.expm1(x)).astype(np.float32)
    if op == "leaky_relu":
        slope = np.float32(spec["slope"])
        return lambda x: np.where(x >= 0, x, x * slope).astype(np.float32)
    if op in ACTIVATIONS:
        return ACTIVATIONS[str(op)]
    raise SidecarRefused(f"the sidecar uses an operation ({op!r}) the numpy runtime lacks")


def build_network(specs: list[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """The forward pass of a list of layer specs, float32 in and out."""
    layers = [_layer(spec, arrays) for spec in specs]

    def forward(x: np.ndarray) -> np.ndarray:
        for layer in layers:
            x = layer(x)
        return x

    return forward


# --------------------------------------------------------------------------------------------
# Spaces (rebuilt with gymnasium.spaces, which imports in a fraction of a second without torch)
# --------------------------------------------------------------------------------------------

def build_space(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
    """A gymnasium space from its sidecar description."""
    from gymnasium import spaces

    kind = spec.get("type")
    if kind == "box":
        return spaces.Box(low=arrays[spec["low"]], high=arrays[spec["high"]],
                          shape=tuple(spec["shape"]), dtype=np.dtype(spec["dtype"]))
    if kind == "discrete":
        return spaces.Discrete(int(spec["n"]), start=int(spec.get("start", 0)))
    if kind == "multi_discrete":
        return spaces.MultiDiscrete(np.asarray(spec["nvec"], dtype=np.int64))
    if kind == "multi_binary":
        return spaces.MultiBinary(spec["n"])
    raise SidecarRefused(f"the sidecar describes a {kind!r} space the numpy runtime lacks")


def _box_rule(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
              ) -> Callable[[np.ndarray], np.ndarray]:
    """A network's output -> the continuous action, as the full runtime computes it."""
    rule = spec["rule"]
    if rule == "raw":
        return lambda out: out.astype(np.float32)
    low = arrays[spec["low"]].astype(np.float32)
    high = arrays[spec["high"]].astype(np.float32)
    if rule == "rescale":  # DeterministicActor.rescale_action
        out_low, out_high = np.float32(spec["out_low"]), np.float32(spec["out_high"])
        span, out_span = high - low, out_high - out_low
        return lambda out: (low + span * ((out - out_low) / out_span)).astype(np.float32)
    if rule == "squash":  # StochasticActor.scale_action(tanh(mean)), then the space's bounds
        clip_low, clip_high = _clip_bounds(spec, arrays)
        return lambda out: _clip(low + 0.5 * (np.tanh(out) + 1.0) * (high - low),
                                 clip_low, clip_high)
    if rule == "clip":
        clip_low, clip_high = _clip_bounds(spec, arrays)
        return lambda out: _clip(out, low, high) if clip_low is None \
            else _clip(_clip(out, low, high), clip_low, clip_high)
    raise SidecarRefused(f"the sidecar's action rule {rule!r} is not one the numpy runtime has")


def _clip_bounds(spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                 ) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not spec.get("clip_low"):
        return None, None
    return arrays[spec["clip_low"]], arrays[spec["clip_high"]]


def _clip(x: np.ndarray, low: np.ndarray | None, high: np.ndarray | None) -> np.ndarray:
    if low is None or high is None:
        return x.astype(np.float32)
    return np.clip(x, low, high).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Single agent: the policy AgileRLRuntime serves
# --------------------------------------------------------------------------------------------

class NumpyGreedyPolicy:
    """:class:`.agilerl.GreedyPolicy`'s interface (spaces, ``n_actions``, ``__call__``) on numpy.

    Stateless after construction, so threads may call it at once.
    """

    def __init__(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self.algorithm = str(meta["algo"])
        self.observation_space = build_space(meta["obs_space"], arrays)
        self.action_space = build_space(meta["action_space"], arrays)
        self.discrete = meta["action_space"]["type"] == "discrete"
        self.n_actions: int | None = int(meta["action_space"]["n"]) if self.discrete else None
        self.flattened = True
        self._forward = build_network(meta["layers"], arrays)
        self._box = None if self.discrete else _box_rule(meta["box"], arrays)
        space = meta["obs_space"]
        if space["type"] == "discrete":
            n, start = int(space["n"]), int(space.get("start", 0))
            eye = np.eye(n, dtype=np.float32)
            self._preprocess: Callable[[np.ndarray], np.ndarray] = \
                lambda obs: eye[np.asarray(obs, dtype=np.int64) - start]
        elif space["type"] == "box" and len(space["shape"]) == 1:
            self._preprocess = lambda obs: np.asarray(obs, dtype=np.float32)
        else:
            raise SidecarRefused("the numpy runtime takes flat or discrete observations only")

    def __call__(self, obs: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        """Actions for a batch of observations (and an optional boolean legal-action mask)."""
        out = self._forward(self._preprocess(obs))
        if self.discrete:
            if action_mask is not None:
                out = np.where(action_mask.astype(bool), out, -np.inf)
            return np.argmax(out, axis=-1).astype(np.int64).reshape(-1)
        assert self._box is not None
        action = self._box(out)
        return action.astype(np.float32, copy=False).reshape(action.shape[0], -1)


class NumpyAgileRLRuntime(AgileRLRuntime):
    """A single-agent AgileRL policy served from its sidecar (same checks, same answers)."""

    runtime_name = "numpy"


# --------------------------------------------------------------------------------------------
# Stable-Baselines3: SB3Runtime with a numpy policy
# --------------------------------------------------------------------------------------------

class _NumpySB3Policy:
    """``policy.predict(obs, deterministic=True)`` of an SB3 MLP policy, in numpy."""

    def __init__(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        self._forward = build_network(meta["layers"], arrays)
        self._box = _box_rule(meta["box"], arrays) if meta.get("box") else None

    def predict(self, observation: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
        out = self._forward(np.asarray(observation, dtype=np.float32))
        if self._box is None:
            return np.argmax(out, axis=-1).astype(np.int64), None
        return self._box(out), None


class NumpySB3Runtime(SB3Runtime):
    """A Stable-Baselines3 PPO, A2C or DQN policy served from its sidecar: the same request
    checks as :class:`.sb3.SB3Runtime`, with a numpy ``predict``."""

    runtime_name = "numpy"

    def __init__(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        # Not SB3Runtime.__init__: that one reads a torch model.
        self.policy = _NumpySB3Policy(meta, arrays)
        self.observation_space = build_space(meta["obs_space"], arrays)
        self.action_space = build_space(meta["action_space"], arrays)
        self.vecnormalize = None
        self.recurrent = False
        self.maskable = False
        self.kind = AgentKind(algo=str(meta["algo"]))


# --------------------------------------------------------------------------------------------
# Multi-agent: MultiAgentRuntime with a numpy forward pass
# --------------------------------------------------------------------------------------------

class NumpyMultiAgentRuntime(MultiAgentRuntime):
    """A MADDPG, MATD3 or IPPO agent served from its sidecar; everything but the forward pass
    (request checks, masks, environment-defined actions) is :class:`MultiAgentRuntime`'s."""

    runtime_name = "numpy"

    def __init__(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        # Not MultiAgentRuntime.__init__: that one reads a torch agent.
        from server_extension.serving.runtimes.agilerl_multi import ActionHead

        self.agent = None
        self.algo = str(meta["algo"])
        self.kind = AgentKind(algo=self.algo, multi_agent=True)
        self.stochastic = self.algo == "IPPO"
        self.agent_ids = list(meta["agent_ids"])
        self.network_of = {aid: str(meta["network_of"][aid]) for aid in self.agent_ids}
        self.obs_spaces = {aid: build_space(meta["obs_spaces"][aid], arrays)
                           for aid in self.agent_ids}
        self.heads = {aid: ActionHead(build_space(meta["action_spaces"][aid], arrays))
                      for aid in self.agent_ids}
        for aid, spec in meta["obs_spaces"].items():
            if spec["type"] != "box" or len(spec["shape"]) != 1:
                raise SidecarRefused(f"agent {aid} observes a {spec['type']} space; the numpy "
                                     "runtime takes flat observations only")
        networks = meta["networks"]
        self._forwards = {nid: build_network(net["layers"], arrays)
                          for nid, net in networks.items()}
        self._boxes = {nid: _box_rule(net["box"], arrays)
                       for nid, net in networks.items() if net.get("box")}
        self.flatten_key = meta.get("flatten_key")

    def group_outputs(self, nid: str, members: list[str], obs: Mapping[str, Any]) -> np.ndarray:
        """The network's output for its agents' rows: logits, or continuous actions."""
        rows = [np.asarray(obs[aid], dtype=np.float32) for aid in members]
        batch = rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)
        out = self._forwards[nid](batch)
        if self.heads[members[0]].kind == "box":
            return self._boxes[nid](out)
        return out


# --------------------------------------------------------------------------------------------
# Reading, checking, loading
# --------------------------------------------------------------------------------------------

def read_sidecar(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a sidecar file; :class:`SidecarRefused` when unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(bytes(arrays.pop("meta")).decode())
    except Exception as exc:
        raise SidecarRefused(f"the policy sidecar {path.name} cannot be read "
                             f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SidecarRefused(f"the policy sidecar {path.name} has an unknown format")
    return meta, arrays


def build_runtime(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Runtime:
    """The numpy runtime a sidecar describes (not yet checked against its probe set)."""
    try:
        if meta.get("kind") == "multi":
            return NumpyMultiAgentRuntime(meta, arrays)
        if meta.get("kind") == "sb3":
            return NumpySB3Runtime(meta, arrays)
        if meta.get("kind") == "single":
            return NumpyAgileRLRuntime(NumpyGreedyPolicy(meta, arrays),  # type: ignore[arg-type]
                                       algo=str(meta["algo"]))
    except SidecarRefused:
        raise
    except Exception as exc:
        raise SidecarRefused(f"the policy sidecar is malformed ({type(exc).__name__}: {exc})") \
            from exc
    raise SidecarRefused(f"the policy sidecar is of an unknown kind {meta.get('kind')!r}")


def _tree(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """A probe entry's keys (a key, or {agent: key}) turned into arrays."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {aid: arrays[key] for aid, key in value.items()}
    return arrays[value]


def _differs(got: np.ndarray, want: np.ndarray) -> str | None:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return f"shape {got.shape} instead of {want.shape}"
    if want.dtype.kind in "iub":
        bad = int((got != want).sum())
        return f"{bad} of {want.size} discrete actions differ" if bad else None
    gap = float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0
    return (f"continuous actions differ by up to {gap:.3g} (more than "
            f"{CONTINUOUS_TOLERANCE:g})") if not gap <= CONTINUOUS_TOLERANCE else None


def check_probes(runtime: Runtime, meta: Mapping[str, Any],
                 arrays: Mapping[str, np.ndarray]) -> None:
    """Answer the probe set; :class:`SidecarRefused` naming the first difference."""
    probes = meta.get("probes") or []
    if not probes:
        raise SidecarRefused("the policy sidecar has no probe set")
    for number, probe in enumerate(probes):
        obs = _tree(probe["obs"], arrays)
        mask = _tree(probe.get("mask"), arrays)
        want = _tree(probe["actions"], arrays)
        try:
            got, _ = runtime.get_action(obs, action_mask=mask)
        except Exception as exc:
            raise SidecarRefused(f"the numpy policy failed probe {number}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        pairs = ([(aid, got.get(aid), want[aid]) for aid in want] if isinstance(want, dict)
                 else [("", got, want)])
        for aid, answer, expected in pairs:
            if answer is None:
                raise SidecarRefused(f"the numpy policy gave no action for {aid} in probe "
                                     f"{number}")
            problem = _differs(answer, expected)
            if problem:
                who = f" for {aid}" if aid else ""
                raise SidecarRefused(f"the numpy policy's answers to probe {number}{who} are "
                                     f"not the library's: {problem}")


def load(experiment: Experiment, checkpoint: Checkpoint, device: str = "cpu") -> Runtime:
    """The checkpoint's numpy runtime, checked against its probe set.

    :class:`SidecarRefused` (the full runtime should serve) when there is no sidecar, it was
    made from other bytes than the checkpoint holds now, or its answers are not the library's.
    """
    path = sidecar_path(checkpoint.path)
    if not path.is_file():
        raise SidecarRefused(f"{checkpoint.path.name} has no policy sidecar")
    meta, arrays = read_sidecar(path)
    if meta.get("algo") not in (*SINGLE_AGENT, *MULTI_AGENT, *SB3):
        raise SidecarRefused(f"the sidecar holds a {meta.get('algo')!r} policy")
    try:
        digest = file_digest(checkpoint.path)
    except OSError as exc:
        raise SidecarRefused(f"{checkpoint.path.name} cannot be read: {exc}") from exc
    if digest != meta.get("checkpoint_sha256"):
        raise SidecarRefused(f"the policy sidecar was made from another version of "
                             f"{checkpoint.path.name} (saved again since)")
    runtime = build_runtime(meta, arrays)
    check_probes(runtime, meta, arrays)
    return runtime


def ready(checkpoint_path: Path) -> bool:
    """Whether a checkpoint has a sidecar worth trying (cheap: its first bytes, no hash)."""
    try:
        path = sidecar_path(checkpoint_path)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"  # an .npz is a zip; anything else is not
    except OSError:
        return False


__all__ = ["CONTINUOUS_TOLERANCE", "SidecarRefused", "build_runtime", "check_probes",
           "file_digest", "load", "read_sidecar", "ready", "sidecar_path"]
