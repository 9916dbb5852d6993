"""Serve single-agent AgileRL checkpoints: DQN, RainbowDQN, PPO, DDPG and TD3.

A checkpoint is the file ``agent.save_checkpoint(path)`` writes; it is read back with
``<Algorithm>.load(path, device=...)``, the class named by ``algorithm`` in
``experiment.json``. The loaded agent is then served from its policy network directly
(:class:`GreedyPolicy`): the same preprocessing and the same deterministic action rule as
AgileRL's own evaluation-mode ``get_action``, without its per-call bookkeeping, and without
touching any module state, so several threads may act at once.

What is served, per algorithm (``B`` is the batch size):

    DQN, RainbowDQN   argmax of the Q-values over legal actions -> int64 (B,)
    PPO, discrete     argmax of the logits over legal actions (the distribution's mode)
    PPO, continuous   the Gaussian mean, squashed and scaled like AgileRL does, else clipped
    DDPG, TD3         the actor's output rescaled to the action space, no exploration noise
                      -> float32 (B, act_dim)

AgileRL checkpoints are pickles (``torch.load(weights_only=False)``): loading one runs code
it contains, so only serve checkpoints from a workspace you trust.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
    as_batch,
)
from workbench_core.store import Checkpoint, Experiment

if TYPE_CHECKING:
    import torch
    from gymnasium import spaces

log = logging.getLogger(__name__)

# Class names in ``agilerl.algorithms`` this loader serves, keyed by a normalised spelling
# (upper case, no spaces, '-' or '_'), so "Rainbow DQN" (AgileRL's own display name, stored
# in checkpoints as ``algo``) and "RainbowDQN" (the class) both resolve.
ALGORITHMS: dict[str, str] = {
    "DQN": "DQN",
    "RAINBOWDQN": "RainbowDQN",
    "PPO": "PPO",
    "DDPG": "DDPG",
    "TD3": "TD3",
}

_import_lock = threading.Lock()


def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).upper() if ch not in " -_")


def algorithm_class_name(name: str) -> str:
    """The AgileRL class name for an ``algorithm`` value; :class:`RuntimeLoadError` if unserved."""
    key = _normalise(name)
    if key not in ALGORITHMS:
        raise RuntimeLoadError(
            f"Algorithm {name!r} is not one this loader serves; single-agent AgileRL "
            f"algorithms supported: {', '.join(ALGORITHMS.values())}. Set 'algorithm' in "
            "experiment.json to the AgileRL class name the checkpoint was saved from."
        )
    return ALGORITHMS[key]


def algorithm_classes() -> dict[str, Any]:
    """``{class name: class}`` for the served algorithms, importing AgileRL on first use."""
    with _import_lock, warnings.catch_warnings():
        # AgileRL announces a deprecation at import time; it is not ours to act on, and
        # where warnings are errors (the test suite) it would stop the import.
        warnings.filterwarnings(
            "ignore", message="MakeEvolvable will be deprecated", category=DeprecationWarning
        )
        from agilerl import algorithms

    return {name: getattr(algorithms, name) for name in ALGORITHMS.values()}


class GreedyPolicy:
    """The deterministic action rule of a loaded AgileRL agent, run on its torch networks.

    Holds only the policy network(s), never the agent, and never changes module state, so
    one instance may be called from several threads at once. The networks must already be
    in the mode to serve in (eval mode for RainbowDQN's noisy layers); :func:`load` does
    that, and training code calling it mid-run switches modes around the call.

    ``__call__`` takes numpy observations with a batch axis, already validated, and returns
    numpy actions with the batch axis. :class:`AgileRLRuntime` adds the input checks.

    ``flattened`` says whether the networks run as a flat list of layers (plain MLPs,
    checked to give exactly the network's own output) or through their own ``forward``.
    """

    flattened: bool

    def __init__(self, agent: Any) -> None:
        import torch
        from gymnasium import spaces

        classes = algorithm_classes()
        self.algorithm = type(agent).__name__
        if self.algorithm not in classes:
            raise RuntimeLoadError(
                f"{self.algorithm} agents cannot be served here; supported: "
                f"{', '.join(classes)}."
            )
        self.device = torch.device(str(agent.device))
        self.observation_space: spaces.Space = getattr(
            agent, "env_observation_space", agent.observation_space
        )
        self.action_space: spaces.Space = agent.action_space
        self._preprocess = self._make_preprocess(agent)
        self.discrete = isinstance(self.action_space, spaces.Discrete)
        if self.discrete:
            self.n_actions: int | None = int(self.action_space.n)
            self.action_dim = 1
        elif isinstance(self.action_space, spaces.Box):
            self.n_actions = None
            self.action_dim = int(np.prod(self.action_space.shape))
        else:
            raise RuntimeLoadError(
                f"This {self.algorithm} agent acts in a {type(self.action_space).__name__} "
                "action space; only Discrete and Box action spaces can be served."
            )
        self._act = self._make_act(agent)

    # -- building ---------------------------------------------------------------------------

    def _make_preprocess(self, agent: Any) -> Callable[[np.ndarray], torch.Tensor]:
        import torch
        import torch.nn.functional as F
        from gymnasium import spaces

        space = self.observation_space
        device = self.device
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            # Flat vectors: AgileRL's preprocessing is exactly a float32 tensor on the device.
            def flat(obs: np.ndarray) -> torch.Tensor:
                if (obs.dtype != np.float32 or not obs.flags.writeable
                        or not obs.flags.c_contiguous):
                    # from_numpy shares memory: it wants a writable, plainly laid out array.
                    obs = np.array(obs, dtype=np.float32, order="C")
                return torch.from_numpy(obs).to(device)

            return flat
        if isinstance(space, spaces.Box):
            # Images and other shaped boxes: reuse AgileRL's own transposing and scaling.
            from agilerl.utils.algo_utils import preprocess_observation

            agent_space = agent.observation_space
            normalize = bool(getattr(agent, "normalize_images", True))
            swap = bool(getattr(agent, "swap_channels", False))

            def shaped(obs: np.ndarray) -> torch.Tensor:
                out: torch.Tensor = preprocess_observation(
                    agent_space, observation=obs.astype(np.float32, copy=False),
                    device=device, normalize_images=normalize, swap_channels=swap,
                )
                return out

            return shaped
        if isinstance(space, spaces.Discrete):
            n = int(space.n)

            def one_hot(obs: np.ndarray) -> torch.Tensor:
                index = torch.as_tensor(obs, dtype=torch.long, device=device) - int(space.start)
                return F.one_hot(index, num_classes=n).float()

            return one_hot
        raise RuntimeLoadError(
            f"This {self.algorithm} agent observes a {type(space).__name__} space; this loader "
            "serves Box and Discrete observations only."
        )

    def _make_act(self, agent: Any) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        import torch

        forward = self._make_forward(agent)
        if self.algorithm in ("DQN", "RainbowDQN") or (self.algorithm == "PPO" and self.discrete):
            # Q-values (DQN, Rainbow) or logits (PPO): the greedy action / the mode.
            def greedy(obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
                return _masked_argmax(forward(obs), mask)

            return greedy
        if self.algorithm in ("DDPG", "TD3"):
            from agilerl.networks.actors import get_output_bounds

            # DeterministicActor.rescale_action's arithmetic, with its per-call checks done
            # once here: on the CPU in float32, like AgileRL, so results are equal.
            low = torch.as_tensor(agent.action_low, dtype=torch.float32)
            high = torch.as_tensor(agent.action_high, dtype=torch.float32)
            out_low, out_high = get_output_bounds(agent.actor.output_activation)
            bounded = not bool(low.isinf().any() or high.isinf().any())
            span, out_span = high - low, out_high - out_low

            def deterministic(obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
                raw = forward(obs).cpu()
                if not bounded:
                    return raw
                return (low + span * ((raw - out_low) / out_span)).to(low.dtype)

            return deterministic
        actor = agent.actor
        squash = bool(getattr(actor, "squash_output", False))
        low, high = actor.action_low, actor.action_high

        def mean(obs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            mu = forward(obs)
            if squash:
                scaled: torch.Tensor = actor.scale_action(torch.tanh(mu))
                return scaled
            return torch.clamp(mu, low, high)

        return mean

    def _make_forward(self, agent: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """Observation tensor -> the policy network's raw output: Q-values (DQN, Rainbow),
        logits or Gaussian mean (PPO), or the actor's bounded output (DDPG, TD3)."""
        import torch

        actor = agent.actor
        if self.algorithm == "PPO":
            if getattr(agent, "recurrent", False):
                raise RuntimeLoadError(
                    "This PPO agent is recurrent; mark the experiment recurrent=true so the "
                    "recurrent loader serves it with its hidden state."
                )
            # The head's inner network gives the logits / mean; calling it directly skips
            # EvolvableDistribution.forward, which stores the last distribution on the module
            # and so is not safe to share between threads.
            head = actor.head_net.wrapped

            def reference(obs: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = head(actor.extract_features(obs))
                return out
        else:
            head = actor.head_net
            reference = actor
        self.flattened = False
        encoder = _layers(getattr(actor, "encoder", None))
        if encoder is None:
            return reference
        if self.algorithm == "RainbowDQN":
            # The dueling distributional head has its own arithmetic; only the encoder is flat.
            def fast(obs: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = head(_run(encoder, obs))
                return out
        else:
            head_layers = _layers(head)
            if head_layers is None:
                return reference
            layers = encoder + head_layers

            def fast(obs: torch.Tensor) -> torch.Tensor:
                return _run(layers, obs)

        # The flat path must give exactly what the network's own forward gives; a network
        # built differently from what it assumes keeps the (slower) forward.
        space = self.observation_space
        space.seed(0)
        sample = np.stack([np.asarray(space.sample()) for _ in range(8)])
        with torch.inference_mode():
            obs = self._preprocess(sample)
            self.flattened = torch.equal(fast(obs), reference(obs))
        return fast if self.flattened else reference

    # -- acting -----------------------------------------------------------------------------

    def __call__(self, obs: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        """Actions for a batch of observations (and an optional 0/1 legal-action mask)."""
        import torch

        with torch.inference_mode():
            tensor = self._preprocess(obs)
            mask = (
                None if action_mask is None
                else torch.as_tensor(action_mask, device=self.device).bool()
            )
            action = self._act(tensor, mask).cpu().numpy()
        if self.discrete:
            return action.astype(np.int64, copy=False).reshape(-1)
        return action.astype(np.float32, copy=False).reshape(action.shape[0], -1)


def _layers(module: Any) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """The layers of a plain AgileRL MLP, in order, or ``None`` for any other module.

    AgileRL's wrappers around ``nn.Sequential`` cost more per call than the small matrix
    products inside them; calling each layer's ``forward`` in turn computes the same thing.
    """
    import torch
    import torch.nn.functional as F
    from agilerl.modules.mlp import EvolvableMLP

    if type(module) is not EvolvableMLP:
        return None
    model = module.model
    if not isinstance(model, torch.nn.Sequential):
        return None
    layers: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for layer in model:
        if type(layer) is torch.nn.Identity:
            continue
        if type(layer) is torch.nn.Linear:
            # Bound to the layer's own parameter tensors: what Linear.forward computes,
            # minus its attribute lookups.
            layers.append(partial(F.linear, weight=layer.weight, bias=layer.bias))
        elif type(layer) is torch.nn.ReLU and not layer.inplace:
            layers.append(torch.relu)
        elif type(layer) is torch.nn.Tanh:
            layers.append(torch.tanh)
        else:
            layers.append(layer.forward)
    return layers


def _run(layers: list[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


def _masked_argmax(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        values = values.masked_fill(~mask, float("-inf"))
    return values.argmax(dim=-1)


class AgileRLRuntime(Runtime):
    """A deployed single-agent AgileRL checkpoint answering ``get_action``."""

    def __init__(self, policy: GreedyPolicy, *, algo: str) -> None:
        self.kind = AgentKind(algo=algo)
        self.policy = policy
        self._obs_shape = tuple(int(d) for d in (policy.observation_space.shape or ()))
        self._discrete_obs = not self._obs_shape
        # A fixed sample for the health probe: drawn once, so probing never touches the
        # space's random generator from several threads.
        space = policy.observation_space
        space.seed(0)
        self._probe_obs = np.asarray(space.sample())[None, ...]

    def _check_obs(self, obs: Any) -> np.ndarray:
        space = self.policy.observation_space
        if self._discrete_obs:
            # Checked as floats first so NaN and fractions are refused, not cast to garbage.
            values = as_batch(obs, "obs", dtype=np.float64, ndim=1)
            n, start = int(space.n), int(space.start)  # type: ignore[attr-defined]
            if ((values != np.round(values)) | (values < start) | (values >= start + n)).any():
                raise RequestError(
                    "obs holds discrete observations; each must be a whole number in "
                    f"[{start}, {start + n - 1}]."
                )
            checked = values.astype(np.int64)
        else:
            checked = as_batch(obs, "obs", ndim=len(self._obs_shape) + 1)
            if tuple(checked.shape[1:]) != self._obs_shape:
                expected = ", ".join(str(d) for d in self._obs_shape)
                raise RequestError(
                    f"obs has shape {tuple(checked.shape)}; this agent expects (batch, {expected})."
                )
        if checked.shape[0] == 0:
            raise RequestError("obs has an empty batch axis; send at least one observation.")
        return checked

    def _check_mask(self, action_mask: Any, batch: int) -> np.ndarray | None:
        if action_mask is None:
            return None
        n_actions = self.policy.n_actions
        if n_actions is None:
            raise RequestError(
                "action_mask applies to discrete actions only; this agent's actions are "
                "continuous. Leave action_mask out."
            )
        mask = as_batch(action_mask, "action_mask", ndim=2)
        if mask.shape != (batch, n_actions):
            raise RequestError(
                f"action_mask has shape {mask.shape}; it must be (batch, n_actions) = "
                f"({batch}, {n_actions}), one row of 0/1 flags per observation."
            )
        if not np.isin(mask, (0, 1)).all():
            raise RequestError("action_mask may only hold 0 (illegal) and 1 (legal).")
        legal = mask.astype(bool)
        if not legal.any(axis=1).all():
            rows = np.flatnonzero(~legal.any(axis=1)).tolist()
            raise RequestError(
                f"action_mask rows {rows[:10]} allow no action; every row needs at least one 1."
            )
        return legal

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[np.ndarray, None]:
        """Greedy actions: int64 (B,) for discrete agents, float32 (B, act_dim) otherwise."""
        if hidden_state is not None:
            raise RequestError(
                f"This {self.kind.algo} agent is not recurrent and takes no hidden_state; "
                "leave hidden_state out."
            )
        if env_defined_actions is not None:
            raise RequestError(
                "env_defined_actions is for multi-agent environments; this is a single-agent "
                f"{self.kind.algo} agent. Leave env_defined_actions out."
            )
        # Values too large for float32 become inf when cast, which the checks then refuse;
        # numpy's overflow warning on the way is noise (errstate is per thread).
        with np.errstate(over="ignore", invalid="ignore"):
            checked = self._check_obs(obs)
            mask = self._check_mask(action_mask, checked.shape[0])
        return self.policy(checked, mask), None

    def probe(self) -> None:
        """Act once on a sample observation from the saved observation space."""
        actions, _ = self.get_action(self._probe_obs.copy())
        if actions.shape[0] != 1 or not np.isfinite(actions).all():
            raise RuntimeError(
                f"The policy answered the probe with {actions!r}; expected one finite action."
            )


def warm() -> None:
    """Import torch and AgileRL's algorithms now (seconds), so a later load does not wait."""
    algorithm_classes()
    import torch
    from agilerl.modules.mlp import EvolvableMLP

    # One tiny forward: torch sets up its CPU kernels on first use, which a probe would pay.
    with torch.inference_mode():
        EvolvableMLP(num_inputs=2, num_outputs=2, hidden_size=[4])(torch.zeros(1, 2))


def _read_checkpoint(path: Path) -> tuple[Any, Exception | None]:
    """What ``torch.load`` makes of a checkpoint file: ``(data, None)`` or ``(None, error)``."""
    import dill
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # only the content matters here
            return torch.load(path, map_location="cpu", pickle_module=dill,
                              weights_only=False), None
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same advice
        return None, exc


def _unreadable(exc: Exception) -> str:
    return (f"it is not a readable AgileRL checkpoint (truncated, corrupt or another kind of "
            f"file: {type(exc).__name__}: {str(exc)[:200]})")


def _library_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _describe_checkpoint(path: Path) -> str:
    """A short account of what a checkpoint file holds, for error messages."""
    data, error = _read_checkpoint(path)
    if error is not None:
        return _unreadable(error)
    if not isinstance(data, dict) or "network_info" not in data:
        return f"it holds a {type(data).__name__}, not an AgileRL agent saved with save_checkpoint"
    algo = data.get("algo")
    return f"it holds a {algo!r} agent" if algo else "it holds an AgileRL agent of unknown type"


def _load_failure(path: Path, experiment: Experiment, class_name: str,
                  load_error: Exception) -> str:
    """Why AgileRL could not load ``path``, with the one fix that fits that cause.

    A damaged file is repaired by saving it again, never by editing ``algorithm``; only a
    file that holds another algorithm's agent points at experiment.json.
    """
    head = f"Could not load {path.name} of {experiment.name!r} as an AgileRL {class_name}: "
    data, error = _read_checkpoint(path)
    # The advice comes first and the library's own words on a line of their own: the panel
    # shows the first line and folds the rest away.
    if error is not None:
        return (head + "it is not a readable AgileRL checkpoint (truncated, corrupt or another "
                "kind of file). Save that checkpoint again with agent.save_checkpoint(path) "
                "(or train the experiment again), or pick another checkpoint.\n"
                + _library_error(error))
    if not isinstance(data, dict) or "network_info" not in data:
        return (head + f"it holds a {type(data).__name__}, not an agent saved with "
                "agent.save_checkpoint(path). Save the agent that way, or pick another "
                "checkpoint.")
    algo = str(data.get("algo") or "")
    if algo and _normalise(algo) != _normalise(class_name):
        return (head + f"it holds a {algo!r} agent but the experiment says "
                f"{experiment.info.algorithm!r}. Pick a checkpoint of this experiment, or fix "
                "'algorithm' in experiment.json if the experiment was trained with " + algo + ".")
    return (head + f"the file holds {'a ' + repr(algo) if algo else 'an AgileRL'} agent, but "
            "AgileRL failed on it. Save the checkpoint again with the AgileRL version installed "
            "here, or pick another checkpoint.\n" + _library_error(load_error))


def _load_agent(cls: Any, path: Path, device: str) -> Any:
    # AgileRL warns on every PPO load (the rollout buffer is never saved) and may add
    # others; record them instead of letting a strict warnings filter fail the load.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agent = cls.load(str(path), device=device)
    for item in caught:
        log.debug("loading %s: %s", path, item.message)
    return agent


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> Runtime:
    """Load ``checkpoint`` with the AgileRL class named in ``experiment.json``.

    :class:`RuntimeLoadError` with a readable reason when the file is unreadable, holds
    another algorithm, or uses spaces this loader cannot serve.
    """
    import torch

    class_name = algorithm_class_name(experiment.info.algorithm)
    cls = algorithm_classes()[class_name]
    target = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    path = checkpoint.path
    if path.is_dir():
        raise RuntimeLoadError(
            f"{path} is a folder; AgileRL checkpoints are single files written by "
            "agent.save_checkpoint(path)."
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise RuntimeLoadError(f"{path} cannot be read: {exc.strerror or exc}.") from exc
    if size == 0:
        raise RuntimeLoadError(
            f"{path} is empty (0 bytes); the save was interrupted. Save it again with "
            "agent.save_checkpoint(path), or pick another checkpoint."
        )
    agent: Any
    try:
        agent = _load_agent(cls, path, target)
    except Exception as exc:  # AgileRL raises many types on a bad file
        raise RuntimeLoadError(_load_failure(path, experiment, class_name, exc)) from exc
    saved_algo = getattr(agent, "algo", None)
    if not isinstance(agent, cls) or _normalise(str(saved_algo)) != _normalise(class_name):
        raise RuntimeLoadError(
            f"{path.name} of {experiment.name!r} holds a {saved_algo!r} agent but the "
            f"experiment says {experiment.info.algorithm!r}; pick a checkpoint of this "
            "experiment, or fix 'algorithm' in experiment.json."
        )
    try:
        for network in agent.evolvable_attributes(networks_only=True).values():
            network.eval()
        policy = GreedyPolicy(agent)
    except RuntimeLoadError:
        raise
    except Exception as exc:  # surfaced as the agent's failure reason
        raise RuntimeLoadError(
            f"{path.name} of {experiment.name!r} loaded but its policy cannot be served: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return AgileRLRuntime(policy, algo=class_name)
