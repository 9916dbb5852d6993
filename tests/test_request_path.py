"""What an inference request passes through inside jupyter_server, kept short on purpose."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from server_extension.handlers import inference
from tests.test_management_api import call, create, obs_payload, wait_status


def test_workbench_routes_are_tried_first(jp_serverapp: Any) -> None:
    first = jp_serverapp.web_app.default_router.rules[0].target
    handlers = {rule.target for rule in first.rules}
    assert {cls for _, cls in inference.routes} <= handlers


async def test_only_failed_inference_calls_reach_the_access_log(
        jp_fetch: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # jupyter_server logs successes at debug level
    await create(jp_fetch, "logged")
    await call(jp_fetch, "POST", "agents", "api", "agents", "logged", "connect")
    agent = await wait_status(jp_fetch, "logged")
    payload = obs_payload(np.zeros((1, 4), np.float32))
    code, _ = await call(jp_fetch, "POST", "agents", "d", "logged", "get_action", body=payload,
                         headers={"Authorization": f"Bearer {agent['api_key']}"})
    assert code == 200
    code, _ = await call(jp_fetch, "POST", "agents", "d", "logged", "get_action", body=payload,
                         headers={"Authorization": "Bearer awb_wrong"})
    assert code == 401
    # jupyter_server.log.log_request writes the access lines.
    access_lines = [r.getMessage() for r in caplog.records
                    if r.pathname.endswith(("jupyter_server/log.py", "tornado/web.py"))]
    calls = [line for line in access_lines if "/agents/d/logged/get_action" in line]
    assert len(calls) == 1, access_lines
    assert calls[0].startswith("401 POST")
    # Management calls are logged as before.
    assert any("/agents/api/agents/logged/connect" in line for line in access_lines)
