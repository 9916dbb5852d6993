"""AgileRL multi-agent checkpoints (MADDPG, MATD3, IPPO) served through ``get_action``.

The runtime answers from the checkpoint's own actor networks, with AgileRL's own observation
preprocessing, but always deterministically: continuous actors give their output (no
exploration noise), stochastic and Gumbel-Softmax actors give the mode of their distribution
(the most likely legal action, or the mean). Agents that share a network (``agent_0``,
``agent_1`` -> ``agent``) are batched into one forward pass, as AgileRL does.

Example::

    runtime = load(experiment, checkpoint, "cpu")
    actions, _ = runtime.get_action(
        {"player_1": obs[None]},                          # agents missing here get no action
        action_mask={"player_1": legal[None]},            # 1 = legal
        env_defined_actions={"player_1": np.array([np.nan])},  # NaN: the policy decides
    )

What a request may hold (arrays carry a leading batch axis ``B``):

    obs                  {agent_id: (B, *obs_shape)}; agents left out (done, or not their
                         turn) get no action, and their masks or environment actions are
                         ignored. Unknown agent ids are refused.
    action_mask          {agent_id: (B, n)} with 1 = legal; the answer is always legal, and
                         a row with no legal action is refused. Discrete actions only.
    env_defined_actions  {agent_id: (B,) or (B, *action_shape)}; where a value is given it
                         is the action, where it is NaN (or the agent's entry is null) the
                         policy decides -- element by element, row by row.

Thread-safety: a loaded runtime is read-only. Every call builds its own tensors and runs
under ``torch.inference_mode()``; no module state (such as a cached distribution) is written,
so worker threads may call :meth:`MultiAgentRuntime.get_action` at once.

Checkpoints are read with ``torch.load(weights_only=False)``, as AgileRL saves them with
``dill``: only deploy checkpoints you trust, as you would only import code you trust.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
)
from workbench_core.store import Checkpoint, Experiment

log = logging.getLogger(__name__)

MULTI_AGENT_ALGORITHMS = ("MADDPG", "MATD3", "IPPO")
_MAX_AGENTS_LISTED = 12


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def read_checkpoint_algo(path: Path) -> str:
    """The ``algo`` an AgileRL checkpoint file records; :class:`RuntimeLoadError` if unreadable."""
    import dill
    import torch

    try:
        data = torch.load(path, map_location="cpu", pickle_module=dill, weights_only=False)
    except Exception as exc:  # truncated zips, bad pickles, missing classes: all unreadable
        raise RuntimeLoadError(
            f"Checkpoint {path.name} could not be read as an AgileRL checkpoint "
            f"({type(exc).__name__}: {exc}). It may be truncated or corrupt; save it again "
            "with agent.save_checkpoint(path) and create the agent from that step."
        ) from exc
    if not isinstance(data, dict) or "network_info" not in data:
        raise RuntimeLoadError(
            f"Checkpoint {path.name} is not an AgileRL algorithm checkpoint (no network_info); "
            "save it with agent.save_checkpoint(path)."
        )
    return str(data.get("algo") or "")


def load_agilerl_agent(path: Path, expected: tuple[str, ...], device: str) -> Any:
    """Load an AgileRL algorithm whose recorded ``algo`` is one of ``expected``.

    Wrong algorithms, unreadable files and AgileRL's own load failures all become a
    :class:`RuntimeLoadError` that names the file and what to do. A CUDA device that is not
    there falls back to the CPU.
    """
    import torch

    if path.is_dir():
        raise RuntimeLoadError(
            f"{path} is a folder; AgileRL checkpoints are single files written by "
            "agent.save_checkpoint(path).")
    device = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    from server_extension.serving.runtimes.agilerl import algorithm_classes

    algorithm_classes()  # imports agilerl.algorithms with its import-time warning silenced
    from agilerl import algorithms

    algo = read_checkpoint_algo(path)
    if algo not in expected:
        raise RuntimeLoadError(
            f"Checkpoint {path.name} holds a {algo or 'unknown'} agent, but this loader serves "
            f"{', '.join(expected)}. Check the experiment's algorithm and multi_agent/recurrent "
            "flags in experiment.json match what was trained."
        )
    cls = getattr(algorithms, algo)
    try:
        # AgileRL warns on routine loads (unsaved rollout buffers, tensordict internals);
        # keep them out of the way of strict warning filters, in the log at debug level.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            agent = cls.load(str(path), device=device)
    except Exception as exc:  # AgileRL raises many kinds; all mean "cannot load"
        raise RuntimeLoadError(
            f"AgileRL could not rebuild the {algo} agent from {path.name} "
            f"({type(exc).__name__}: {exc}). Was it saved by another AgileRL version? "
            "Retrain or re-save it with the installed AgileRL."
        ) from exc
    for item in caught:
        log.debug("loading %s: %s", path, item.message)
    return agent


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> MultiAgentRuntime:
    """Load a MADDPG, MATD3 or IPPO checkpoint of ``experiment`` as a runtime."""
    algorithm = experiment.info.algorithm.upper()
    if algorithm not in MULTI_AGENT_ALGORITHMS:
        raise RuntimeLoadError(
            f"Experiment {experiment.name!r} is marked multi_agent with algorithm "
            f"{experiment.info.algorithm!r}; the multi-agent loader serves "
            f"{', '.join(MULTI_AGENT_ALGORITHMS)}."
        )
    agent = load_agilerl_agent(checkpoint.path, (algorithm,), device)
    runtime = MultiAgentRuntime(agent)
    # The recipe's preprocessing (tic-tac-toe's board flattened from its dict observation):
    # the runtime then also takes the environment's own observations and applies it.
    rule = (experiment.info.extra.get("env") or {}).get("observation") or {}
    if experiment.info.environment in ("tictactoe_v3",) and not rule:
        rule = {"flatten_key": "observation"}
    runtime.flatten_key = rule.get("flatten_key")
    return runtime


# --------------------------------------------------------------------------------------------
# Request checks shared with the recurrent runtime
# --------------------------------------------------------------------------------------------

def check_observation(value: Any, space: Any, what: str) -> int:
    """Check one batched observation against a gymnasium space; return its batch size.

    Raises :class:`RequestError` saying which field has which shape and what was expected.
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        if not isinstance(value, Mapping):
            raise RequestError(
                f"{what} must be a dict with keys {sorted(space.spaces)}, "
                f"got {type(value).__name__}.")
        missing = sorted(set(space.spaces) - set(value))
        extra = sorted(set(value) - set(space.spaces))
        if missing or extra:
            raise RequestError(
                f"{what} has keys {sorted(value)}; expected exactly {sorted(space.spaces)}.")
        sizes = {check_observation(value[k], s, f"{what}[{k!r}]") for k, s in space.spaces.items()}
        return _one_batch(sizes, what)
    if isinstance(space, spaces.Tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(space.spaces):
            raise RequestError(f"{what} must be a list of {len(space.spaces)} arrays.")
        sizes = {check_observation(v, s, f"{what}[{i}]")
                 for i, (v, s) in enumerate(zip(value, space.spaces, strict=True))}
        return _one_batch(sizes, what)
    return _check_array(value, space, what)


def _check_array(value: Any, space: Any, what: str) -> int:
    from gymnasium import spaces

    if not isinstance(value, np.ndarray):
        raise RequestError(f"{what} must be an array, got {type(value).__name__}.")
    if value.dtype.kind not in "biuf":
        raise RequestError(f"{what} has dtype {value.dtype}; send a numeric array.")
    discrete = isinstance(space, spaces.Discrete)
    shape = () if discrete else tuple(space.shape or ())
    if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape:
        expected = ", ".join(["batch", *map(str, shape)])
        raise RequestError(
            f"{what} has shape {value.shape}; expected ({expected}) for the observation space "
            "this agent was trained on.")
    if value.shape[0] == 0:
        raise RequestError(f"{what} has an empty batch; send at least one row.")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise RequestError(f"{what} contains NaN or infinity; send finite numbers.")
    if discrete:
        low, high = int(space.start), int(space.start + space.n - 1)
        if not np.all(value == np.round(value)) or (value < low).any() or (value > high).any():
            raise RequestError(f"{what} must hold whole numbers in {low}..{high}.")
    return int(value.shape[0])


def _one_batch(sizes: set[int], what: str) -> int:
    if len(sizes) != 1:
        raise RequestError(f"{what} mixes batch sizes {sorted(sizes)}; use one batch size.")
    return sizes.pop()


def legal_mask(mask: Any, n: int, batch: int, what: str) -> np.ndarray:
    """A ``(batch, n)`` boolean legality mask (1 = legal) from a wire value; checked."""
    if not isinstance(mask, np.ndarray) or mask.dtype.kind not in "biuf":
        raise RequestError(f"{what} must be a numeric array of 1 (legal) and 0 (illegal).")
    if mask.shape != (batch, n):
        raise RequestError(
            f"{what} has shape {mask.shape}; expected ({batch}, {n}): one entry per action "
            f"({n} actions) for each of the {batch} observation(s)."
        )
    legal = mask != 0
    empty = np.flatnonzero(~legal.any(axis=1))
    if empty.size:
        raise RequestError(
            f"{what} allows no action in batch row(s) {empty.tolist()}; at least one action "
            "must be legal (1)."
        )
    return np.asarray(legal)


def env_override(value: Any, action_shape: tuple[int, ...], batch: int, what: str
                 ) -> np.ndarray | None:
    """Environment-defined actions as a float array shaped like the actions, or ``None``.

    NaN entries mean "the policy decides". ``(batch,)`` is accepted for ``(batch, 1)`` and the
    other way round, as AgileRL's environments use both.
    """
    if value is None:
        return None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise RequestError(f"{what} must be a numeric array (NaN where the policy decides).")
    want = (batch, *action_shape)
    arr = value.astype(np.float64)
    if arr.shape != want and arr.size == int(np.prod(want)) and arr.ndim >= 1 \
            and arr.shape[0] == batch and max(arr.ndim, len(want)) <= 2:
        arr = arr.reshape(want)
    if arr.shape != want:
        raise RequestError(
            f"{what} has shape {value.shape}; expected {want} (NaN where the policy decides)."
        )
    if np.isinf(arr).any():
        raise RequestError(f"{what} contains infinity; use NaN where the policy decides.")
    return arr


class ActionHead:
    """Turns an actor's outputs into deterministic, legal actions for one action space."""

    def __init__(self, space: Any) -> None:
        from gymnasium import spaces

        self.space = space
        if isinstance(space, spaces.Discrete):
            self.kind = "discrete"
            self.shape: tuple[int, ...] = ()
            self.mask_width = int(space.n)
        elif isinstance(space, spaces.MultiDiscrete):
            self.kind = "multi_discrete"
            self.shape = tuple(space.shape)
            self.mask_width = int(np.sum(space.nvec))
        elif isinstance(space, spaces.MultiBinary):
            self.kind = "multi_binary"
            self.shape = tuple(space.shape)
            self.mask_width = 0
        elif isinstance(space, spaces.Box):
            self.kind = "box"
            self.shape = tuple(space.shape)
            self.mask_width = 0
        else:
            raise RuntimeLoadError(f"Action space {space} is not supported for serving.")

    def check_mask(self, mask: Any, batch: int, what: str) -> np.ndarray | None:
        """The checked legality mask, or ``None``; masks on continuous actions are refused."""
        if mask is None:
            return None
        if not self.mask_width:
            raise RequestError(
                f"{what} was sent, but this agent's action space ({self.space}) is not "
                "discrete; action masks apply to Discrete and MultiDiscrete actions only."
            )
        legal = legal_mask(mask, self.mask_width, batch, what)
        if self.kind == "multi_discrete":
            start = 0
            for n in np.asarray(self.space.nvec).reshape(-1):
                if not legal[:, start:start + n].any(axis=1).all():
                    raise RequestError(
                        f"{what} allows no value for one of the action's sub-actions; each "
                        "sub-action needs at least one legal (1) entry.")
                start += int(n)
        return legal

    def mode(self, logits: np.ndarray, legal: np.ndarray | None) -> np.ndarray:
        """The most likely legal action per row from logits (discrete kinds)."""
        if self.kind == "discrete":
            if legal is not None:
                logits = np.where(legal, logits, -np.inf)
            return np.argmax(logits, axis=-1).astype(np.int64)
        if self.kind == "multi_discrete":
            parts, start = [], 0
            for n in np.asarray(self.space.nvec).reshape(-1):
                chunk = logits[:, start:start + n]
                if legal is not None:
                    chunk = np.where(legal[:, start:start + n], chunk, -np.inf)
                parts.append(np.argmax(chunk, axis=-1))
                start += int(n)
            return np.stack(parts, axis=-1).reshape((logits.shape[0], *self.shape)).astype(np.int64)
        if self.kind == "multi_binary":
            return (logits > 0).astype(np.int64).reshape((logits.shape[0], *self.shape))
        raise AssertionError(self.kind)

    def override(self, actions: np.ndarray, given: Any, what: str) -> np.ndarray:
        """Apply environment-defined actions (non-NaN entries win)."""
        batch = actions.shape[0]
        shape = (1,) if self.kind == "discrete" else self.shape
        values = env_override(given, shape, batch, what)
        if values is None:
            return actions
        if self.kind == "discrete":
            values = values.reshape(batch)
        chosen = ~np.isnan(values)
        if not chosen.any():
            return actions
        if self.kind != "box":
            picked = values[chosen]
            if not np.all(picked == np.round(picked)):
                raise RequestError(f"{what} must hold whole action numbers (or NaN).")
            if self.kind == "discrete" and ((picked < 0) | (picked >= self.space.n)).any():
                raise RequestError(
                    f"{what} holds an action outside 0..{self.space.n - 1}.")
        out = actions.copy()
        out[chosen] = values[chosen].astype(out.dtype)
        return out


# --------------------------------------------------------------------------------------------
# The runtime
# --------------------------------------------------------------------------------------------

class MultiAgentRuntime(Runtime):
    """A loaded MADDPG, MATD3 or IPPO agent answering ``get_action`` deterministically."""

    def __init__(self, agent: Any) -> None:
        import torch
        from agilerl.modules.custom_components import GumbelSoftmax
        from gymnasium import spaces

        self.agent = agent
        self.algo = str(getattr(agent, "algo", type(agent).__name__))
        if self.algo not in MULTI_AGENT_ALGORITHMS:
            raise RuntimeLoadError(
                f"{self.algo} is not a multi-agent algorithm this runtime serves.")
        self.kind = AgentKind(algo=self.algo, multi_agent=True)
        self.device = torch.device(str(agent.device))
        self.stochastic = self.algo == "IPPO"
        self.agent_ids: list[str] = list(agent.agent_ids)
        self.network_of = {aid: agent.get_network_id(aid) for aid in self.agent_ids}
        self.obs_spaces = {aid: agent.env_observation_spaces[aid] for aid in self.agent_ids}
        self.heads = {aid: ActionHead(agent.possible_action_spaces[aid]) for aid in self.agent_ids}
        self.actors = {nid: agent.actors[nid] for nid in set(self.network_of.values())}
        for actor in self.actors.values():
            actor.eval()
        self._gumbel = GumbelSoftmax
        self._flat = {aid for aid, space in self.obs_spaces.items()
                      if type(space) is spaces.Box and len(space.shape) == 1}

    # -- model --------------------------------------------------------------------------------

    def _preprocess(self, aid: str, obs: Any) -> Any:
        import torch
        from agilerl.utils.algo_utils import preprocess_observation

        if aid in self._flat:
            # Flat vectors: AgileRL's preprocessing is exactly a float32 tensor.
            return torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        agent = self.agent
        return preprocess_observation(
            agent.observation_space[self.network_of[aid]], observation=obs, device=self.device,
            normalize_images=agent.normalize_images, swap_channels=agent.swap_channels,
            placeholder_value=agent.placeholder_value,
        )

    def _head_output(self, nid: str, obs: Any) -> Any:
        """Logits (discrete actions) or the action itself (continuous), without sampling."""
        actor = self.actors[nid]
        latent = actor.extract_features(obs)
        if self.stochastic:
            # A distribution head: its parameters (logits, or the Gaussian mean).
            return actor.head_net.wrapped(latent)
        x = latent
        for layer in actor.head_net.model:
            # Gumbel-Softmax adds sampling noise before a softmax; its mode is the argmax of
            # the logits going in, so the layer is skipped.
            if not isinstance(layer, self._gumbel):
                x = layer(x)
        return x

    def _box_action(self, aid: str, out: Any) -> np.ndarray:
        actor = self.actors[self.network_of[aid]]
        space = self.heads[aid].space
        if self.stochastic:
            import torch

            if getattr(actor, "squash_output", False):
                out = actor.scale_action(torch.tanh(out))
            arr = out.cpu().numpy().astype(np.float32)
            return np.clip(arr, space.low, space.high).astype(np.float32)
        # Deterministic actors end in Tanh (or another bounded activation): rescale to bounds.
        return actor.rescale_output_action(out).cpu().numpy().astype(np.float32)

    # -- the route ----------------------------------------------------------------------------

    flatten_key: str | None = None

    def _environment_observations(self, obs: Mapping[str, Any], masks: dict[str, Any]
                                  ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The environment's own observations made what the policy saw: a dict observation's
        ``flatten_key`` entry (its ``action_mask`` the mask unless one was sent), and a board
        (batch, 3, 3, 2) flattened to (batch, 18). The flat form passes unchanged."""
        out: dict[str, Any] = {}
        masks = dict(masks)
        for aid, sent in obs.items():
            value = sent
            if isinstance(sent, Mapping) and self.flatten_key in sent:
                if masks.get(aid) is None and sent.get("action_mask") is not None:
                    masks[aid] = sent["action_mask"]
                value = sent[self.flatten_key]
            shape: tuple[int, ...] = tuple(getattr(self.obs_spaces[aid], "shape", None) or ())
            array = np.asarray(value) if isinstance(value, (np.ndarray, list)) else value
            if (isinstance(array, np.ndarray) and len(shape) == 1 and array.ndim > 2
                    and int(np.prod(array.shape[1:])) == int(shape[0])):
                array = array.reshape(array.shape[0], -1)
            out[aid] = array
        return out, masks

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[dict[str, np.ndarray], None]:
        """Deterministic actions for every agent in ``obs``; see the module docstring."""
        if not isinstance(obs, Mapping):
            raise RequestError(
                "obs must be a dict {agent_id: batched observation} for this multi-agent "
                f"{self.algo} agent; its agents are {self._ids_text()}.")
        if not obs:
            raise RequestError(
                f"obs has no agents; send observations for some of {self._ids_text()}.")
        unknown = [k for k in obs if k not in self.heads]
        if unknown:
            raise RequestError(
                f"obs names unknown agent(s) {unknown}; this {self.algo} agent was trained "
                f"for {self._ids_text()}.")
        masks = self._per_agent(action_mask, "action_mask")
        if self.flatten_key is not None:
            obs, masks = self._environment_observations(obs, masks)
        overrides = self._per_agent(env_defined_actions, "env_defined_actions")

        batches = {aid: check_observation(value, self.obs_spaces[aid], f"obs[{aid!r}]")
                   for aid, value in obs.items()}
        legal = {aid: self.heads[aid].check_mask(masks.get(aid), batches[aid],
                                                 f"action_mask[{aid!r}]")
                 for aid in obs}

        groups: dict[str, list[str]] = {}
        for aid in obs:
            groups.setdefault(self.network_of[aid], []).append(aid)

        actions: dict[str, np.ndarray] = {}
        for nid, members in groups.items():
            out = self.group_outputs(nid, members, obs)
            start = 0
            for aid in members:
                rows = out[start:start + batches[aid]]
                start += batches[aid]
                head = self.heads[aid]
                act = rows if head.kind == "box" else head.mode(rows, legal[aid])
                actions[aid] = head.override(act, overrides.get(aid),
                                             f"env_defined_actions[{aid!r}]")
        return actions, None

    def group_outputs(self, nid: str, members: list[str], obs: Mapping[str, Any]) -> np.ndarray:
        """One forward pass of network ``nid`` for the (checked) rows of its agents
        ``members``: logits for discrete actions, the actions themselves for Box ones."""
        import torch
        from agilerl.utils.algo_utils import concatenate_tensors

        with torch.inference_mode():
            tensors = [self._preprocess(aid, obs[aid]) for aid in members]
            batch_obs = tensors[0] if len(tensors) == 1 else concatenate_tensors(tensors)
            out = self._head_output(nid, batch_obs)
            # Agents sharing a network share its action space: one pass for the group.
            if self.heads[members[0]].kind == "box":
                return self._box_action(members[0], out)
            result: np.ndarray = out.cpu().numpy()
            return result

    def _per_agent(self, value: Any, what: str) -> dict[str, Any]:
        """A per-agent dict (unknown ids refused; agents not in ``obs`` are ignored later)."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise RequestError(
                f"{what} must be a dict {{agent_id: array}} for a multi-agent agent, "
                f"got {type(value).__name__}.")
        unknown = [k for k in value if k not in self.heads]
        if unknown:
            raise RequestError(
                f"{what} names unknown agent(s) {unknown}; agents are {self._ids_text()}.")
        return dict(value)

    def _ids_text(self) -> str:
        ids = self.agent_ids[:_MAX_AGENTS_LISTED]
        more = len(self.agent_ids) - len(ids)
        return ", ".join(ids) + (f" and {more} more" if more > 0 else "")

    def sample_observation(self, batch: int = 1) -> dict[str, Any]:
        """A valid batched observation for every agent (used by :meth:`probe`)."""
        return {aid: sample_observation(space, batch) for aid, space in self.obs_spaces.items()}

    def probe(self) -> None:
        """One forward pass for every agent; raises if any network cannot answer."""
        actions, _ = self.get_action(self.sample_observation())
        for aid, act in actions.items():
            if not np.all(np.isfinite(act)):
                raise RuntimeError(f"The policy for {aid} produced non-finite actions.")


def sample_observation(space: Any, batch: int = 1) -> Any:
    """A deterministic in-bounds observation of ``space`` with a leading batch axis."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {k: sample_observation(s, batch) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(sample_observation(s, batch) for s in space.spaces)
    if isinstance(space, spaces.Discrete):
        return np.full((batch,), int(space.start), dtype=np.int64)
    if isinstance(space, spaces.MultiDiscrete):
        return np.zeros((batch, *space.shape), dtype=np.int64)
    if isinstance(space, spaces.MultiBinary):
        return np.zeros((batch, *space.shape), dtype=np.int8)
    low = np.nan_to_num(np.asarray(space.low, dtype=np.float64), neginf=-1.0, posinf=1.0)
    high = np.nan_to_num(np.asarray(space.high, dtype=np.float64), neginf=-1.0, posinf=1.0)
    value = np.clip(np.zeros(space.shape), low, high).astype(space.dtype)
    return np.broadcast_to(value, (batch, *space.shape)).copy()
