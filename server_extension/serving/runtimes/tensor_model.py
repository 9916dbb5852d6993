"""What every "bring your own tensor model" loader shares: inputs checked against a signature,
outputs as arrays, and the Classic RL action rule.

A backend (TorchScript, torch.export, ONNX, a torch ``nn.Module``) supplies one function
``call(arrays) -> outputs`` taking the model's inputs in order as numpy arrays, plus what it
knows of the inputs (:class:`InputSpec`: name, shape with ``None`` for free axes, dtype).
:class:`TensorModelRuntime` then serves

- ``predict`` (Advanced tab, ``project_type="advanced"``): inputs of any shape and dtype; one
  array for a one-input model, a dict by input name (or a list in order) for several; answers
  the model's outputs as arrays (a dict by output name when there are several);
- ``get_action`` (Classic tab, ``project_type="classic"`` with an environment): the
  observation in, the first output read as an action: argmax over a discrete space's logits or
  Q-values (legal actions only when ``action_mask`` is given), clipped to a continuous space's
  bounds.

Nothing here imports torch, so the ONNX loader runs in a worker without it.

The signature lives in ``experiment.json``'s ``extra``, written at import::

    inputs        [{"name": "x", "shape": [null, 4], "dtype": "float32"}, ...]  (optional where
                  the file has its own: ONNX, torch.export)
    class_names   labels of the output's last axis, for people (optional)
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
from workbench_core.store import Experiment

Call = Callable[[list[np.ndarray]], Any]


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (``None`` for a free axis, the batch axis included)
    and numpy dtype name; ``shape``/``dtype`` ``None`` when unknown."""

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The form ``extra["inputs"]`` holds."""
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "dtype": self.dtype}

    def sample(self) -> np.ndarray:
        """A one-row array this input takes (free axes as 1), for the health probe."""
        shape = tuple(1 if d is None else int(d) for d in (self.shape or (1,)))
        return np.zeros(shape, dtype=np.dtype(self.dtype or "float32"))


def inputs_from_extra(experiment: Experiment) -> list[InputSpec] | None:
    """The input signature given at import (``extra["inputs"]``), or ``None``."""
    raw = experiment.info.extra.get("inputs")
    if raw is None:
        return None
    try:
        specs = []
        for i, item in enumerate(raw):
            shape = item.get("shape")
            dtype = item.get("dtype")
            if dtype is not None:
                np.dtype(str(dtype))
            specs.append(InputSpec(
                name=str(item.get("name") or f"input_{i}"),
                shape=None if shape is None else tuple(None if d is None else int(d)
                                                       for d in shape),
                dtype=None if dtype is None else str(dtype)))
    except (AttributeError, TypeError, ValueError) as exc:
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r}: extra['inputs'] must be a list of "
            '{"name": str, "shape": [null or int, ...], "dtype": "float32"} '
            f"({type(exc).__name__}: {exc})."
        ) from exc
    return specs


def _check(value: Any, spec: InputSpec, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{what} must be an array, got {type(value).__name__}.")
    if value.dtype.kind not in "biuf":
        raise RequestError(f"{what} has dtype {value.dtype}; send a numeric array.")
    if spec.shape is not None and (value.ndim != len(spec.shape) or any(
            want is not None and have != want
            for have, want in zip(value.shape, spec.shape, strict=True))):
        wanted = "(" + ", ".join("any" if d is None else str(d) for d in spec.shape) + ")"
        raise RequestError(
            f"{what} has shape {value.shape}; the model's input {spec.name!r} takes "
            f"{wanted}, the first axis being the batch.")
    if spec.dtype is not None:
        want = np.dtype(spec.dtype)
        if want.kind in "biu" and value.dtype.kind == "f":
            raise RequestError(
                f"{what} has dtype {value.dtype}; the model's input {spec.name!r} takes "
                f"{want} (integers).")
        value = value.astype(want, copy=False)
    elif value.dtype == np.float64:
        # Torch and ONNX models are float32 nearly always; numpy's default is float64.
        value = value.astype(np.float32)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise RequestError(f"{what} contains NaN or infinity; send finite numbers.")
    return value


def _as_outputs(raw: Any, names: Sequence[str] | None) -> Any:
    """One array, or a dict by output name (``output_<i>`` when unnamed)."""
    if isinstance(raw, Mapping):
        return {str(k): np.asarray(v) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        if len(raw) == 1:
            return np.asarray(raw[0])
        labels = list(names) if names and len(names) == len(raw) else [
            f"output_{i}" for i in range(len(raw))]
        return {label: np.asarray(v) for label, v in zip(labels, raw, strict=True)}
    return np.asarray(raw)


def _first(outputs: Any) -> np.ndarray:
    if isinstance(outputs, dict):
        return np.asarray(next(iter(outputs.values())))
    return np.asarray(outputs)


class TensorModelRuntime(Runtime):
    """A tensor model served as ``predict`` (Advanced) or ``get_action`` (Classic)."""

    def __init__(self, call: Call, *, algo: str, inputs: list[InputSpec] | None,
                 output_names: Sequence[str] | None = None, classic: bool = False,
                 observation_space: Any = None, action_space: Any = None,
                 class_names: Sequence[str] | None = None) -> None:
        self._call = call
        self.inputs = inputs
        self.output_names = list(output_names or [])
        self.class_names = list(class_names or [])
        self.observation_space = observation_space
        self.action_space = action_space
        self.classic = classic
        self.kind = AgentKind(algo=algo, supervised=not classic)
        if classic:
            self._discrete_n, self._box = _action_rule(action_space)

    # -- inputs -----------------------------------------------------------------------------

    def _ordered(self, inputs: Any, what: str) -> list[np.ndarray]:
        specs = self.inputs
        if isinstance(inputs, Mapping):
            if specs is None:
                raise RequestError(
                    f"{what} is a dict, but this model's input names are unknown; send one "
                    "array, or a list in the model's argument order (or give the input "
                    "signature at import).")
            names = [s.name for s in specs]
            if set(inputs) != set(names):
                raise RequestError(
                    f"{what} has keys {sorted(inputs)}; this model takes {names}.")
            values = [inputs[n] for n in names]
        elif isinstance(inputs, (list, tuple)):
            values = list(inputs)
        else:
            values = [inputs]
        if specs is None:
            specs = [InputSpec(f"input_{i}") for i in range(len(values))]
        if len(values) != len(specs):
            raise RequestError(
                f"{what} holds {len(values)} array(s); this model takes {len(specs)}: "
                f"{[s.name for s in specs]} (a dict by name or a list in that order).")
        out = [_check(v, s, f"{what}[{s.name!r}]" if len(specs) > 1 else what)
               for v, s in zip(values, specs, strict=True)]
        rows = {int(a.shape[0]) if a.ndim else 1 for a in out}
        if len(rows) > 1:
            raise RequestError(f"{what}: every input needs the same batch size, got {rows}.")
        return out

    def _run(self, arrays: list[np.ndarray]) -> Any:
        try:
            raw = self._call(arrays)
        except RequestError:
            raise
        except Exception as exc:
            # A shape or dtype the model's own code refuses is the caller's to fix.
            shapes = ", ".join(f"{a.shape} {a.dtype}" for a in arrays)
            raise RequestError(
                f"The model could not run on inputs {shapes}: {type(exc).__name__}: "
                f"{str(exc).strip()[:500]}") from exc
        return _as_outputs(raw, self.output_names)

    # -- routes -----------------------------------------------------------------------------

    def predict(self, inputs: Any) -> Any:
        """The model's outputs for a batch of inputs (see the module's docstring)."""
        if self.classic:
            raise self._wrong_route("predict")
        return self._run(self._ordered(inputs, "inputs"))

    def get_action(self, obs: Any, *, hidden_state: Any = None, action_mask: Any = None,
                   env_defined_actions: Any = None) -> tuple[np.ndarray, None]:
        """The deterministic action per observation row (argmax or clipped output)."""
        if not self.classic:
            raise self._wrong_route("get_action")
        arrays = self._ordered(obs, "obs")
        out = _first(self._run(arrays))
        batch = int(arrays[0].shape[0]) if arrays[0].ndim else 1
        if self._discrete_n is not None:
            return _discrete(out, self._discrete_n, batch, action_mask), None
        low, high, shape = self._box  # type: ignore[misc]
        if out.size != batch * int(np.prod(shape)):
            raise RequestError(
                f"The model answered shape {out.shape} for {batch} observation(s); the action "
                f"space takes {shape} per row.")
        return np.clip(out.reshape(batch, *shape).astype(np.float32), low, high), None

    def probe(self) -> None:
        """Run one sample row: from the input signature, else the observation space."""
        if self.inputs is not None and all(s.shape is not None for s in self.inputs):
            sample: Any = [s.sample() for s in self.inputs]
        elif self.observation_space is not None and hasattr(self.observation_space, "shape"):
            space = self.observation_space
            sample = [np.asarray(space.sample())[None, ...]]
        else:
            return  # nothing says what this model takes; the first call will tell
        if self.classic:
            self.get_action(sample if len(sample) > 1 else sample[0])
        else:
            self.predict(sample if len(sample) > 1 else sample[0])


def _action_rule(space: Any) -> tuple[int | None, tuple[np.ndarray, np.ndarray,
                                                          tuple[int, ...]] | None]:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return int(space.n), None
    if isinstance(space, spaces.Box):
        return None, (np.asarray(space.low, np.float32), np.asarray(space.high, np.float32),
                      tuple(int(d) for d in space.shape))
    raise RuntimeLoadError(
        f"A torch/ONNX policy can act in a Discrete or Box action space; the environment's "
        f"is {space!r}.")


def _discrete(out: np.ndarray, n: int, batch: int, action_mask: Any) -> np.ndarray:
    if out.ndim == 2 and out.shape == (batch, n):
        scores = out.astype(np.float64)
        if action_mask is not None:
            if not isinstance(action_mask, np.ndarray) or action_mask.shape != (batch, n):
                raise RequestError(
                    f"action_mask must be an array of shape ({batch}, {n}) (1 = legal).")
            legal = action_mask.astype(bool)
            if not legal.any(axis=1).all():
                raise RequestError("action_mask leaves a row with no legal action.")
            scores = np.where(legal, scores, -np.inf)
        return np.asarray(scores.argmax(axis=1), dtype=np.int64)
    if out.dtype.kind in "iu" and out.size == batch:
        return out.reshape(batch).astype(np.int64)
    raise RequestError(
        f"The model answered shape {out.shape} {out.dtype} for {batch} observation(s); a "
        f"policy for {n} discrete actions must answer ({batch}, {n}) scores or ({batch},) "
        "integer actions.")


def environment_spaces(experiment: Experiment) -> tuple[Any, Any]:
    """(observation space, action space) of a Classic experiment's environment."""
    from workbench_core.environments import env_spec, make_env

    try:
        env = make_env(env_spec(experiment.info.environment, experiment.info.extra))
    except Exception as exc:
        raise RuntimeLoadError(
            f"Experiment {experiment.name!r} is a Classic policy, which needs its environment "
            f"to know the action space; {experiment.info.environment!r} could not be built: "
            f"{exc}. Import it with --env <gymnasium id>, or as Advanced (predict)."
        ) from exc
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def build_runtime(experiment: Experiment, call: Call, *, inputs: list[InputSpec] | None,
                  output_names: Sequence[str] | None = None) -> TensorModelRuntime:
    """The runtime for ``experiment``: Classic (get_action) when its project type says so."""
    classic = experiment.info.project_type == "classic"
    obs_space = act_space = None
    if classic:
        obs_space, act_space = environment_spaces(experiment)
    classes = experiment.info.extra.get("class_names")
    return TensorModelRuntime(
        call, algo=experiment.info.algorithm, inputs=inputs, output_names=output_names,
        classic=classic, observation_space=obs_space, action_space=act_space,
        class_names=[str(c) for c in classes] if isinstance(classes, list) else None)




# -- what the import modules of these formats share ---------------------------------------

_STEP_RE = re.compile(r"(\d+)(?!.*\d)")


def zip_members(path: Path) -> list[str]:
    """The member names of a zip file, ``[]`` when ``path`` is not one (never extracts)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return []


def detect_files(path: Path, framework: str, claims: Callable[[Path], bool]) -> Detected | None:
    """A file ``claims`` accepts (step 0), or a folder of them (steps from the last number in
    each name, else their order): the shared ``detect`` of the single-file formats."""
    path = Path(path)
    if path.is_file():
        return Detected(framework, [(0, str(path))]) if claims(path) else None
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and claims(p))
    if not files:
        return None
    numbered = [(_STEP_RE.search(p.stem), p) for p in files]
    if all(m is not None for m, _ in numbered) and len({m.group(1) for m, _ in numbered
                                                        if m}) == len(files):
        pairs = sorted((int(m.group(1)), str(p)) for m, p in numbered if m)
    else:
        pairs = [(i, str(p)) for i, p in enumerate(files)]
    return Detected(framework, pairs)


# Import options every tensor format reads (``ImportHints.options``).
COMMON_OPTIONS = ("inputs", "class_names", "project_type")


def describe_tensor_model(detected: Detected, hints: ImportHints, *, algorithm: str,
                          inputs: list[InputSpec] | None, allowed: Sequence[str] = (),
                          extra: Mapping[str, Any] | None = None) -> Description:
    """The :class:`Description` of a tensor model: Classic when an environment is given (or
    ``project_type`` says so), else Advanced; signature and class names into ``extra``."""
    options = dict(hints.options)
    unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for a {detected.framework} model; it takes "
            f"{sorted({*COMMON_OPTIONS, *allowed})}.")
    project_type = str(options.get("project_type") or ("classic" if hints.env else "advanced"))
    if project_type not in ("classic", "advanced"):
        raise ValueError(f"project_type must be 'classic' or 'advanced', not {project_type!r}.")
    out: dict[str, Any] = dict(extra or {})
    given = options.get("inputs")
    if given is not None:
        out["inputs"] = list(given)
    elif inputs is not None:
        out["inputs"] = [spec.to_json() for spec in inputs]
    if options.get("class_names") is not None:
        out["class_names"] = [str(c) for c in options["class_names"]]
    if project_type == "classic" and hints.env:
        # The file says nothing of spaces: the environment's are what the import checks
        # against, and its probe then feeds the model one of its observations.
        out["spaces"] = _environment_spaces_json(hints)
    needs = []
    if project_type == "classic" and not hints.env:
        needs.append("env: a Classic policy needs the environment it acts in (a Gymnasium id)")
    warnings = []
    if out.get("inputs") is None and project_type == "advanced":
        warnings.append(
            "The file does not record its input signature; pass inputs=[{name, shape, dtype}] "
            "so callers are told what to send.")
    return Description(framework=detected.framework, algorithm=algorithm,
                       project_type=project_type, environment=hints.env, extra=out,
                       needs=needs, warnings=warnings)


def _environment_spaces_json(hints: ImportHints) -> dict[str, Any]:
    from server_extension.serving.importing.spaces import environment_spaces, recipe, space_json

    spec = recipe(str(hints.env), dict(hints.env_kwargs), multi_agent=False)
    return {aid: {"observation": space_json(obs), "action": space_json(act)}
            for aid, (obs, act) in environment_spaces(spec).items()}


__all__ = ["COMMON_OPTIONS", "InputSpec", "TensorModelRuntime", "build_runtime",
           "describe_tensor_model", "detect_files", "environment_spaces", "inputs_from_extra",
           "zip_members"]
