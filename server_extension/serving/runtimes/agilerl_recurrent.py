"""AgileRL recurrent PPO checkpoints (``PPO(recurrent=True)``, ``RecurrentPPO``) served with memory.

AgileRL keeps an LSTM's state as ``{"<encoder>_h": (layers, batch, size), "<encoder>_c": ...}``.
On the wire the batch axis must come first (the Arena client adds and strips axis 0), so this
runtime sends and takes ``{"<encoder>_h": (batch, layers, size), ...}`` and transposes. A
missing (``null``) hidden state means an episode's first step: zeros, as AgileRL starts.

Example::

    runtime = load(experiment, checkpoint, "cpu")
    hidden = None
    for obs in episode:                                   # obs: (1, obs_dim)
        action, hidden = runtime.get_action(obs, hidden_state=hidden)

Actions are deterministic: the mode of the policy's distribution (argmax over legal actions,
or the mean). Threading the returned hidden state step to step reproduces AgileRL's
``get_action(obs, hidden_state=...)`` run in-process.

Thread-safety: read-only after loading; each call builds its own tensors under
``torch.inference_mode()`` and keeps no state between calls (the caller holds the memory).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from server_extension.serving.runtimes.agilerl_multi import (
    ActionHead,
    check_observation,
    load_agilerl_agent,
    sample_observation,
)
from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
)
from workbench_core.store import Checkpoint, Experiment


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> RecurrentPPORuntime:
    """Load a recurrent PPO checkpoint of ``experiment`` as a runtime."""
    if experiment.info.algorithm.upper() not in ("PPO", "RECURRENTPPO"):
        raise RuntimeLoadError(
            f"Experiment {experiment.name!r} is marked recurrent with algorithm "
            f"{experiment.info.algorithm!r}; the recurrent loader serves PPO trained with "
            "recurrent=True."
        )
    agent = load_agilerl_agent(checkpoint.path, ("PPO", "RecurrentPPO"), device)
    return RecurrentPPORuntime(agent)


class RecurrentPPORuntime(Runtime):
    """A loaded recurrent PPO policy: ``get_action(obs, hidden_state=...)`` -> (action, state)."""

    def __init__(self, agent: Any) -> None:
        import torch
        from gymnasium import spaces

        if not getattr(agent, "recurrent", False):
            raise RuntimeLoadError(
                "This PPO checkpoint was trained without recurrent=True; set the experiment's "
                "recurrent flag to false so the feed-forward loader serves it."
            )
        self.agent = agent
        self.kind = AgentKind(algo="PPO", recurrent=True)
        self.device = torch.device(str(agent.device))
        self.actor = agent.actor
        self.actor.eval()
        # Requests carry the environment's observations (channels-last images included);
        # AgileRL's preprocessing turns them into what the network takes.
        self.obs_space = getattr(agent, "env_observation_space", agent.observation_space)
        self.net_obs_space = agent.observation_space
        self._flat = type(self.obs_space) is spaces.Box and len(self.obs_space.shape) == 1
        self.head = ActionHead(agent.action_space)
        # (layers, size) per state tensor; zeros are AgileRL's initial state.
        template = self.actor.initialize_hidden_state(batch_size=1)
        self.state_shapes: dict[str, tuple[int, int]] = {
            key: (int(value.shape[0]), int(value.shape[2])) for key, value in template.items()
        }

    def initial_state(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Wire-shaped zeros: ``{key: (batch, layers, size)}``."""
        return {k: np.zeros((batch, *s), np.float32) for k, s in self.state_shapes.items()}

    def _state_in(self, hidden_state: Any, batch: int) -> dict[str, Any]:
        import torch

        if hidden_state is None:
            wire = self.initial_state(batch)
        else:
            wire = self._check_state(hidden_state, batch)
        return {k: torch.as_tensor(np.transpose(v, (1, 0, 2)), dtype=torch.float32,
                                   device=self.device).contiguous()
                for k, v in wire.items()}

    def _check_state(self, hidden_state: Any, batch: int) -> dict[str, np.ndarray]:
        expected = ", ".join(f"{key}: ({batch}, {layers}, {size})"
                             for key, (layers, size) in self.state_shapes.items())
        if not isinstance(hidden_state, Mapping):
            raise RequestError(
                f"hidden_state must be a dict of arrays ({expected}) or null on an episode's "
                f"first step, got {type(hidden_state).__name__}.")
        if set(hidden_state) != set(self.state_shapes):
            raise RequestError(
                f"hidden_state has keys {sorted(hidden_state)}; expected {expected}. Send back "
                "the hidden_state of the previous answer, or null to start an episode.")
        out = {}
        for key, (layers, size) in self.state_shapes.items():
            value = hidden_state[key]
            want = (batch, layers, size)
            if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
                raise RequestError(
                    f"hidden_state[{key!r}] must be a numeric array of shape {want}.")
            if value.shape != want:
                raise RequestError(
                    f"hidden_state[{key!r}] has shape {value.shape}; expected {want} (batch, "
                    "layers, size). Send back the hidden_state of the previous answer "
                    "unchanged, or null to start an episode.")
            if not np.isfinite(value).all():
                raise RequestError(f"hidden_state[{key!r}] contains NaN or infinity.")
            out[key] = value.astype(np.float32, copy=False)
        return out

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The deterministic action and the next hidden state (wire shape) for each row."""
        import torch
        from agilerl.utils.algo_utils import preprocess_observation

        if isinstance(obs, Mapping) and not hasattr(self.obs_space, "spaces"):
            raise RequestError(
                "obs must be a batched array for this single-agent recurrent PPO agent, "
                "not a dict.")
        batch = check_observation(obs, self.obs_space, "obs")
        legal = self.head.check_mask(action_mask, batch, "action_mask")
        state = self._state_in(hidden_state, batch)
        with torch.inference_mode():
            if self._flat:
                # Flat vectors: AgileRL's preprocessing is exactly a float32 tensor.
                x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            else:
                x = preprocess_observation(
                    self.net_obs_space, observation=obs, device=self.device,
                    normalize_images=self.agent.normalize_images,
                    swap_channels=self.agent.swap_channels,
                )
            latent, next_state = self.actor.extract_features(x, hidden_state=state)
            out = self.actor.head_net.wrapped(latent)
            if self.head.kind == "box":
                if getattr(self.actor, "squash_output", False):
                    out = self.actor.scale_action(torch.tanh(out))
                space = self.head.space
                action = np.clip(out.cpu().numpy(), space.low, space.high).astype(np.float32)
            else:
                action = self.head.mode(out.cpu().numpy(), legal)
            next_wire = {
                k: np.ascontiguousarray(
                    np.transpose(v.cpu().numpy(), (1, 0, 2)).astype(np.float32))
                for k, v in next_state.items() if k in self.state_shapes
            }
        action = self.head.override(action, env_defined_actions, "env_defined_actions")
        return action, next_wire

    def probe(self) -> None:
        """Two chained steps from zeros; raises if the policy cannot answer."""
        obs = sample_observation(self.obs_space, 1)
        _, state = self.get_action(obs)
        action, _ = self.get_action(obs, hidden_state=state)
        if not np.all(np.isfinite(action)):
            raise RuntimeError("The recurrent policy produced non-finite actions.")
