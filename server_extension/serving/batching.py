"""Dynamic batching: concurrent ``get_action`` calls to one runtime share one forward pass.

The deployer runs each request's ``get_action`` on a worker thread. Without batching, N
concurrent requests to one agent run N forward passes of batch 1 side by side; for a policy
whose forward is expensive (a CNN, a wide MLP) one pass over a batch of N costs far less than
N passes of one. :class:`BatchingRuntime` wraps a runtime and gathers the calls that arrive
while a forward is running into the next one, then hands each caller its own rows back.

There is no timer: the first caller with nobody ahead of it runs at once (a lone client pays
nothing), and callers that arrive while a batch is running wait for it to end, then run
together. So batches grow exactly as fast as requests pile up. The largest batch is bounded
by ``max_batch`` and, in practice, by the deployer's worker threads (each waiting caller holds
one).

Only plain single-agent calls are batched: an ndarray ``obs`` with no ``hidden_state`` and no
``env_defined_actions``. Recurrent and multi-agent calls, and anything else, go straight to
the wrapped runtime. Requests whose observations differ in trailing shape or dtype, or in
whether they carry an action mask, are batched separately. If a batched call is refused (one
request's bad input), each request of that batch is retried alone, so a caller only ever sees
its own error.

Answers equal the unbatched ones per request, except that a float matrix product may round
differently in its last bit at another batch size (BLAS picks kernels by shape); discrete
actions (argmax) are the same unless two Q-values tie to within that rounding.

Thread-safety: ``get_action`` may be called from any number of threads at once; one lock
guards the queue, and the forward runs outside it.

Example::

    runtime = BatchingRuntime(load_runtime(experiment, checkpoint), max_batch=64)
    actions, _ = runtime.get_action(obs)          # from many worker threads at once
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from server_extension.serving.gathering import Gatherer, Pending
from server_extension.serving.runtimes.base import Runtime, WrappedRuntime

# Settings of the deployer's ``batching`` option.
MODES = ("auto", "on", "off")
# "auto" batches a runtime whose batch-1 get_action costs at least this much. Measured with
# benchmarks/run.py at 64 connections on 2 cores: a 256x256 MLP (~0.2 ms) lost about a third
# of its throughput to the hand-offs, an Atari-style CNN (~1-3.5 ms) gained about 1.3x.
AUTO_MIN_FORWARD_S = 0.0005
# ... and whose call over 8 rows is at least no dearer per row than 8 calls of one. Kept
# loose on purpose: measured at load time on a busy machine this ratio is noisy (0.4-0.9
# for the same CNN), while the forward cost alone separated the two policies every time.
AUTO_MAX_BATCH_COST = 1.0


@dataclass
class _Request(Pending):
    obs: np.ndarray
    mask: np.ndarray | None
    action: Any = None


def _group_key(obs: np.ndarray, mask: np.ndarray | None) -> tuple[Any, ...]:
    """Requests that can be concatenated along the batch axis share a key."""
    mask_key = None if mask is None else (mask.shape[1:], mask.dtype.str)
    return (obs.shape[1:], obs.dtype.str, mask_key)


class BatchingRuntime(WrappedRuntime):
    """Wraps a ``get_action`` runtime so concurrent calls run as one batched call.

    Everything but ``get_action`` (``probe``, ``close``, the other routes) goes to the
    wrapped runtime unchanged. ``batches`` and ``batched_requests`` count what was gathered,
    for benchmarks and tests.
    """

    def __init__(self, inner: Runtime, *, max_batch: int = 64) -> None:
        super().__init__(inner)
        self.max_batch = max(1, max_batch)
        self._gatherer = Gatherer(self._pick, self._run)
        self.batches = 0
        self.batched_requests = 0

    # -- the routes ---------------------------------------------------------------------

    def get_action(
        self,
        obs: Any,
        *,
        hidden_state: Any = None,
        action_mask: Any = None,
        env_defined_actions: Any = None,
    ) -> tuple[Any, Any]:
        """The wrapped runtime's answer for this request, computed in a shared batch."""
        plain = (
            isinstance(obs, np.ndarray) and obs.ndim >= 1 and obs.shape[0] > 0
            and hidden_state is None and env_defined_actions is None
            and (action_mask is None
                 or (isinstance(action_mask, np.ndarray) and action_mask.ndim >= 1
                     and action_mask.shape[0] == obs.shape[0]))
            and not self.kind.recurrent and not self.kind.multi_agent
        )
        if not plain:
            return self.inner.get_action(obs, hidden_state=hidden_state,
                                         action_mask=action_mask,
                                         env_defined_actions=env_defined_actions)
        request = _Request(obs, action_mask)
        self._gatherer.wait_for(request)
        return request.action, None

    # -- gathering ----------------------------------------------------------------------

    def _pick(self, queue: list[_Request]) -> tuple[list[_Request], list[_Request]]:
        """The head of the queue and every request that can share its forward."""
        first = queue[0]
        key = _group_key(first.obs, first.mask)
        batch: list[_Request] = []
        rows = 0
        rest: list[_Request] = []
        for item in queue:
            fits = (_group_key(item.obs, item.mask) == key
                    and rows + item.obs.shape[0] <= max(self.max_batch, first.obs.shape[0]))
            if fits:
                batch.append(item)
                rows += item.obs.shape[0]
            else:
                rest.append(item)
        return batch, rest

    def _run(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        self.batches += 1
        self.batched_requests += len(batch)
        obs = np.concatenate([item.obs for item in batch])
        masks = [item.mask for item in batch if item.mask is not None]
        mask = np.concatenate(masks) if masks else None  # all or none: same group key
        try:
            action, _ = self.inner.get_action(obs, action_mask=mask)
            parts = _split(action, [item.obs.shape[0] for item in batch])
        except Exception:  # noqa: BLE001 - one bad request must not fail the others
            for item in batch:
                self._run_alone(item)
            return
        for item, part in zip(batch, parts, strict=True):
            item.action = part

    def _run_alone(self, item: _Request) -> None:
        try:
            item.action, _ = self.inner.get_action(item.obs, action_mask=item.mask)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's own thread
            item.error = exc


def _split(action: Any, sizes: list[int]) -> list[Any]:
    """Cut a batched answer (an array, or a dict/tuple of them) back into per-request rows."""
    if isinstance(action, dict):
        columns = {k: _split(v, sizes) for k, v in action.items()}
        return [{k: parts[i] for k, parts in columns.items()} for i in range(len(sizes))]
    if isinstance(action, tuple):
        pieces = [_split(v, sizes) for v in action]
        return [tuple(p[i] for p in pieces) for i in range(len(sizes))]
    arr = np.asarray(action)
    if arr.ndim == 0 or arr.shape[0] != sum(sizes):
        raise ValueError(f"answer of shape {arr.shape} has no batch axis of {sum(sizes)}")
    return np.split(arr, np.cumsum(sizes)[:-1])


def forward_costs(runtime: Runtime, *, repeats: int = 20,
                  min_one: float = 0.0) -> tuple[float, float]:
    """Median seconds of ``get_action`` on the probe observation at batch 1 and batch 8.

    Uses the runtime's own probe observation (AgileRL runtimes keep one); ``(0, 0)`` when it
    has none, which "auto" reads as "not worth batching". When batch 1 takes less than
    ``min_one`` the batch-8 figure is not measured (returned as 0): the answer is known.
    """
    sample = getattr(runtime, "_probe_obs", None)
    if not isinstance(sample, np.ndarray) or sample.ndim < 1 or sample.shape[0] != 1:
        return 0.0, 0.0
    eight = np.repeat(sample, 8, axis=0)

    def median(fn: Callable[[], Any]) -> float:
        fn()  # warm-up: first calls allocate
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    try:
        one = median(lambda: runtime.get_action(sample.copy()))
        if one < min_one:
            return one, 0.0
        many = median(lambda: runtime.get_action(eight.copy()))
    except Exception:  # noqa: BLE001 - a runtime that cannot act on 8 rows is not batched
        return 0.0, 0.0
    return one, many


def worth_batching(runtime: Runtime) -> bool:
    """Whether "auto" batches this runtime: plain get_action kinds whose forward is costly
    and not dearer per row in a batch (measured once, at load; see AUTO_MIN_FORWARD_S)."""
    kind = runtime.kind
    if kind.routes != ("get_action",) or kind.recurrent or kind.multi_agent:
        return False
    # Measured while the agent is loading, so it stops early for the small policies that
    # are most of what is served: their batch-1 call alone says "no".
    one, eight = forward_costs(runtime, repeats=10, min_one=AUTO_MIN_FORWARD_S)
    return one >= AUTO_MIN_FORWARD_S and eight <= AUTO_MAX_BATCH_COST * 8 * one


def wrap(runtime: Runtime, mode: str, *, max_batch: int = 64) -> Runtime:
    """``runtime`` wrapped for batching as ``mode`` ("auto", "on", "off") says.

    LLM runtimes get their ``generate`` batched under "auto" as well as "on": their model
    already takes a batch of prompts, and requests are only ever merged when they arrive
    while another call holds the model, so a lone request pays nothing for it.
    """
    if mode not in MODES:
        raise ValueError(f"batching must be one of {', '.join(MODES)}, not {mode!r}")
    from server_extension.serving.runtimes.llm import LLMRuntime

    if isinstance(runtime, LLMRuntime):
        if mode == "off":
            return runtime
        from server_extension.serving.generate_batching import GenerateBatchingRuntime

        return GenerateBatchingRuntime(runtime)
    kind = runtime.kind
    batchable = kind.routes == ("get_action",) and not kind.recurrent and not kind.multi_agent
    if mode == "off" or not batchable:
        return runtime
    if mode == "on" or worth_batching(runtime):
        return BatchingRuntime(runtime, max_batch=max_batch)
    return runtime
