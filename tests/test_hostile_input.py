"""Malformed and hostile payloads: each gets a 4xx JSON error that says what was wrong,
and the server keeps serving. Ends with property-based fuzzing over payload shapes."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.servers import ServerProcess


def npy(arr: np.ndarray, allow_pickle: bool = False) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def module_workspace(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path) -> Path:
    import shutil

    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(demo_experiments, root / "experiments")
    return root


@pytest.fixture(scope="module")
def target(module_workspace: Path) -> Iterator[dict[str, Any]]:
    """One server (1 MiB body limit) with the CartPole DQN deployed, shared by this module."""
    server = ServerProcess(module_workspace,
                           extra_args=["--AgentsWorkbenchApp.max_body_mb=1"]).start()
    try:
        agent = server.deploy("cart", "cartpole-dqn")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {agent['api_key']}"
        yield {"server": server, "url": agent["endpoint"] + "/get_action", "http": session}
    finally:
        server.stop()


def post(target: dict[str, Any], body: Any, *, raw: bytes | None = None) -> requests.Response:
    http: requests.Session = target["http"]
    if raw is not None:
        return http.post(target["url"], data=raw, timeout=30,
                         headers={"Content-Type": "application/json"})
    return http.post(target["url"], json=body, timeout=30)


def assert_still_serving(target: dict[str, Any]) -> None:
    resp = post(target, {"obs": npy(np.zeros((2, 4), np.float32)), "batch_size": 2})
    assert resp.status_code == 200, resp.text


CASES: list[tuple[str, Any, str]] = [
    ("bad base64", {"obs": "not base64 at all!!"}, "base64"),
    ("pickle needed", {"obs": npy(np.array([{"x": 1}], dtype=object), allow_pickle=True)},
     "allow_pickle"),
    ("text dtype", {"obs": npy(np.array([["a", "b", "c", "d"]]))}, "dtype"),
    ("wrong width", {"obs": npy(np.zeros((1, 5), np.float32))}, "shape"),
    ("wrong rank", {"obs": npy(np.zeros((1, 2, 4), np.float32))}, "shape"),
    ("no batch axis", {"obs": npy(np.float32(1.0))}, "shape"),
    ("NaN", {"obs": npy(np.array([[np.nan, 0, 0, 0]], np.float32))}, "NaN"),
    ("inf", {"obs": npy(np.array([[np.inf, 0, 0, 0]], np.float32))}, "NaN or infinity"),
    ("obs missing", {"batch_size": 1}, "obs is required"),
    ("obs a number", {"obs": 3}, "obs"),
    ("mask wrong length", {"obs": npy(np.zeros((1, 4), np.float32)),
                           "action_mask": npy(np.ones((1, 3), np.int8))}, "mask"),
    ("npz instead of npy", {"obs": base64.b64encode(b"PK\x03\x04junk").decode()}, "npy"),
]


@pytest.mark.parametrize(("case", "body", "needle"), CASES, ids=[c[0] for c in CASES])
def test_malformed_payloads_get_a_clear_400(target: dict[str, Any], case: str, body: Any,
                                            needle: str) -> None:
    resp = post(target, body)
    assert resp.status_code == 400, (case, resp.status_code, resp.text)
    error = resp.json()
    assert error["success"] is False
    assert needle.lower() in error["error"].lower(), (case, error)
    assert_still_serving(target)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2, 3]", b'"just a string"', b"",
                                 b"[" * 200_000 + b"]" * 200_000])
def test_non_object_bodies_are_400(target: dict[str, Any], raw: bytes) -> None:
    resp = post(target, None, raw=raw)
    assert resp.status_code == 400, resp.text[:200]
    assert resp.json()["success"] is False
    assert_still_serving(target)


def test_deeply_nested_obs_is_400(target: dict[str, Any]) -> None:
    nested: Any = npy(np.zeros((1, 4), np.float32))
    for _ in range(50):
        nested = {"a": nested}
    resp = post(target, {"obs": nested})
    assert resp.status_code == 400
    assert "nested" in resp.json()["error"]
    assert_still_serving(target)


def test_body_over_the_limit_is_413(target: dict[str, Any]) -> None:
    # Just over the 1 MiB limit. The server reads and drops the body before it answers, so
    # the client reads the 413 and not a reset, however busy the machine.
    big = npy(np.zeros((10_000, 4), np.float64)) * 3
    for _ in range(5):
        resp = post(target, {"obs": big})
        assert resp.status_code == 413
        assert "at most" in resp.json()["error"]
    assert_still_serving(target)


def test_tens_of_megabytes_are_413(target: dict[str, Any]) -> None:
    raw = b'{"obs": "' + b"A" * (40 * 1024 * 1024) + b'"}'
    resp = post(target, None, raw=raw)
    assert resp.status_code == 413
    assert_still_serving(target)


# -- property-based fuzzing ----------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.int64, np.int8, np.uint8, np.bool_, np.float16,
          np.complex64]


@st.composite
def arrays(draw: st.DrawFn) -> str:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    values = draw(st.sampled_from([0.0, 1.0, -3.5, np.nan, np.inf, 1e30]))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf cast to ints on purpose
        return npy(np.full(shape, values).astype(dtype))


leaves = st.one_of(
    arrays(), st.none(), st.integers(), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
)
payload_values = st.recursive(
    leaves, lambda children: st.one_of(st.lists(children, max_size=3),
                                       st.dictionaries(st.text(max_size=5), children,
                                                       max_size=3)),
    max_leaves=6)
payloads = st.fixed_dictionaries(
    {}, optional={"obs": payload_values, "action_mask": payload_values,
                  "hidden_state": payload_values, "env_defined_actions": payload_values,
                  "batch_size": st.one_of(st.integers(), st.text(max_size=3))},
).flatmap(lambda d: st.fixed_dictionaries({k: st.just(v) for k, v in d.items()},
                                          optional={"junk": payload_values}))

FUZZ_CASES = 2500


@settings(max_examples=FUZZ_CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=payloads)
def test_fuzzed_payloads_never_5xx(target: dict[str, Any], body: dict[str, Any]) -> None:
    resp = post(target, body)
    assert resp.status_code in (200, 400), (resp.status_code, resp.text[:300], body)
    answer = resp.json()
    assert answer["success"] is (resp.status_code == 200)
    if resp.status_code == 400:
        assert answer["error"]


def test_server_is_healthy_after_fuzzing(target: dict[str, Any]) -> None:
    assert_still_serving(target)
    agent = target["server"].api("GET", "agents/cart").json()
    assert agent["status"] == "Deployed"
    assert json.dumps(agent)
