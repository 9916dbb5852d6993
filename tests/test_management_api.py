"""The management API through a real in-process Jupyter server (jp_fetch)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError


async def call(jp_fetch: Any, method: str, *parts: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """Fetch without raising on 4xx/5xx; return (status, decoded JSON or None)."""
    kwargs: dict[str, Any] = {"method": method, "headers": headers or {}}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    elif method == "POST":
        kwargs["body"] = b"{}"
    try:
        resp = await jp_fetch(*parts, **kwargs)
    except HTTPClientError as err:
        resp = err.response
        assert resp is not None
    text = resp.body.decode() if resp.body else ""
    return resp.code, (json.loads(text) if text else None)


async def wait_status(jp_fetch: Any, name: str, wanted: tuple[str, ...] = ("Deployed", "Failed"),
                      timeout: float = 90.0) -> dict[str, Any]:
    """Poll the agent until its status is in ``wanted``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, agent = await call(jp_fetch, "GET", "agents", "api", "agents", name)
        assert code == 200, agent
        if agent["status"] in wanted or loop.time() > deadline:
            return agent
        await asyncio.sleep(0.05)


def obs_payload(obs: np.ndarray) -> dict[str, Any]:
    """A get_action body for a batch of observations."""
    buf = io.BytesIO()
    np.save(buf, obs, allow_pickle=False)
    return {"obs": base64.b64encode(buf.getvalue()).decode(), "batch_size": obs.shape[0]}


async def create(jp_fetch: Any, name: str, experiment: str = "cartpole-dqn",
                 checkpoint: Any = "best", **extra: Any) -> tuple[int, Any]:
    """POST agents/api/agents."""
    return await call(jp_fetch, "POST", "agents", "api", "agents",
                      body={"name": name, "experiment": experiment, "checkpoint": checkpoint,
                            **extra})


async def test_experiments_listed_with_checkpoints(jp_fetch: Any) -> None:
    code, body = await call(jp_fetch, "GET", "agents", "api", "experiments")
    assert code == 200
    by_name = {e["name"]: e for e in body["experiments"]}
    cartpole = by_name["cartpole-dqn"]
    assert cartpole["tab"] == "classic"
    assert cartpole["source"] == "CartPole-v1"
    assert cartpole["algorithm"] == "DQN"
    assert len(cartpole["checkpoints"]) >= 2
    first = cartpole["checkpoints"][0]
    assert set(first) == {"step", "training_score", "evaluation_score", "size_mb"}
    assert first["size_mb"] > 0


async def test_create_agent_rules_and_errors(jp_fetch: Any) -> None:
    code, agent = await create(jp_fetch, "  cart  ", description=" balances ")
    assert code == 201, agent
    assert agent["name"] == "cart"
    assert agent["description"] == "balances"
    assert agent["status"] == "Undeployed"
    assert agent["connected"] is False
    assert agent["endpoint"] is None
    assert agent["api_key"] is None
    assert agent["tab"] == "classic"

    code, exps = await call(jp_fetch, "GET", "agents", "api", "experiments")
    steps = [c["step"] for c in {e["name"]: e for e in exps["experiments"]}["cartpole-dqn"]
             ["checkpoints"]]
    code, final = await create(jp_fetch, "cart-final", checkpoint="final")
    assert code == 201
    assert final["checkpoint_step"] == max(steps)
    code, specific = await create(jp_fetch, "cart-specific", checkpoint=steps[0])
    assert code == 201
    assert specific["checkpoint_step"] == steps[0]
    assert specific["checkpoint_rule"] == "specific"

    code, err = await create(jp_fetch, "cart")
    assert code == 409
    assert "already exists" in err["message"]
    code, err = await create(jp_fetch, "x", experiment="no-such-experiment")
    assert code == 400
    assert "Unknown experiment" in err["message"]
    code, err = await create(jp_fetch, "y", checkpoint=123456789)
    assert code == 400
    assert "no checkpoint at step 123456789" in err["message"]
    code, err = await create(jp_fetch, "bad/name")
    assert code == 400
    assert "Invalid agent name" in err["message"]
    code, err = await create(jp_fetch, "   ")
    assert code == 400

    code, listing = await call(jp_fetch, "GET", "agents", "api", "agents")
    assert [a["name"] for a in listing["agents"]] == ["cart", "cart-final", "cart-specific"]


async def test_management_requires_jupyter_auth(jp_fetch: Any) -> None:
    # An explicit empty Authorization header replaces the fixture's token.
    code, _ = await call(jp_fetch, "GET", "agents", "api", "agents",
                         headers={"Authorization": ""})
    assert code == 403


async def test_connect_serve_rotate_disconnect_delete(jp_fetch: Any) -> None:
    await create(jp_fetch, "cart")
    code, agent = await call(jp_fetch, "POST", "agents", "api", "agents", "cart", "connect")
    assert code == 200
    assert agent["status"] in ("Pending", "Deployed")
    agent = await wait_status(jp_fetch, "cart")
    assert agent["status"] == "Deployed", agent
    assert agent["endpoint"].endswith("/agents/d/cart")
    key = agent["api_key"]
    assert key.startswith("awb_")

    obs = np.zeros((3, 4), dtype=np.float32)
    auth = {"Authorization": f"Bearer {key}"}
    code, answer = await call(jp_fetch, "POST", "agents", "d", "cart", "get_action",
                              body=obs_payload(obs), headers=auth)
    assert code == 200, answer
    action = np.load(io.BytesIO(base64.b64decode(answer["action"])))
    assert action.shape == (3,)

    code, status = await call(jp_fetch, "GET", "agents", "d", "cart", "status",
                              headers={"Authorization": ""})
    assert code == 200
    assert "agent" not in status  # the kind only to a caller with a credential
    code, status = await call(jp_fetch, "GET", "agents", "d", "cart", "status", headers=auth)
    assert code == 200
    assert status["agent"] == {"algo": "DQN", "multi_agent": False, "llm": False,
                               "recurrent": False, "supervised": False}
    assert key not in json.dumps(status)

    code, rotated = await call(jp_fetch, "POST", "agents", "api", "agents", "cart", "rotate-key")
    assert code == 200
    assert rotated["api_key"] != key
    code, err = await call(jp_fetch, "POST", "agents", "d", "cart", "get_action",
                           body=obs_payload(obs), headers=auth)
    assert code == 401
    assert err["success"] is False
    code, _ = await call(jp_fetch, "POST", "agents", "d", "cart", "get_action",
                         body=obs_payload(obs),
                         headers={"Authorization": f"Bearer {rotated['api_key']}"})
    assert code == 200

    code, agent = await call(jp_fetch, "POST", "agents", "api", "agents", "cart", "disconnect")
    assert agent["status"] == "Undeployed"
    assert agent["connected"] is False
    assert agent["api_key"] is None
    code, _ = await call(jp_fetch, "POST", "agents", "d", "cart", "get_action",
                         body=obs_payload(obs),
                         headers={"Authorization": f"Bearer {rotated['api_key']}"})
    assert code == 404

    code, _ = await call(jp_fetch, "DELETE", "agents", "api", "agents", "cart")
    assert code == 204
    code, _ = await call(jp_fetch, "GET", "agents", "api", "agents", "cart")
    assert code == 404


async def test_corrupt_checkpoint_fails_alone(jp_fetch: Any, workspace: Path) -> None:
    await create(jp_fetch, "good")
    await create(jp_fetch, "broken", checkpoint="final")
    code, broken = await call(jp_fetch, "GET", "agents", "api", "agents", "broken")
    # The checkpoint itself, not its policy sidecar (step_<N>.policy.npz) beside it: a broken
    # sidecar only sends the worker back to the full runtime, which would then load fine.
    ckpt = next(p for p in (workspace / "experiments" / "cartpole-dqn" / "checkpoints")
                .glob(f"step_{broken['checkpoint_step']}*")
                if not p.name.endswith(".policy.npz"))
    ckpt.write_bytes(b"this is not a checkpoint")
    await call(jp_fetch, "POST", "agents", "api", "agents", "good", "connect")
    await call(jp_fetch, "POST", "agents", "api", "agents", "broken", "connect")
    good = await wait_status(jp_fetch, "good")
    broken = await wait_status(jp_fetch, "broken")
    assert good["status"] == "Deployed"
    assert broken["status"] == "Failed"
    assert broken["error"]
    assert "Traceback" not in broken["error"]
    code, _ = await call(jp_fetch, "POST", "agents", "d", "good", "get_action",
                         body=obs_payload(np.zeros((1, 4), np.float32)),
                         headers={"Authorization": f"Bearer {good['api_key']}"})
    assert code == 200


async def test_missing_checkpoint_fails_with_reason(jp_fetch: Any, workspace: Path) -> None:
    _, agent = await create(jp_fetch, "gone")
    for path in (workspace / "experiments" / "cartpole-dqn" / "checkpoints").glob(
            f"step_{agent['checkpoint_step']}*"):
        path.unlink()
    await call(jp_fetch, "POST", "agents", "api", "agents", "gone", "connect")
    agent = await wait_status(jp_fetch, "gone")
    assert agent["status"] == "Failed"
    assert "no checkpoint at step" in agent["error"] or "missing" in agent["error"]


@pytest.mark.in_process
async def test_health_check_demotes_then_fails(jp_fetch: Any, jp_serverapp: Any) -> None:
    await create(jp_fetch, "flaky")
    await call(jp_fetch, "POST", "agents", "api", "agents", "flaky", "connect")
    assert (await wait_status(jp_fetch, "flaky"))["status"] == "Deployed"
    deployer = jp_serverapp.web_app.settings["agents_workbench_deployer"]
    live = deployer.live("flaky")

    def broken_probe() -> None:
        raise RuntimeError("simulated model fault")

    live.runtime.probe = broken_probe  # fault injection into the real loaded runtime
    agent = await wait_status(jp_fetch, "flaky", ("Pending",), timeout=10)
    assert agent["status"] == "Pending"
    assert "simulated model fault" in agent["error"]
    agent = await wait_status(jp_fetch, "flaky", ("Failed",), timeout=10)
    assert agent["status"] == "Failed"
    assert deployer.live("flaky") is None


@pytest.mark.parametrize("route", ["predict", "generate", "generate_stream"])
async def test_wrong_route_names_the_right_one(jp_fetch: Any, route: str) -> None:
    await create(jp_fetch, "cart")
    await call(jp_fetch, "POST", "agents", "api", "agents", "cart", "connect")
    agent = await wait_status(jp_fetch, "cart")
    code, err = await call(jp_fetch, "POST", "agents", "d", "cart", route, body={},
                           headers={"Authorization": f"Bearer {agent['api_key']}"})
    assert code == 400
    assert "get_action" in err["error"]


async def test_create_agent_options_are_checked_and_kept(jp_fetch: Any) -> None:
    code, agent = await create(jp_fetch, "opts", options={"backend": "local"})
    assert code == 201, agent
    assert agent["options"] == {"backend": "local"}

    code, body = await create(jp_fetch, "typo", options={"backnd": "local"})
    assert code == 400
    assert "backnd" in body["message"]
    assert "known options" in body["message"]
    code, body = await create(jp_fetch, "bad-backend", options={"backend": "kubernetes"})
    assert code == 400
    assert "options.backend" in body["message"]
    code, body = await create(jp_fetch, "not-object", options=["backend"])
    assert code == 400
    assert "JSON object" in body["message"]
