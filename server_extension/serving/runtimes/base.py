"""The interface every loaded model serves through, whatever trained it.

A runtime is built once per deployment by a loader (see :func:`load_runtime`) and then called
from the deployer's worker threads, never from the Tornado event loop. Inputs arrive decoded
from the wire with their leading batch axis; outputs go back with it.

Thread-safety: a runtime must tolerate calls from several worker threads at once. Torch
modules in eval mode under ``torch.inference_mode()`` do; runtimes that keep mutable state
(chat sessions, say) guard it themselves.

Example::

    runtime = load_runtime(ExperimentStore(root).get("cartpole-dqn"), step=5000, device="cpu")
    runtime.probe()                                  # raises if the model cannot answer
    actions, _ = runtime.get_action(np.zeros((1, 4), np.float32))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AgentKind:
    """What ``GET status`` reports under ``agent``: exactly the client's ``AgentInfo`` fields."""

    algo: str
    multi_agent: bool = False
    llm: bool = False
    recurrent: bool = False
    supervised: bool = False

    def to_json(self) -> dict[str, Any]:
        """The ``agent`` object of ``GET status``."""
        return asdict(self)

    @property
    def routes(self) -> tuple[str, ...]:
        """The inference routes this kind answers (besides ``status``)."""
        if self.llm:
            return ("generate", "generate_stream", "sessions")
        if self.supervised:
            return ("predict",)
        return ("get_action",)


class RequestError(ValueError):
    """The caller sent something this model cannot take: answered 400 with this message."""


class RuntimeLoadError(RuntimeError):
    """A checkpoint that cannot be turned into a runtime; the agent goes Failed with this."""


class Runtime:
    """Base class: a loaded model. Subclasses override the routes their kind serves."""

    kind: AgentKind

    def _wrong_route(self, route: str) -> RequestError:
        right = " or ".join(f"POST {r}" for r in self.kind.routes if r != "sessions")
        return RequestError(
            f"This deployment is a {self.kind.algo} agent and does not answer {route}; "
            f"use {right} instead."
        )

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[Any, Any]:
        """Batched actions (and the next hidden state, or ``None``) for batched observations."""
        raise self._wrong_route("get_action")

    def predict(self, inputs: Any) -> Any:
        """Batched outputs for batched inputs (supervised models, LatentPPO)."""
        raise self._wrong_route("predict")

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """One completion per prompt (LLMs). ``params`` is already validated."""
        raise self._wrong_route("generate")

    def stream(self, prompt: str, params: dict[str, Any], cancelled: Any) -> Iterator[str]:
        """Yield text pieces as they are produced; stop early once ``cancelled.is_set()``."""
        raise self._wrong_route("generate_stream")

    def probe(self) -> None:
        """Answer one sample request; raise if the model cannot. Used as the health check."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the model holds (memory, threads). Called once, after the last use."""


class WrappedRuntime(Runtime):
    """A runtime that passes every route to ``inner``; subclasses change the routes they wrap
    (the batchers in ``server_extension/serving/batching.py`` and ``generate_batching.py``)."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.kind = inner.kind

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[Any, Any]:
        """The wrapped runtime's answer."""
        return self.inner.get_action(obs, hidden_state=hidden_state, action_mask=action_mask,
                                     env_defined_actions=env_defined_actions)

    def predict(self, inputs: Any) -> Any:
        """The wrapped runtime's answer."""
        return self.inner.predict(inputs)

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """The wrapped runtime's answer."""
        return self.inner.generate(prompts, params)

    def stream(self, prompt: str, params: dict[str, Any], cancelled: Any) -> Iterator[str]:
        """The wrapped runtime's stream."""
        return self.inner.stream(prompt, params, cancelled)

    def probe(self) -> None:
        """The wrapped runtime's probe (called alone, never batched)."""
        self.inner.probe()

    def close(self) -> None:
        """Close the wrapped runtime."""
        self.inner.close()


def as_batch(value: Any, what: str, *, dtype: type = np.float32, ndim: int | None = None,
             width: int | None = None) -> np.ndarray:
    """Check a decoded wire array and return it as ``dtype``; :class:`RequestError` if unfit.

    ``ndim`` counts the batch axis; ``width`` is the expected size of the last axis.
    """
    if not isinstance(value, np.ndarray):
        raise RequestError(f"{what} must be an array, got {type(value).__name__}.")
    if value.dtype.kind not in "biuf":
        raise RequestError(f"{what} has dtype {value.dtype}; send a numeric array.")
    if ndim is not None and value.ndim != ndim:
        raise RequestError(
            f"{what} has shape {value.shape} ({value.ndim} axes); expected {ndim} axes "
            "including the leading batch axis."
        )
    if width is not None and (value.ndim == 0 or value.shape[-1] != width):
        raise RequestError(f"{what} has shape {value.shape}; its last axis must be {width}.")
    out: np.ndarray = value.astype(dtype, copy=False)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise RequestError(f"{what} contains NaN or infinity; send finite numbers.")
    return out
