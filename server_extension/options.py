"""Per-agent deployment options: what ``POST agents/api/agents`` accepts under ``options``.

Options are chosen when the agent is created, stored with it in the registry, and handed to
the deployer and the loaders on every Connect. Each key has one checker here, so a typo or a
value of the wrong type is a 400 that names the key, never a load-time surprise.

Example::

    validate_options({"backend": "local"}, experiment)   # -> {"backend": "local"}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .store import Experiment


class OptionError(ValueError):
    """An option the workbench cannot take; the message says which and what to send."""


def _backend(value: Any, experiment: Experiment) -> Any:
    if value not in BACKENDS:
        raise OptionError(f"options.backend must be one of {list(BACKENDS)}, got {value!r}.")
    return value


# Serving backends: "local" runs the model inside the Jupyter server.
BACKENDS: tuple[str, ...] = ("local",)

# option name -> checker returning the value to store
CHECKERS: dict[str, Callable[[Any, Experiment], Any]] = {
    "backend": _backend,
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
    return {key: CHECKERS[key](value, experiment) for key, value in options.items()}
