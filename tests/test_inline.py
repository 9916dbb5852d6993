"""The opt-in inline path for get_action (server_extension/serving/inline.py)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server_extension.serving.batching import BatchingRuntime
from server_extension.serving.inline import inline_limit
from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.agilerl import AgileRLRuntime
from server_extension.serving.serde import decode_tree
from tests.test_management_api import call, create, obs_payload, wait_status
from workbench_core.store import ExperimentStore


@pytest.fixture
def jp_server_config(workspace: Path) -> dict[str, Any]:
    """The workbench with inline serving on for policies measured under 50 ms (only runtimes
    served in the server's own process can be called on its event loop)."""
    return {
        "ServerApp": {"jpserver_extensions": {"server_extension": True},
                      "allow_unauthenticated_access": False},
        "AgentsWorkbenchApp": {"root_dir": str(workspace), "health_check_interval": 0,
                               "inline_below_ms": 50.0, "isolation": "thread"},
    }


def _cartpole(workspace: Path) -> AgileRLRuntime:
    experiment = ExperimentStore(workspace).get("cartpole-dqn")
    runtime = load_runtime(experiment, experiment.checkpoint(experiment.best_step()))
    assert isinstance(runtime, AgileRLRuntime)
    return runtime


def test_limit_is_eight_float32_rows_and_only_for_the_own_runtime(workspace: Path) -> None:
    runtime = _cartpole(workspace)
    eight_rows = io.BytesIO()
    np.save(eight_rows, np.zeros((8, 4), np.float32), allow_pickle=False)
    limit = inline_limit(runtime, 50.0)
    assert limit >= len(base64.b64encode(eight_rows.getvalue()))
    nine = io.BytesIO()
    np.save(nine, np.zeros((9, 4), np.float64), allow_pickle=False)
    assert limit < len(base64.b64encode(nine.getvalue()))
    assert inline_limit(runtime, 0) == 0  # off
    assert inline_limit(runtime, 1e-6) == 0  # nothing is that fast
    # A batching wrapper waits on other calls, and a subclass may run code of its own.
    assert inline_limit(BatchingRuntime(runtime), 50.0) == 0

    class Custom(AgileRLRuntime):
        pass

    custom = Custom(runtime.policy, algo="DQN")
    assert inline_limit(custom, 50.0) == 0


async def test_small_requests_run_inline_and_match_the_runtime(
        jp_fetch: Any, jp_serverapp: Any, workspace: Path) -> None:
    await create(jp_fetch, "fast")
    await call(jp_fetch, "POST", "agents", "api", "agents", "fast", "connect")
    agent = await wait_status(jp_fetch, "fast")
    assert agent["status"] == "Deployed", agent
    deployer = jp_serverapp.web_app.settings["agents_workbench_deployer"]
    assert deployer.live("fast").inline_obs_chars > 0

    threaded: list[Any] = []
    real_call = deployer.call

    async def counting_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        threaded.append(fn)
        return await real_call(fn, *args, **kwargs)

    deployer.call = counting_call
    reference = _cartpole(workspace)
    headers = {"Authorization": f"Bearer {agent['api_key']}"}
    rng = np.random.default_rng(0)
    for rows, on_thread in ((1, 0), (8, 0), (200, 1)):
        obs = rng.normal(size=(rows, 4)).astype(np.float32)
        code, body = await call(jp_fetch, "POST", "agents", "d", "fast", "get_action",
                                body=obs_payload(obs), headers=headers)
        assert code == 200, body
        np.testing.assert_array_equal(decode_tree(body["action"], "action"),
                                      reference.get_action(obs)[0])
        assert len(threaded) == on_thread, rows
        threaded.clear()

    # Bad input on the inline path is the same 400 as on a thread.
    code, body = await call(jp_fetch, "POST", "agents", "d", "fast", "get_action",
                            body=obs_payload(np.zeros((1, 3), np.float32)), headers=headers)
    assert code == 400
    assert "expects (batch, 4)" in body["error"]
    assert not threaded
