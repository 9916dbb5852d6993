"""Per-agent deployment options: what ``POST agents/api/agents`` accepts under ``options``.

Options are chosen when the agent is created, stored with it in the registry, and handed to
the deployer and the loaders on every Connect. Each key has one checker here, so a typo or a
value of the wrong type is a 400 that names the key, never a load-time surprise.

Example::

    validate_options({"backend": "local"}, experiment)   # -> {"backend": "local"}
    validate_options({"decoder": "iris-classifier"}, latent_ppo_experiment)
    # -> {"decoder": {"experiment": "iris-classifier", "step": 300}}  (pinned to its best step)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from server_extension.serving.runtimes.latent import DecoderError, is_latent, resolve_decoder
from workbench_core.store import Experiment


class OptionError(ValueError):
    """An option the workbench cannot take; the message says which and what to send."""


def _backend(value: Any, experiment: Experiment) -> Any:
    if value not in BACKENDS:
        raise OptionError(f"options.backend must be one of {list(BACKENDS)}, got {value!r}.")
    return value


def _decoder(value: Any, experiment: Experiment) -> Any:
    if not is_latent(experiment):
        raise OptionError(
            f"options.decoder applies to LatentPPO experiments only; {experiment.name!r} is a "
            f"{experiment.info.algorithm} ({experiment.info.framework}) experiment."
        )
    try:
        ref, _ = resolve_decoder(experiment, value)
    except DecoderError as exc:
        raise OptionError(f"options.decoder: {exc}") from exc
    # Stored pinned to a step, so "best" keeps meaning the decoder the user saw at creation.
    return ref.to_json()


def _memory_scope(value: Any, experiment: Experiment) -> Any:
    if value not in MEMORY_SCOPES:
        raise OptionError(
            f"options.memory_scope must be one of {list(MEMORY_SCOPES)}, got {value!r}.")
    return value


def _replica_count(key: str) -> Callable[[Any, Experiment], Any]:
    def check(value: Any, experiment: Experiment) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
            raise OptionError(
                f"options.{key} must be a whole number from 1 to {MAX_REPLICAS}, got {value!r}.")
        return value
    return check


def _ray_resources(value: Any, experiment: Experiment) -> Any:
    # Checked here rather than left to Ray: Ray takes a bad quantity at deploy time and only
    # says so in the replica's scheduling error, minutes later.
    hint = ('options.ray_resources must be an object of custom Ray resource names and '
            'amounts each replica needs, e.g. {"agents_node": 1}')
    if not isinstance(value, Mapping) or not value:
        raise OptionError(f"{hint}; got {value!r}.")
    if len(value) > MAX_RAY_RESOURCES:
        raise OptionError(f"{hint}; at most {MAX_RAY_RESOURCES} names, got {len(value)}.")
    checked: dict[str, float | int] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise OptionError(f"{hint}; {name!r} is not a resource name.")
        if name in RAY_BUILTIN_RESOURCES:
            raise OptionError(
                f"options.ray_resources may not name Ray's built-in resource {name!r}: CPUs per "
                "replica are the server's AgentsWorkbenchApp.ray_replica_cpus; name a custom "
                "resource the chosen nodes were started with (ray start --resources).")
        if (isinstance(amount, bool) or not isinstance(amount, (int, float))
                or not 0 < amount <= MAX_RAY_RESOURCE_AMOUNT):
            raise OptionError(
                f"options.ray_resources[{name!r}] must be a number above 0 and at most "
                f"{MAX_RAY_RESOURCE_AMOUNT}, got {amount!r}.")
        if amount > 1 and amount != int(amount):
            # Ray's own rule: only amounts up to 1 may be fractional.
            raise OptionError(
                f"options.ray_resources[{name!r}] above 1 must be a whole number, got {amount!r}.")
        checked[name] = amount
    return checked


def _check_scale(options: Mapping[str, Any]) -> None:
    # Replica counts only mean something on Ray, and the bounds must hold together.
    present = [k for k in RAY_ONLY_KEYS if k in options]
    if present and options.get("backend") == "local":
        raise OptionError(
            f"options {present} apply to the 'ray' backend; drop them or set backend 'ray'.")
    low, high = options.get("min_replicas"), options.get("max_replicas")
    if low is not None and high is not None and low > high:
        raise OptionError(f"options.min_replicas ({low}) is above max_replicas ({high}).")
    count = options.get("replicas")
    if count is not None and ((low is not None and count < low)
                              or (high is not None and count > high)):
        raise OptionError(
            f"options.replicas ({count}) must lie between min_replicas and max_replicas; it is "
            "the starting count when both are given.")


# Serving backends: "local" runs the model inside the Jupyter server, "ray" as a Ray Serve
# application per agent (server_extension/serving/ray_backend.py).
BACKENDS: tuple[str, ...] = ("local", "ray")
# Replica options (ray backend): a fixed count, or autoscaling bounds with replicas as start.
SCALE_KEYS: tuple[str, ...] = ("replicas", "min_replicas", "max_replicas")
MAX_REPLICAS = 64
# Placement (ray backend): custom resources each replica needs, so Ray puts replicas only on
# nodes started with them (ray start --resources='{"agents_node": 2}').
RAY_ONLY_KEYS: tuple[str, ...] = (*SCALE_KEYS, "ray_resources")
RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
MAX_RAY_RESOURCES = 16
MAX_RAY_RESOURCE_AMOUNT = 10_000
# Whose chat sessions an LLM agent keeps apart: each access token its own ("user", the
# default) or one shared set for the workspace ("organization"). See sessions.py.
MEMORY_SCOPES: tuple[str, ...] = ("user", "organization")

# option name -> checker returning the value to store
CHECKERS: dict[str, Callable[[Any, Experiment], Any]] = {
    "backend": _backend,
    **{key: _replica_count(key) for key in SCALE_KEYS},
    "ray_resources": _ray_resources,
    "decoder": _decoder,
    "memory_scope": _memory_scope,
}


def validate_options(options: Any, experiment: Experiment) -> dict[str, Any]:
    """Check the ``options`` object of a create request; :class:`OptionError` if unfit."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise OptionError(f"options must be a JSON object, got {type(options).__name__}.")
    unknown = sorted(set(options) - set(CHECKERS))
    if unknown:
        raise OptionError(
            f"Unknown option(s) {unknown}; known options are {sorted(CHECKERS)}."
        )
    checked = {key: CHECKERS[key](value, experiment) for key, value in options.items()}
    _check_scale(checked)
    return checked
