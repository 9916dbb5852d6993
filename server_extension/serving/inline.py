"""Which get_action calls may run on the event loop instead of a worker thread (opt-in).

By default every model call goes to a worker thread, which is what lets ``request_timeout``
answer 504 for a model that hangs while the server goes on serving. For the demo-sized
policies that protection costs more than the model: a CartPole MLP acts in about 0.1 ms,
and the hand-off to a thread and back roughly halves the requests a core can serve
(``benchmarks/thread_hop.py``). With ``AgentsWorkbenchApp.inline_below_ms`` set above 0, a
request runs inline when all of these hold, and on a worker thread otherwise:

* the agent is served locally by this package's own single-agent AgileRL runtime (not a
  plugin's, whose code could block, and not a batching wrapper, which waits on other calls);
* its ``get_action`` on 8 rows, measured when the agent was loaded, took at most that many
  milliseconds;
* the request's ``obs`` is a base64 string no longer than 8 float32 rows make, so no
  request can ask the loop for much more work than was measured.

What is given up for those calls: a call that hung would stall the whole server rather than
time out. That is the reason it is off by default.
"""

from __future__ import annotations

import math

import numpy as np

from server_extension.serving.batching import forward_costs
from server_extension.serving.runtimes.base import Runtime

# The rows measured at load; requests up to this many rows may run inline.
INLINE_ROWS = 8
# Room for the .npy header in front of the rows (numpy pads it to a multiple of 64 bytes).
_NPY_HEADER_BYTES = 128


def inline_limit(runtime: Runtime, below_ms: float) -> int:
    """Longest base64 ``obs`` (characters) that may run inline for ``runtime``; 0 for none."""
    from server_extension.serving.runtimes.agilerl import AgileRLRuntime

    if below_ms <= 0 or type(runtime) is not AgileRLRuntime:
        return 0
    sample = getattr(runtime, "_probe_obs", None)
    if not isinstance(sample, np.ndarray) or sample.ndim < 1 or sample.shape[0] != 1:
        return 0
    _one, eight = forward_costs(runtime)
    if eight <= 0 or eight * 1000 > below_ms:
        return 0
    # Sized for float32 rows, what clients send: narrower dtypes fit a few more rows, still
    # a small multiple of the measured call; float64 rows simply go to a thread.
    raw = _NPY_HEADER_BYTES + INLINE_ROWS * sample[0].size * 4
    return 4 * math.ceil(raw / 3)
