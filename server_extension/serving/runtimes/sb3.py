"""Serve Stable-Baselines3 and sb3-contrib policies, framework ``"sb3"``.

A checkpoint is the ``.zip`` ``model.save(path)`` writes (members ``data``, a JSON, and
``policy.pth``); CheckpointCallback's ``<prefix>_<steps>_steps.zip`` files in one folder are one
experiment with a checkpoint per step. Served algorithms (``algorithm`` in experiment.json):

    PPO, A2C, DQN, SAC, TD3, DDPG                      (stable-baselines3)
    RecurrentPPO, MaskablePPO, QRDQN, TQC, TRPO, ARS   (sb3-contrib)

``get_action`` answers what the library's ``model.predict(obs, deterministic=True)`` answers,
through the policy's own ``predict``: single and batched observations, Dict observation spaces
(``obs`` a dict by key), MaskablePPO's ``action_mask`` (the client sends ``info["action_mask"]``),
and RecurrentPPO's LSTM state on the wire as ``hidden_state = {"h": (B, layers, size), "c":
(B, layers, size)}`` (null on an episode's first step: zeros and an episode start, as SB3 does).

VecNormalize: a policy trained inside ``VecNormalize`` acts on normalised observations. Its
statistics (``vec_env.save("vecnormalize.pkl")``, or CheckpointCallback's
``<prefix>_vecnormalize_<steps>_steps.pkl``) sit in the experiment as
``vecnormalize/step_<N>.pkl`` (per checkpoint) or ``vecnormalize.pkl`` (for all), and each
observation is normalised with them exactly as ``VecNormalize.normalize_obs`` does in training.
A zip whose saved state shows it was trained normalised (``_last_original_obs`` is recorded
only under VecNormalize) and that comes without statistics is served with a warning.

SB3 zips hold pickles (the policy class, schedules): they are loaded in the worker only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import pickle
import pickletools
import re
import zipfile
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
from server_extension.serving.runtimes.detection import Description, Detected, ImportHints
from workbench_core.store import Checkpoint, Experiment

log = logging.getLogger(__name__)

FRAMEWORK = "sb3"
OPTIONS = ("algorithm", "vecnormalize")

# algorithm -> (module, class)
ALGORITHMS: dict[str, tuple[str, str]] = {
    "PPO": ("stable_baselines3", "PPO"),
    "A2C": ("stable_baselines3", "A2C"),
    "DQN": ("stable_baselines3", "DQN"),
    "SAC": ("stable_baselines3", "SAC"),
    "TD3": ("stable_baselines3", "TD3"),
    "DDPG": ("stable_baselines3", "DDPG"),
    "RecurrentPPO": ("sb3_contrib", "RecurrentPPO"),
    "MaskablePPO": ("sb3_contrib", "MaskablePPO"),
    "QRDQN": ("sb3_contrib", "QRDQN"),
    "TQC": ("sb3_contrib", "TQC"),
    "TRPO": ("sb3_contrib", "TRPO"),
    "ARS": ("sb3_contrib", "ARS"),
}
_CALLBACK_RE = re.compile(r"^(?P<prefix>.*)_(?P<steps>\d+)_steps\.zip$")
_VECNORM_RE = re.compile(r"^(?P<prefix>.*)_vecnormalize_(?P<steps>\d+)_steps\.pkl$")
# Entries the zip's pickled schedules are replaced by: serving never trains, and a schedule
# pickled by another Python cannot always be read back.
_CUSTOM_OBJECTS = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0,
                   "clip_range": lambda _: 0.0, "clip_range_vf": None}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).upper() if ch not in " -_")


def algorithm_name(name: str) -> str:
    """The canonical spelling of an SB3 algorithm; :class:`RuntimeLoadError` if unserved."""
    for known in ALGORITHMS:
        if _key(known) == _key(name):
            return known
    raise RuntimeLoadError(
        f"Algorithm {name!r} is not a Stable-Baselines3 algorithm the workbench serves; "
        f"served: {', '.join(ALGORITHMS)}.")


# -- detect (cheap; never unpickles) ---------------------------------------------------------

def read_data(path: Path) -> dict[str, Any] | None:
    """The JSON ``data`` member of an SB3 zip, ``None`` when ``path`` is no SB3 zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "data" not in names or not ({"policy.pth", "_stable_baselines3_version"}
                                           & names):
                return None
            data = json.loads(archive.read("data"))
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    return data if isinstance(data, dict) else None


def _policy_class(data: Mapping[str, Any]) -> tuple[str, str]:
    """(module, class name) of the saved policy class, read from its pickle's opcodes."""
    entry = data.get("policy_class")
    if not isinstance(entry, Mapping):
        return "", ""
    module = str(entry.get("__module__") or "")
    name = ""
    try:
        raw = base64.b64decode(str(entry.get(":serialized:") or ""))
        strings = [str(a) for op, a, _ in pickletools.genops(raw) if isinstance(a, str)]
        if module in strings and strings.index(module) + 1 < len(strings):
            name = strings[strings.index(module) + 1]
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        name = ""
    return module, name


# policy class module part -> algorithm, for the modules one algorithm owns
_POLICY_MODULES = (("common.recurrent", "RecurrentPPO"), ("common.maskable", "MaskablePPO"),
                   (".qrdqn.", "QRDQN"), (".tqc.", "TQC"), (".ars.", "ARS"), (".dqn.", "DQN"),
                   (".sac.", "SAC"))


def guess_algorithm(data: Mapping[str, Any]) -> str | None:
    """The algorithm a zip's ``data`` points to (policy module and the saved settings)."""
    module, _ = _policy_class(data)
    owner = next((algo for part, algo in _POLICY_MODULES if part in module), None)
    if owner is None and ".td3." in module:
        # DDPG is TD3 with one policy update per critic update and no target noise.
        ddpg = data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0.0
        owner = "DDPG" if ddpg else "TD3"
    if owner is None and module.endswith("common.policies"):
        # PPO, A2C and TRPO share ActorCriticPolicy; their saved settings differ.
        owner = "TRPO" if "cg_max_steps" in data else "PPO" if "clip_range" in data else "A2C"
    return owner


def trained_normalised(data: Mapping[str, Any]) -> bool:
    """Whether the run used VecNormalize: SB3 records ``_last_original_obs`` only then."""
    return data.get("_last_original_obs") is not None


def detect(path: Path) -> Detected | None:
    """An SB3 zip, or a folder of CheckpointCallback zips (with their VecNormalize files)."""
    path = Path(path)
    if path.is_file():
        data = read_data(path)
        if data is None:
            return None
        match = _CALLBACK_RE.match(path.name)
        step = int(match["steps"]) if match else int(data.get("num_timesteps") or 0)
        beside = path.parent / "vecnormalize.pkl"
        vecnorm = {str(step): str(beside)} if beside.is_file() else {}
        return Detected(FRAMEWORK, [(step, str(path))], _facts(data, vecnorm))
    if not path.is_dir():
        return None
    zips = {int(m["steps"]): p for p in path.iterdir()
            if (m := _CALLBACK_RE.match(p.name)) and p.is_file()}
    if not zips:
        return None
    stats = {str(int(m["steps"])): str(p) for p in path.iterdir()
             if (m := _VECNORM_RE.match(p.name))}
    if not stats and (path / "vecnormalize.pkl").is_file():
        stats = {str(s): str(path / "vecnormalize.pkl") for s in zips}
    last = read_data(zips[max(zips)]) or {}
    return Detected(FRAMEWORK, sorted((s, str(p)) for s, p in zips.items()),
                    _facts(last, stats))


def _facts(data: Mapping[str, Any], vecnorm: dict[str, str]) -> dict[str, Any]:
    return {"algorithm": guess_algorithm(data), "trained_normalised": trained_normalised(data),
            "vecnormalize": vecnorm}


def extra_files(detected: Detected, hints: ImportHints) -> dict[str, str]:
    """Files the import copies into the experiment besides the checkpoints:
    ``{relative destination: source}`` (the VecNormalize statistics, per step)."""
    given = hints.options.get("vecnormalize")
    if given:
        return {"vecnormalize.pkl": str(given)}
    stats: dict[str, str] = dict(detected.facts.get("vecnormalize") or {})
    return {f"vecnormalize/step_{int(step)}.pkl": src for step, src in stats.items()}


# -- describe (worker) -----------------------------------------------------------------------

def describe(detected: Detected, hints: ImportHints) -> Description:
    """Load the last zip (in a worker) and report algorithm and spaces."""
    from server_extension.serving.importing.spaces import space_json

    unknown = sorted(set(hints.options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for an SB3 model; it takes {OPTIONS}.")
    path = detected.paths[-1]
    algo = algorithm_name(str(hints.options.get("algorithm") or detected.facts.get("algorithm")
                              or _missing_algorithm(path)))
    model = load_model(path, algo, "cpu")
    warnings = []
    stats = extra_files(detected, hints)
    if detected.facts.get("trained_normalised") and not stats:
        warnings.append(_UNNORMALISED)
    if stats:
        # Read the statistics now, so a wrong file is refused at import, not at Connect.
        for src in stats.values():
            _check_stats(read_vecnormalize(Path(src)), model.observation_space)
    needs = [] if hints.env else [
        "env: the Gymnasium id this policy acts in (for the episode player and evaluation)"]
    return Description(
        framework=FRAMEWORK, algorithm=algo, project_type="classic",
        recurrent=algo == "RecurrentPPO", observation_space=repr(model.observation_space),
        action_space=repr(model.action_space), environment=hints.env,
        extra={"vecnormalize": bool(stats), "spaces": {"agent": {
            "observation": space_json(model.observation_space),
            "action": space_json(model.action_space)}}},
        needs=needs, warnings=warnings)


_UNNORMALISED = (
    "This policy was trained inside VecNormalize, and no statistics were given: it will act "
    "on raw observations, not the normalised ones it learnt from, and act wrongly. Import the "
    "statistics with it: vec_env.save('vecnormalize.pkl') beside the zip, or --option "
    "vecnormalize=FILE.")


def _missing_algorithm(path: Path) -> str:
    raise RuntimeLoadError(
        f"{path.name} does not say which SB3 algorithm saved it; give algorithm= one of "
        f"{', '.join(ALGORITHMS)}.")


# -- load ------------------------------------------------------------------------------------

def load_model(path: Path, algorithm: str, device: str) -> Any:
    """``<Algorithm>.load(path)``; :class:`RuntimeLoadError` saying what is wrong with the zip."""
    import importlib

    if not path.is_file():
        raise RuntimeLoadError(f"{path} is not a file; an SB3 checkpoint is the .zip "
                               "model.save() writes.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise RuntimeLoadError(f"{path.name} is not a zip file ({exc}); an SB3 checkpoint is "
                               "the .zip model.save() writes.") from exc
    missing = [m for m in ("data", "policy.pth") if m not in members]
    if missing:
        raise RuntimeLoadError(
            f"{path.name} lacks {', '.join(missing)} (it has {sorted(members)}): it is not a "
            "whole SB3 save. Save the model again with model.save(path).")
    module_name, class_name = ALGORITHMS[algorithm_name(algorithm)]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise RuntimeLoadError(f"{algorithm} needs {module_name}: pip install "
                               f"{module_name.replace('_', '-')} ({exc}).") from exc
    try:
        return cls.load(str(path), device=device, custom_objects=_CUSTOM_OBJECTS)
    except Exception as exc:
        raise RuntimeLoadError(
            f"{path.name} could not be loaded as {algorithm} ({type(exc).__name__}: "
            f"{str(exc).strip()[:400]}). Check the algorithm: the zip's policy is "
            f"{'.'.join(_policy_class(read_data(path) or {}))}.") from exc


def read_vecnormalize(path: Path) -> Any:
    """The VecNormalize object saved at ``path`` (its statistics; no environment attached)."""
    from stable_baselines3.common.vec_env import VecNormalize

    try:
        with path.open("rb") as handle:
            stats = pickle.load(handle)  # noqa: S301 - in the worker, as SB3's own load does
    except Exception as exc:
        raise RuntimeLoadError(f"{path} could not be read as VecNormalize statistics "
                               f"({type(exc).__name__}: {exc}).") from exc
    if not isinstance(stats, VecNormalize):
        raise RuntimeLoadError(f"{path} holds a {type(stats).__name__}, not the VecNormalize "
                               "that vec_env.save(path) writes.")
    return stats


def _check_stats(stats: Any, space: Any) -> None:
    if stats.observation_space != space:
        raise RuntimeLoadError(
            f"The VecNormalize statistics are for observations {stats.observation_space}, "
            f"but the policy observes {space}: they belong to another run.")


def _stats_file(experiment: Experiment, step: int) -> Path | None:
    for candidate in (experiment.folder / "vecnormalize" / f"step_{step}.pkl",
                      experiment.folder / "vecnormalize.pkl"):
        if candidate.is_file():
            return candidate
    return None


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> SB3Runtime:
    """Load ``checkpoint`` with its algorithm's ``load`` and its VecNormalize statistics."""
    import torch

    target = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    algo = algorithm_name(experiment.info.algorithm)
    model = load_model(checkpoint.path, algo, target)
    stats_path = _stats_file(experiment, checkpoint.step)
    stats = None
    if stats_path is not None:
        stats = read_vecnormalize(stats_path)
        _check_stats(stats, model.observation_space)
    elif trained_normalised(read_data(checkpoint.path) or {}):
        log.warning("%s: %s", experiment.name, _UNNORMALISED)
    return SB3Runtime(model, algo, stats)


class SB3Runtime(Runtime):
    """A loaded SB3 policy answering deterministic actions (see the module's docstring)."""

    def __init__(self, model: Any, algorithm: str, vecnormalize: Any = None) -> None:
        self.policy = model.policy
        self.policy.set_training_mode(False)
        self.observation_space = model.observation_space
        self.action_space = model.action_space
        self.vecnormalize = vecnormalize
        self.recurrent = algorithm == "RecurrentPPO"
        self.maskable = algorithm == "MaskablePPO"
        self.kind = AgentKind(algo=algorithm, recurrent=self.recurrent)
        if self.recurrent:
            lstm = self.policy.lstm_actor
            self.state_shape = (int(lstm.num_layers), int(lstm.hidden_size))

    def _observation(self, obs: Any) -> tuple[Any, int]:
        from gymnasium import spaces

        space = self.observation_space
        if isinstance(space, spaces.Dict):
            if not isinstance(obs, Mapping) or set(obs) != set(space.spaces):
                raise RequestError(
                    f"obs must be a dict with keys {sorted(space.spaces)} (this policy "
                    "observes a Dict space), each a batch of that key's observations.")
            parts = {k: _check_part(obs[k], sub, f"obs[{k!r}]")
                     for k, sub in space.spaces.items()}
            batches = {int(v.shape[0]) for v in parts.values()}
            if len(batches) != 1:
                raise RequestError(f"obs: every key needs the same batch size, got {batches}.")
            return parts, batches.pop()
        if isinstance(obs, Mapping):
            raise RequestError(f"obs must be an array of shape (batch, {space.shape}), not a "
                               "dict.")
        arr = _check_part(obs, space, "obs")
        return arr, int(arr.shape[0])

    def get_action(self, obs: Any, *, hidden_state: Any = None, action_mask: Any = None,
                   env_defined_actions: Any = None) -> tuple[np.ndarray, Any]:
        """The deterministic action per row (and the next LSTM state for RecurrentPPO)."""
        observation, batch = self._observation(obs)
        if self.vecnormalize is not None:
            observation = self.vecnormalize.normalize_obs(observation)
        kwargs: dict[str, Any] = {"deterministic": True}
        if self.maskable and action_mask is not None:
            kwargs["action_masks"] = self._mask(action_mask, batch)
        elif action_mask is not None:
            raise RequestError(f"This {self.kind.algo} policy takes no action_mask; only "
                               "MaskablePPO does.")
        if self.recurrent:
            kwargs["state"] = self._state_in(hidden_state, batch)
            kwargs["episode_start"] = np.full(batch, hidden_state is None, dtype=bool)
        try:
            action, state = self.policy.predict(observation, **kwargs)
        except ValueError as exc:
            raise RequestError(f"The policy refused the observation: {exc}") from exc
        if not self.recurrent:
            return np.asarray(action), None
        h, c = state
        return np.asarray(action), {"h": np.transpose(h, (1, 0, 2)).astype(np.float32),
                                    "c": np.transpose(c, (1, 0, 2)).astype(np.float32)}

    def _mask(self, mask: Any, batch: int) -> np.ndarray:
        n = int(np.sum(getattr(self.action_space, "nvec", [getattr(self.action_space, "n",
                                                                       0)])))
        if not isinstance(mask, np.ndarray) or mask.shape != (batch, n):
            got = mask.shape if isinstance(mask, np.ndarray) else type(mask).__name__
            raise RequestError(f"action_mask must be an array of shape ({batch}, {n}) "
                               f"(1 = legal), got {got}.")
        legal = mask.astype(bool)
        if not legal.any(axis=1).all():
            raise RequestError("action_mask leaves a row with no legal action.")
        return legal

    def _state_in(self, hidden_state: Any, batch: int) -> tuple[np.ndarray, np.ndarray] | None:
        if hidden_state is None:
            return None
        layers, size = self.state_shape
        want = (batch, layers, size)
        if not isinstance(hidden_state, Mapping) or set(hidden_state) != {"h", "c"}:
            raise RequestError(
                f"hidden_state must be {{'h': {want}, 'c': {want}}} (send back the previous "
                "answer's hidden_state), or null on an episode's first step.")
        out = []
        for key in ("h", "c"):
            value = hidden_state[key]
            if not isinstance(value, np.ndarray) or value.shape != want or \
                    value.dtype.kind not in "biuf" or not np.isfinite(value).all():
                raise RequestError(
                    f"hidden_state[{key!r}] must be a finite array of shape {want} (batch, "
                    "layers, size): send back the previous answer's hidden_state unchanged.")
            out.append(np.ascontiguousarray(np.transpose(value, (1, 0, 2)), dtype=np.float32))
        return out[0], out[1]

    def probe(self) -> None:
        """Act on one observation sampled from the policy's own space."""
        sample = self.observation_space.sample()
        if isinstance(sample, Mapping):
            obs: Any = {k: np.asarray(v)[None, ...] for k, v in sample.items()}
        else:
            obs = np.asarray(sample)[None, ...]
        self.get_action(obs)


def _check_part(value: Any, space: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise RequestError(f"{what} must be a numeric array with a leading batch axis.")
    shape = tuple(space.shape or ())
    # SB3 trains image policies on channel-first frames (VecTransposeImage) and its predict
    # transposes the environment's channel-last ones itself: both are what the policy takes.
    channel_last = (shape[1], shape[2], shape[0]) if len(shape) == 3 else None
    if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) not in (shape, channel_last):
        raise RequestError(
            f"{what} has shape {value.shape}; expected (batch, {', '.join(map(str, shape))})"
            if shape else f"{what} has shape {value.shape}; expected (batch,).")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise RequestError(f"{what} contains NaN or infinity; send finite numbers.")
    return value


def warm() -> None:
    """Import torch and Stable-Baselines3 ahead of the first load."""
    import stable_baselines3  # noqa: F401

    with contextlib.suppress(ImportError):
        import sb3_contrib  # noqa: F401
