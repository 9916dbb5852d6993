"""Write a checkpoint's policy sidecar: its greedy policy in numpy form, with a probe set.

Called where AgileRL checkpoints are made (the trainer, the demo builds) and by a worker after
it first loaded a checkpoint that has none (old workspaces, imports). The sidecar is what
:mod:`.numpy_policy` serves from; see there for the format's purpose.

What is exported: single-agent DQN, PPO (not recurrent), DDPG and TD3, and multi-agent
MADDPG, MATD3 and IPPO, whose actors are AgileRL MLPs (``EvolvableMLP``) made of linear
layers, layer norms and the activations :mod:`.numpy_policy` implements, observing flat
vectors (or, single-agent, a Discrete space). Anything else (Rainbow DQN's distributional
head, noisy layers, CNN or LSTM encoders, dict observations, GELU...) gets no sidecar and
keeps the full runtime: :class:`Unexportable` says why.

The probe set's answers come from the full runtime itself (``load_runtime`` then
``get_action``, the code that serves the checkpoint), on observations sampled from the saved
spaces plus edge cases (zeros, the bounds), with and without random action masks. The numpy
form must give the same answers before the file is written, and again each time a worker
loads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.numpy_policy import (
    FORMAT,
    MULTI_AGENT,
    SINGLE_AGENT,
    SidecarRefused,
    build_runtime,
    check_probes,
    file_digest,
    sidecar_path,
)
from workbench_core.store import Checkpoint, Experiment

log = logging.getLogger(__name__)

PROBE_ROWS = 64
MAX_PARAMETERS = 4_000_000  # "small policies": past this the torch runtime is the better server


class Unexportable(RuntimeError):
    """This checkpoint's policy has no numpy form; the message says what stands in the way."""


class _Arrays:
    """The sidecar's arrays, each under a short key the metadata refers to."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, value: Any) -> str:
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        key = f"a{len(self.arrays)}"
        self.arrays[key] = np.array(value)
        return key


def _layer_specs(module: Any, arrays: _Arrays, *, skip_gumbel: bool = False
                 ) -> list[dict[str, Any]]:
    """The numpy ops of an AgileRL MLP, layer by layer; :class:`Unexportable` otherwise."""
    import torch
    from agilerl.modules.custom_components import GumbelSoftmax
    from agilerl.modules.mlp import EvolvableMLP

    nn = torch.nn
    if type(module) is not EvolvableMLP or not isinstance(module.model, nn.Sequential):
        raise Unexportable(f"its network is a {type(module).__name__}, not a plain MLP")
    return _sequential_specs(module.model, arrays,
                             skip=(GumbelSoftmax,) if skip_gumbel else ())


def _sequential_specs(sequential: Any, arrays: _Arrays, *, skip: tuple[type, ...] = ()
                      ) -> list[dict[str, Any]]:
    """The numpy ops of a ``torch.nn.Sequential``, layer by layer; :class:`Unexportable` for a
    layer :mod:`.numpy_policy` does not implement. ``skip``: layer types left out."""
    import torch

    nn = torch.nn
    if type(sequential) is not nn.Sequential:
        raise Unexportable(f"its network is a {type(sequential).__name__}, not a plain MLP")
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Softsign: "softsign",
              nn.Identity: "identity"}
    specs: list[dict[str, Any]] = []
    layers: list[Any] = list(sequential)
    for layer in layers:
        kind = type(layer)
        if kind is nn.Linear:
            specs.append({"op": "linear", "weight": arrays.add(layer.weight),
                          "bias": arrays.add(layer.bias) if layer.bias is not None else None})
        elif kind is nn.LayerNorm and len(layer.normalized_shape) == 1:
            affine = layer.elementwise_affine
            specs.append({"op": "layer_norm", "eps": float(layer.eps),
                          "weight": arrays.add(layer.weight) if affine else None,
                          "bias": arrays.add(layer.bias)
                          if affine and layer.bias is not None else None})
        elif kind in simple:
            specs.append({"op": simple[kind]})
        elif kind is nn.Softmax and layer.dim in (-1, None):
            specs.append({"op": "softmax"})
        elif kind is nn.ELU and not layer.inplace:
            specs.append({"op": "elu", "alpha": float(layer.alpha)})
        elif kind is nn.LeakyReLU and not layer.inplace:
            specs.append({"op": "leaky_relu", "slope": float(layer.negative_slope)})
        elif kind in skip:
            continue  # GumbelSoftmax: its mode is the argmax of its input, as served
        else:
            raise Unexportable(f"its network has a {kind.__name__} layer")
    return specs


def _space_spec(space: Any, arrays: _Arrays) -> dict[str, Any]:
    from gymnasium import spaces

    if type(space) is spaces.Box:
        return {"type": "box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": arrays.add(space.low), "high": arrays.add(space.high)}
    if type(space) is spaces.Discrete:
        return {"type": "discrete", "n": int(space.n), "start": int(space.start)}
    if type(space) is spaces.MultiDiscrete and space.nvec.ndim == 1:
        return {"type": "multi_discrete", "nvec": [int(n) for n in space.nvec]}
    if type(space) is spaces.MultiBinary:
        n: Any = space.n
        return {"type": "multi_binary", "n": int(n) if np.ndim(n) == 0 else list(map(int, n))}
    raise Unexportable(f"it uses a {type(space).__name__} space")


def _bounds(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _observations(space: Any, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Samples of ``space`` plus edge cases (zeros, the finite bounds, far outside them)."""
    from gymnasium import spaces

    space.seed(int(rng.integers(2**31)))
    sampled = [np.asarray(space.sample()) for _ in range(rows)]
    if isinstance(space, spaces.Discrete):
        edges = [np.asarray(v) for v in range(int(space.start), int(space.start + space.n))]
    else:
        low = np.asarray(space.low, dtype=np.float64)
        high = np.asarray(space.high, dtype=np.float64)
        # Unbounded (or float32-max) coordinates: a large but ordinary value instead.
        low = np.where(np.isfinite(low) & (np.abs(low) < 1e6), low, -10.0)
        high = np.where(np.isfinite(high) & (np.abs(high) < 1e6), high, 10.0)
        edges = [np.clip(np.zeros(space.shape), low, high), low, high,
                 np.clip(np.full(space.shape, 100.0), low, high), (low + high) / 2]
        edges = [e.astype(space.dtype) for e in edges]
    return np.stack([*sampled, *edges])


def _masks(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    mask = (rng.random((rows, width)) < 0.5).astype(np.float32)
    mask[np.arange(rows), rng.integers(width, size=rows)] = 1.0  # at least one legal action
    return mask


def _single(runtime: Any, agent: Any, arrays: _Arrays, rng: np.random.Generator
            ) -> dict[str, Any]:
    from agilerl.networks.actors import get_output_bounds

    policy = runtime.policy
    algo = policy.algorithm
    if algo not in SINGLE_AGENT:
        raise Unexportable(f"{algo} policies have no numpy form here")
    if not policy.flattened:
        raise Unexportable("its networks do not run as a plain sequence of layers")
    actor = agent.actor
    head = actor.head_net.wrapped if algo == "PPO" else actor.head_net
    layers = _layer_specs(actor.encoder, arrays) + _layer_specs(head, arrays)
    meta: dict[str, Any] = {
        "kind": "single", "algo": algo, "layers": layers,
        "obs_space": _space_spec(policy.observation_space, arrays),
        "action_space": _space_spec(policy.action_space, arrays),
    }
    if not policy.discrete:
        if algo in ("DDPG", "TD3"):
            low, high = _bounds(agent.action_low), _bounds(agent.action_high)
            out_low, out_high = get_output_bounds(actor.output_activation)
            bounded = bool(np.isfinite(low).all() and np.isfinite(high).all())
            meta["box"] = ({"rule": "rescale", "low": arrays.add(low), "high": arrays.add(high),
                            "out_low": float(out_low), "out_high": float(out_high)}
                           if bounded else {"rule": "raw"})
        else:
            rule = "squash" if getattr(actor, "squash_output", False) else "clip"
            meta["box"] = {"rule": rule, "low": arrays.add(_bounds(actor.action_low)),
                           "high": arrays.add(_bounds(actor.action_high))}
    obs = _observations(policy.observation_space, rng, PROBE_ROWS)
    cases: list[tuple[np.ndarray, np.ndarray | None]] = [(obs, None), (obs[:1], None)]
    if policy.discrete:
        cases.append((obs, _masks(rng, len(obs), int(policy.n_actions))))
    meta["probes"] = []
    for case_obs, mask in cases:
        actions, _ = runtime.get_action(case_obs, action_mask=mask)
        meta["probes"].append({"obs": arrays.add(case_obs),
                               "mask": None if mask is None else arrays.add(mask),
                               "actions": arrays.add(actions)})
    return meta


def _multi(runtime: Any, arrays: _Arrays, rng: np.random.Generator) -> dict[str, Any]:
    from agilerl.networks.actors import get_output_bounds
    from gymnasium import spaces

    algo = runtime.algo
    if algo not in MULTI_AGENT:
        raise Unexportable(f"{algo} policies have no numpy form here")
    for aid, space in runtime.obs_spaces.items():
        if type(space) is not spaces.Box or len(space.shape) != 1:
            raise Unexportable(f"agent {aid} observes a {type(space).__name__} space, not a "
                               "flat vector")
    networks: dict[str, Any] = {}
    for nid, actor in runtime.actors.items():
        head = actor.head_net.wrapped if runtime.stochastic else actor.head_net
        net: dict[str, Any] = {"layers": _layer_specs(actor.encoder, arrays)
                               + _layer_specs(head, arrays, skip_gumbel=not runtime.stochastic)}
        member = next(a for a, n in runtime.network_of.items() if n == nid)
        action_space = runtime.heads[member].space
        if runtime.heads[member].kind == "box":
            if not runtime.stochastic:
                low, high = _bounds(actor.action_low), _bounds(actor.action_high)
                out_low, out_high = get_output_bounds(actor.output_activation)
                bounded = bool(np.isfinite(low).all() and np.isfinite(high).all())
                net["box"] = ({"rule": "rescale", "low": arrays.add(low),
                               "high": arrays.add(high), "out_low": float(out_low),
                               "out_high": float(out_high)} if bounded else {"rule": "raw"})
            else:
                squash = getattr(actor, "squash_output", False)
                net["box"] = {
                    "rule": "squash" if squash else "clip",
                    "low": arrays.add(_bounds(actor.action_low if squash else action_space.low)),
                    "high": arrays.add(_bounds(actor.action_high if squash
                                               else action_space.high)),
                    "clip_low": arrays.add(action_space.low) if squash else None,
                    "clip_high": arrays.add(action_space.high) if squash else None,
                }
        networks[nid] = net
    meta: dict[str, Any] = {
        "kind": "multi", "algo": algo, "agent_ids": list(runtime.agent_ids),
        "network_of": dict(runtime.network_of), "networks": networks,
        "flatten_key": runtime.flatten_key,
        "obs_spaces": {aid: _space_spec(s, arrays) for aid, s in runtime.obs_spaces.items()},
        "action_spaces": {aid: _space_spec(h.space, arrays) for aid, h in runtime.heads.items()},
    }
    obs = {aid: _observations(space, rng, PROBE_ROWS // 2)
           for aid, space in runtime.obs_spaces.items()}
    masks = {aid: _masks(rng, len(obs[aid]), head.mask_width)
             for aid, head in runtime.heads.items() if head.mask_width}
    first = runtime.agent_ids[0]
    cases: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]] = [
        (obs, None), ({first: obs[first][:1]}, None)]
    if masks:
        cases.append((obs, masks))
    meta["probes"] = []
    for case_obs, case_masks in cases:
        actions, _ = runtime.get_action(case_obs, action_mask=case_masks)
        meta["probes"].append({
            "obs": {aid: arrays.add(v) for aid, v in case_obs.items()},
            "mask": None if case_masks is None
            else {aid: arrays.add(v) for aid, v in case_masks.items()},
            "actions": {aid: arrays.add(v) for aid, v in actions.items()},
        })
    return meta


def _sb3(runtime: Any, arrays: _Arrays, rng: np.random.Generator) -> dict[str, Any]:
    """A Stable-Baselines3 PPO, A2C or DQN MLP policy (``MlpPolicy``) on flat observations."""
    import torch
    from gymnasium import spaces
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if runtime.vecnormalize is not None:
        raise Unexportable("it acts on VecNormalize-normalised observations")
    algo = runtime.kind.algo
    policy = runtime.policy
    obs_space, action_space = runtime.observation_space, runtime.action_space
    if type(obs_space) is not spaces.Box or len(obs_space.shape) != 1:
        raise Unexportable("it observes something other than flat vectors")
    if algo == "DQN":
        qnet = policy.q_net
        if type(qnet.features_extractor) is not FlattenExtractor:
            raise Unexportable("its features extractor is not SB3's FlattenExtractor")
        layers = _sequential_specs(qnet.q_net, arrays)
    else:
        from stable_baselines3.common.distributions import (
            CategoricalDistribution,
            DiagGaussianDistribution,
        )

        if type(policy.pi_features_extractor) is not FlattenExtractor:
            raise Unexportable("its features extractor is not SB3's FlattenExtractor")
        if type(policy.action_dist) not in (CategoricalDistribution, DiagGaussianDistribution):
            raise Unexportable(f"its action distribution is {type(policy.action_dist).__name__}")
        if not isinstance(policy.action_net, torch.nn.Linear):
            raise Unexportable("its action head is not a linear layer")
        head = {"op": "linear", "weight": arrays.add(policy.action_net.weight),
                "bias": arrays.add(policy.action_net.bias)}
        layers = [*_sequential_specs(policy.mlp_extractor.policy_net, arrays), head]
    meta: dict[str, Any] = {"kind": "sb3", "algo": algo, "layers": layers,
                            "obs_space": _space_spec(obs_space, arrays),
                            "action_space": _space_spec(action_space, arrays)}
    if type(action_space) is spaces.Box:
        if getattr(policy, "squash_output", False):
            raise Unexportable("it squashes its actions (gSDE)")
        # predict(): the Gaussian's mean, clipped to the action space's bounds.
        meta["box"] = {"rule": "clip", "low": arrays.add(action_space.low.astype(np.float32)),
                       "high": arrays.add(action_space.high.astype(np.float32))}
    elif type(action_space) is not spaces.Discrete:
        raise Unexportable(f"it acts in a {type(action_space).__name__} space")
    obs = _observations(obs_space, rng, PROBE_ROWS)
    meta["probes"] = []
    for case_obs in (obs, obs[:1]):
        actions, _ = runtime.get_action(case_obs)
        meta["probes"].append({"obs": arrays.add(case_obs), "mask": None,
                               "actions": arrays.add(actions)})
    return meta


SB3_ALGORITHMS = ("PPO", "A2C", "DQN")


def _check_eligible(experiment: Experiment, checkpoint: Checkpoint) -> None:
    info = experiment.info
    if info.framework not in ("agilerl", "sb3"):
        raise Unexportable(f"it is a {info.framework} checkpoint, not AgileRL or SB3")
    if info.recurrent:
        raise Unexportable("recurrent policies keep a hidden state the numpy form lacks")
    algorithm = "".join(ch for ch in info.algorithm.upper() if ch not in " -_")
    allowed = (SB3_ALGORITHMS if info.framework == "sb3"
               else MULTI_AGENT if info.multi_agent else SINGLE_AGENT)
    if algorithm not in allowed:
        raise Unexportable(f"{info.algorithm} policies have no numpy form here")
    if not checkpoint.path.is_file():
        raise Unexportable(f"{checkpoint.path.name} is not a file")


def build(experiment: Experiment, checkpoint: Checkpoint, *, seed: int = 0
          ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the checkpoint's sidecar, checked; :class:`Unexportable` if none."""
    _check_eligible(experiment, checkpoint)
    digest = file_digest(checkpoint.path)
    runtime: Any = load_runtime(experiment, checkpoint, device="cpu")
    try:
        arrays = _Arrays()
        rng = np.random.default_rng(seed)
        if experiment.info.framework == "sb3":
            meta = _sb3(runtime, arrays, rng)
        elif experiment.info.multi_agent:
            meta = _multi(runtime, arrays, rng)
        else:
            from server_extension.serving.runtimes.agilerl import _load_agent, algorithm_classes

            cls = algorithm_classes()[runtime.policy.algorithm]
            agent = _load_agent(cls, checkpoint.path, "cpu")
            meta = _single(runtime, agent, arrays, rng)
    finally:
        runtime.close()
    weights = sum(int(arrays.arrays[spec[k]].size) for net in _all_layers(meta)
                  for spec in net for k in ("weight",) if spec.get(k))
    if weights > MAX_PARAMETERS:
        raise Unexportable(f"its {weights} weights are more than a small policy's "
                           f"{MAX_PARAMETERS}")
    meta.update({"format": FORMAT, "checkpoint_sha256": digest,
                 "checkpoint": checkpoint.path.name})
    try:
        check_probes(build_runtime(meta, arrays.arrays), meta, arrays.arrays)
    except SidecarRefused as exc:
        raise Unexportable(str(exc)) from exc
    return meta, arrays.arrays


def _all_layers(meta: dict[str, Any]) -> list[list[dict[str, Any]]]:
    if meta["kind"] == "multi":
        return [net["layers"] for net in meta["networks"].values()]
    return [meta["layers"]]


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write a sidecar atomically (a reader sees the old file or the whole new one)."""
    payload = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays}
    fd, tmp = tempfile.mkstemp(prefix=".policy-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **payload)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def export(experiment: Experiment, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint's sidecar; its path. :class:`Unexportable` says why not."""
    meta, arrays = build(experiment, checkpoint)
    path = sidecar_path(checkpoint.path)
    write(path, meta, arrays)
    return path


def try_export(experiment: Experiment, checkpoint: Checkpoint) -> str | None:
    """:func:`export`, never raising: ``None`` once written, else the reason (logged)."""
    try:
        path = export(experiment, checkpoint)
    except Unexportable as exc:
        log.info("No numpy form for %s step %s: %s", experiment.name, checkpoint.step, exc)
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - the checkpoint is served by torch all the same
        log.warning("Exporting %s step %s failed: %s", experiment.name, checkpoint.step, exc)
        return f"{type(exc).__name__}: {exc}"
    log.info("Wrote %s", path)
    return None




def export_saved(writer: Any, step: int) -> str | None:
    """:func:`try_export` for the checkpoint ``writer`` (an ``ExperimentWriter``) just saved at
    ``step``: ``None`` once its sidecar is written, else why there is none."""
    import random

    import torch

    from workbench_core.store import ExperimentStore

    try:
        experiment = ExperimentStore(writer.folder.parent.parent).get(writer.info.name)
        checkpoint = experiment.checkpoint(step)
    except Exception as exc:  # noqa: BLE001 - a sidecar is an extra, never a failed save
        return f"{type(exc).__name__}: {exc}"
    # Loading the checkpoint builds networks, which draws from the global generators: the
    # training run goes on afterwards and must not change because a sidecar was written.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return try_export(experiment, checkpoint)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


__all__ = ["Unexportable", "build", "export", "export_saved", "try_export", "write"]
