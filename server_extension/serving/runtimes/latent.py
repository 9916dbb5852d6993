"""Serve LatentPPO: a PPO policy that acts in a latent space, decoded by a saved model.

A LatentPPO experiment (framework ``"latent_ppo"``, project type ``"advanced"``) holds the
checkpoints of an AgileRL PPO policy whose continuous action is a *latent* vector. The latent
is turned into the agent's answer by a *decoder*: a saved Advanced Training model (a
framework ``"torch"`` experiment, served by :mod:`.supervised`) whose input width equals the
latent size. ``predict`` answers ``decoder(policy(inputs))`` with the policy's deterministic
action (the squashed Gaussian mean, as :class:`.agilerl.GreedyPolicy` serves PPO).

``experiment.json`` ``extra`` records::

    decoder               {"experiment": name, "step": N}: the decoder it was trained with
    latent_size           width of the policy's action, which is the decoder's input width
    latent_columns        the decoder's input columns (the latent's components), in order
    observation_columns   names of the policy's inputs: what ``predict`` takes, in order
    output_columns        names of the decoder's outputs: what ``predict`` answers

The decoder an agent uses is the deployment option ``decoder`` (see
``server_extension/serving/options.py``) when given, else the one recorded at training time. Options
name a decoder as an experiment (its best checkpoint), ``{"experiment": name, "checkpoint":
"best" | "final" | step}`` or ``{"experiment": name, "step": N}``; :func:`resolve_decoder`
checks it exists and fits, and pins it to one step.

AgileRL checkpoints are pickles: only serve LatentPPO experiments from a trusted workspace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server_extension.serving.runtimes.base import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
    as_batch,
)
from workbench_core.store import Checkpoint, Experiment, ExperimentStore, StoreError

if TYPE_CHECKING:
    from server_extension.serving.runtimes.agilerl import GreedyPolicy
    from server_extension.serving.runtimes.supervised import SupervisedRuntime

FRAMEWORK = "latent_ppo"
ALGORITHM = "LatentPPO"
# Frameworks whose saved models can decode a latent: the supervised torch MLPs.
DECODER_FRAMEWORKS: tuple[str, ...] = ("torch",)


class DecoderError(ValueError):
    """A decoder choice that cannot be used; the message says why and what to pick instead."""


@dataclass(frozen=True)
class DecoderRef:
    """One saved decoder: an Advanced Training experiment and one of its checkpoint steps."""

    experiment: str
    step: int

    def to_json(self) -> dict[str, Any]:
        """The shape stored in options and in ``experiment.json``."""
        return {"experiment": self.experiment, "step": self.step}


def to_latent(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map a policy action in [-1, 1] linearly onto the latent box ``[low, high]``.

    The policy acts in [-1, 1] rather than in the box itself because AgileRL's PPO (2.58)
    scores squashed actions without undoing its scaling to other bounds, so it only learns
    correctly on unit bounds.
    """
    clipped = np.clip(action, -1.0, 1.0)
    return np.asarray(low + 0.5 * (clipped + 1.0) * (high - low), dtype=np.float32)


def is_latent(experiment: Experiment) -> bool:
    """Whether ``experiment`` is a LatentPPO policy."""
    return experiment.info.framework == FRAMEWORK


def latent_size(experiment: Experiment) -> int:
    """The width of a LatentPPO policy's latent; :class:`DecoderError` when not recorded."""
    value = experiment.info.extra.get("latent_size")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecoderError(
            f"experiment.json of {experiment.name!r} must record extra.latent_size (the "
            f"width of the policy's latent action, a positive whole number), not {value!r}."
        )
    return value


def decoder_width(experiment: Experiment) -> int | None:
    """The input width of a saved model that could decode, or ``None`` if it cannot."""
    info = experiment.info
    columns = info.extra.get("feature_columns")
    if info.project_type != "advanced" or info.framework not in DECODER_FRAMEWORKS:
        return None
    if not isinstance(columns, list) or not columns:
        return None
    return len(columns)


def compatible_decoders(store: ExperimentStore, size: int) -> list[str]:
    """Names of the saved models with checkpoints whose input width is ``size``."""
    return [e.name for e in store.list()
            if decoder_width(e) == size and e.checkpoints()]


def parse_decoder(value: Any) -> tuple[str, str | int]:
    """``(experiment name, checkpoint rule)`` from an option value, or :class:`DecoderError`."""
    if isinstance(value, str):
        return value, "best"
    if not isinstance(value, Mapping):
        raise DecoderError(
            "decoder must be the name of an Advanced Training experiment or an object "
            '{"experiment": name, "checkpoint": "best" | "final" | step}, '
            f"not {type(value).__name__}."
        )
    unknown = sorted(set(value) - {"experiment", "checkpoint", "step"})
    if unknown:
        raise DecoderError(
            f"decoder has unknown key(s) {unknown}; use experiment and checkpoint (or step)."
        )
    name = value.get("experiment")
    if not isinstance(name, str) or not name.strip():
        raise DecoderError("decoder.experiment is required: the name of a saved model.")
    if "checkpoint" in value and "step" in value:
        raise DecoderError("decoder takes checkpoint or step, not both.")
    rule = value.get("checkpoint", value.get("step", "best"))
    if rule is None:
        rule = "best"
    if not isinstance(rule, (str, int)) or isinstance(rule, bool):
        raise DecoderError(
            f"decoder checkpoint must be 'best', 'final' or a step number, not {rule!r}."
        )
    return name.strip(), rule


def resolve_decoder(policy: Experiment, value: Any = None,
                    store: ExperimentStore | None = None) -> tuple[DecoderRef, Experiment]:
    """The decoder ``value`` names for the LatentPPO ``policy``, checked and pinned to a step.

    ``value`` ``None`` means the decoder recorded in ``policy``'s ``experiment.json``.
    ``store`` defaults to the workspace ``policy`` lives in. Raises :class:`DecoderError`
    when the decoder is missing, has no such checkpoint, or does not fit the latent.
    """
    size = latent_size(policy)
    if store is None:
        store = ExperimentStore(policy.folder.parent.parent)
    if value is None:
        value = policy.info.extra.get("decoder")
        if value is None:
            raise DecoderError(
                f"experiment.json of {policy.name!r} records no decoder; choose one with "
                "the decoder option."
            )
    name, rule = parse_decoder(value)
    fitting = compatible_decoders(store, size)
    try:
        decoder = store.get(name)
    except StoreError:
        raise DecoderError(
            f"Decoder {name!r} is not a saved model in this workspace (deleted or renamed?); "
            f"saved models that fit this policy's {size}-wide latent: {fitting or 'none'}."
        ) from None
    width = decoder_width(decoder)
    if width is None:
        info = decoder.info
        raise DecoderError(
            f"{name!r} cannot decode: decoders are Advanced Training models of framework "
            f"{' or '.join(repr(f) for f in DECODER_FRAMEWORKS)} that record their input "
            f"columns, and {name!r} is a {info.project_type} {info.framework!r} "
            f"experiment. Saved models that fit: {fitting or 'none'}."
        )
    if width != size:
        raise DecoderError(
            f"Decoder {name!r} takes {width} inputs but {policy.name!r} outputs a "
            f"{size}-wide latent; pick a saved model whose input width is {size}: "
            f"{fitting or 'none'}."
        )
    try:
        step = decoder.resolve(rule)
    except StoreError as exc:
        raise DecoderError(f"Decoder {name!r}: {exc}") from None
    return DecoderRef(decoder.name, step), decoder


class LatentPPORuntime(Runtime):
    """``predict``: observations (B, obs_dim) -> policy latent (B, latent) -> decoder outputs."""

    def __init__(self, policy: GreedyPolicy, decoder: SupervisedRuntime, *,
                 decoder_ref: DecoderRef, low: np.ndarray, high: np.ndarray,
                 observation_columns: list[str]) -> None:
        self.kind = AgentKind(algo=ALGORITHM, supervised=True)
        self.policy = policy
        self.decoder = decoder
        self.low, self.high = low, high
        self.decoder_ref = decoder_ref
        self.obs_dim = int(np.prod(policy.observation_space.shape or (1,)))
        self.observation_columns = observation_columns
        # A fixed probe input drawn once: probing never touches the space's generator again.
        space = policy.observation_space
        space.seed(0)
        self._probe = np.asarray(space.sample(), np.float32).reshape(1, -1)

    def latent(self, inputs: Any) -> np.ndarray:
        """The policy's deterministic latent (B, latent_size) for checked inputs."""
        # A huge float64 becomes inf when cast to float32, which as_batch then refuses;
        # numpy's overflow warning on the way is noise (errstate is per thread).
        with np.errstate(over="ignore", invalid="ignore"):
            rows = as_batch(inputs, "inputs", ndim=2)
        if rows.shape[1] != self.obs_dim:
            named = f": {', '.join(self.observation_columns)}" if self.observation_columns else ""
            raise RequestError(
                f"inputs have {rows.shape[1]} values per row but this LatentPPO policy "
                f"observes {self.obs_dim}{named} (in that order)."
            )
        if rows.shape[0] == 0:
            raise RequestError("inputs have an empty batch axis; send at least one row.")
        return to_latent(self.policy(rows), self.low, self.high)

    def predict(self, inputs: Any) -> np.ndarray:
        """The decoder's outputs, float32 (B, n_outputs), for observations (B, obs_dim)."""
        return np.asarray(self.decoder.predict(self.latent(inputs)), dtype=np.float32)

    def probe(self) -> None:
        """Decode the policy's latent for one sample observation."""
        out = self.predict(self._probe.copy())
        if out.shape[0] != 1 or not np.isfinite(out).all():
            raise RuntimeError(f"The probe answered {out!r}; expected one finite row.")

    def close(self) -> None:
        """Release the decoder."""
        self.decoder.close()


def load(experiment: Experiment, checkpoint: Checkpoint, device: str,
         options: Mapping[str, Any] | None = None) -> Runtime:
    """Load the PPO policy at ``checkpoint`` and the decoder ``options`` (or training) chose."""
    import torch
    from gymnasium import spaces

    from server_extension.serving.runtimes import supervised
    from server_extension.serving.runtimes.agilerl import (
        GreedyPolicy,
        _describe_checkpoint,
        _load_agent,
        algorithm_classes,
    )

    try:
        ref, decoder_experiment = resolve_decoder(experiment, (options or {}).get("decoder"))
    except DecoderError as exc:
        raise RuntimeLoadError(f"LatentPPO agent cannot use its decoder: {exc}") from exc
    size = latent_size(experiment)
    path = checkpoint.path
    if path.is_dir() or path.stat().st_size == 0:
        raise RuntimeLoadError(
            f"{path} is not a PPO checkpoint file (a folder, or empty after an interrupted "
            "save); pick another checkpoint."
        )
    target = device if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    cls = algorithm_classes()["PPO"]
    try:
        agent = _load_agent(cls, path, target)
    except Exception as exc:  # AgileRL raises many types on a bad file
        raise RuntimeLoadError(
            f"Could not load {path.name} of {experiment.name!r} as an AgileRL PPO policy: "
            f"{_describe_checkpoint(path)}."
        ) from exc
    if not isinstance(agent, cls) or getattr(agent, "recurrent", False):
        raise RuntimeLoadError(
            f"{path.name} of {experiment.name!r} holds a {type(agent).__name__} agent; "
            "LatentPPO serves feed-forward PPO policies."
        )
    for network in agent.evolvable_attributes(networks_only=True).values():
        network.eval()
    policy = GreedyPolicy(agent)
    space = policy.observation_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise RuntimeLoadError(
            f"The policy of {experiment.name!r} observes {space}; LatentPPO serves policies "
            "that observe flat vectors."
        )
    if policy.discrete or policy.action_dim != size:
        raise RuntimeLoadError(
            f"The policy of {experiment.name!r} acts in {policy.action_space} but "
            f"experiment.json says its latent is {size} wide."
        )
    low, high = _latent_box(experiment, size)
    decoder = supervised.load(decoder_experiment, decoder_experiment.checkpoint(ref.step),
                              device)
    if not isinstance(decoder, supervised.SupervisedRuntime):
        raise RuntimeLoadError(f"Decoder {ref.experiment!r} did not load as a saved model.")
    columns = [str(c) for c in experiment.info.extra.get("observation_columns") or []]
    if len(columns) != space.shape[0]:
        columns = []  # names that do not match the policy would only mislead error messages
    return LatentPPORuntime(policy, decoder, decoder_ref=ref, low=low, high=high,
                            observation_columns=columns)


def _latent_box(experiment: Experiment, size: int) -> tuple[np.ndarray, np.ndarray]:
    extra = experiment.info.extra
    try:
        low = np.asarray(extra["latent_low"], dtype=np.float32)
        high = np.asarray(extra["latent_high"], dtype=np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r} must record extra.latent_low and "
            f"extra.latent_high, the latent box the policy's [-1, 1] action maps onto ({exc})."
        ) from exc
    if low.shape != (size,) or high.shape != (size,) or not (low < high).all():
        raise RuntimeLoadError(
            f"experiment.json of {experiment.name!r}: latent_low and latent_high need "
            f"{size} values each (the latent size), with every low below its high."
        )
    return low, high
