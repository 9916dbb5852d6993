"""Every route against every kind of credential: the two auth worlds never stand in for each other.

Runs against one real child-process server per module (token auth, no unauthenticated
access) with agents a and b deployed once; a's key is rotated once at set-up so the old key
is a rotated-away one. No case changes that state when the server behaves; the cases that
could (management verbs, forged cross-site posts) check afterwards that a is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import ServerProcess, copy_workspace, running_server

# (method, suffix under agents/d/<name>/, JSON body)
INFERENCE_ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "get_action", {"obs": None}),
    ("POST", "predict", {"inputs": None}),
    ("POST", "generate", {"prompts": ["hi"]}),
    ("POST", "generate_stream", {"prompt": "hi"}),
    ("GET", "sessions", None),
    ("GET", "sessions/abc", None),
    ("DELETE", "sessions/abc", None),
]
MANAGEMENT_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "experiments", None),
    ("GET", "agents", None),
    ("POST", "agents", {"name": "x", "experiment": "cartpole-dqn"}),
    ("GET", "agents/a", None),
    ("DELETE", "agents/a", None),
    ("POST", "agents/a/connect", {}),
    ("POST", "agents/a/disconnect", {}),
    ("POST", "agents/a/rotate-key", {}),
    ("GET", "agents/a/metrics", None),
    ("GET", "agents/a/requests", None),
    ("PUT", "agents/a/payload-capture", {"enabled": True}),
]


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory: pytest.TempPathFactory,
               demo_experiments: Path) -> Iterator[dict[str, Any]]:
    """Agents a and b deployed; a's key rotated once (old key kept for the tests)."""
    root = copy_workspace(tmp_path_factory.mktemp("auth-matrix"), demo_experiments)
    with running_server(root) as server:
        a = server.deploy("a", "cartpole-dqn")
        b = server.deploy("b", "cartpole-dqn")
        rotated = server.api("POST", "agents/a/rotate-key").json()
        assert rotated["api_key"] != a["api_key"]
        yield {"server": server, "old_a": a["api_key"], "a": rotated["api_key"],
               "b": b["api_key"], "endpoint": rotated["endpoint"]}


def assert_a_untouched(ctx: dict[str, Any]) -> None:
    """Agent a is still Deployed with the key set-up gave it: no refused call acted on it."""
    agent = ctx["server"].api("GET", "agents/a").json()
    assert (agent["status"], agent["api_key"]) == ("Deployed", ctx["a"]), agent


def inference(ctx: dict[str, Any], method: str, suffix: str, body: Any,
              headers: dict[str, str], *, url_suffix: str = "") -> requests.Response:
    return requests.request(method, f"{ctx['endpoint']}/{suffix}{url_suffix}", json=body,
                            headers=headers, timeout=30)


@pytest.mark.parametrize(("method", "suffix", "body"), INFERENCE_ROUTES)
def test_inference_routes_refuse_every_wrong_credential(two_agents: dict[str, Any], method: str,
                                                         suffix: str, body: Any) -> None:
    server: ServerProcess = two_agents["server"]
    cases = {
        "no credential": {},
        "wrong key": {"Authorization": "Bearer awb_wrong"},
        "another deployment's key": {"Authorization": f"Bearer {two_agents['b']}"},
        "rotated-away key": {"Authorization": f"Bearer {two_agents['old_a']}"},
        "Jupyter token as Bearer": {"Authorization": f"Bearer {server.token}"},
        "Jupyter token as token": {"Authorization": f"token {server.token}"},
        "empty bearer": {"Authorization": "Bearer "},
    }
    for case, headers in cases.items():
        resp = inference(two_agents, method, suffix, body, headers)
        assert resp.status_code == 401, (case, resp.status_code, resp.text)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), case
        assert resp.json()["success"] is False, case
    # The right key gets past auth: any answer but 401/403 (a DQN answers 400 to LLM routes).
    resp = inference(two_agents, method, suffix, body,
                     {"Authorization": f"Bearer {two_agents['a']}"})
    assert resp.status_code not in (401, 403), resp.text


@pytest.mark.parametrize(("method", "suffix", "body"), INFERENCE_ROUTES)
def test_key_in_query_string_is_refused(two_agents: dict[str, Any], method: str, suffix: str,
                                        body: Any) -> None:
    for param in ("api_key", "token", "key"):
        resp = inference(two_agents, method, suffix, body, {},
                         url_suffix=f"?{param}={two_agents['a']}")
        assert resp.status_code == 400, (param, resp.text)
        assert "Authorization" in resp.json()["error"]


def test_status_is_public_and_reveals_nothing_secret(two_agents: dict[str, Any]) -> None:
    resp = requests.get(two_agents["endpoint"] + "/status", timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    # Anonymous: ids only, not the agent's kind (status_kind_public is off).
    assert set(body) == {"success", "deployment_id", "instance_id"}
    for header in ({"Authorization": "Bearer awb_wrong"},
                   {"Authorization": f"Bearer {two_agents['b']}"}):
        wrong = requests.get(two_agents["endpoint"] + "/status", headers=header, timeout=10)
        assert wrong.json() == body, header
    keyed = requests.get(two_agents["endpoint"] + "/status", timeout=10,
                         headers={"Authorization": f"Bearer {two_agents['a']}"}).json()
    assert keyed["agent"]["algo"] == "DQN"
    assert keyed["deployment_id"] == body["deployment_id"]
    text = resp.text
    for secret in (two_agents["a"], two_agents["old_a"], two_agents["b"],
                   two_agents["server"].token):
        assert secret not in text
    assert str(two_agents["server"].root) not in text


@pytest.mark.parametrize(("method", "suffix", "body"), INFERENCE_ROUTES)
def test_unknown_agent_and_wrong_key_look_the_same(two_agents: dict[str, Any], method: str,
                                                   suffix: str, body: Any) -> None:
    """No name probing: without a valid credential a made-up name and a real one with a
    wrong key get the same status, headers that matter and body (but for the name)."""
    base = two_agents["endpoint"].rpartition("/agents/d/")[0]
    for headers in ({"Authorization": "Bearer awb_made_up"},
                    {"Authorization": f"Bearer {two_agents['old_a']}"}, {}):
        real = requests.request(method, f"{base}/agents/d/a/{suffix}", json=body,
                                headers=headers, timeout=30)
        # Same length as "a" so even the body's length cannot tell them apart.
        made_up = requests.request(method, f"{base}/agents/d/z/{suffix}", json=body,
                                   headers=headers, timeout=30)
        assert real.status_code == made_up.status_code == 401, (headers, real.text)
        assert real.text == made_up.text, (real.text, made_up.text)
        assert real.headers["WWW-Authenticate"] == made_up.headers["WWW-Authenticate"]


def test_a_token_holder_learns_what_is_there(two_agents: dict[str, Any]) -> None:
    """A valid credential (a workspace token) gets the helpful 404 for a name not deployed."""
    server: ServerProcess = two_agents["server"]
    token = server.api("POST", "tokens", json={"name": "probe-check"}).json()["token"]
    base = two_agents["endpoint"].rpartition("/agents/d/")[0]
    try:
        resp = requests.post(f"{base}/agents/d/nothing/get_action", json={"obs": None},
                             headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert resp.status_code == 404
        assert "does not exist" in resp.json()["error"]
    finally:
        for row in server.api("GET", "tokens").json()["tokens"]:
            if row["name"] == "probe-check":
                server.api("DELETE", f"tokens/{row['id']}")


@pytest.mark.parametrize(("method", "suffix", "body"), MANAGEMENT_ROUTES)
def test_management_refuses_deployment_keys_and_anonymous(two_agents: dict[str, Any],
                                                          method: str, suffix: str,
                                                          body: Any) -> None:
    server: ServerProcess = two_agents["server"]
    url = server.url + "agents/api/" + suffix
    for headers in ({}, {"Authorization": f"Bearer {two_agents['a']}"},
                    {"Authorization": f"token {two_agents['a']}"}):
        resp = requests.request(method, url, json=body, headers=headers, timeout=10,
                                allow_redirects=False)
        assert resp.status_code == 403, (headers, resp.status_code, resp.text)
    # The deployment key in the query string does not open it either.
    resp = requests.request(method, url + f"?token={two_agents['a']}", json=body, timeout=10,
                            allow_redirects=False)
    assert resp.status_code == 403
    assert_a_untouched(two_agents)
    assert {x["name"] for x in server.api("GET", "agents").json()["agents"]} == {"a", "b"}


def _cookie_session(server: ServerProcess) -> requests.Session:
    """A browser-like session logged in with Jupyter's cookie (no token header)."""
    browser = requests.Session()
    login = browser.get(server.url + "login", timeout=10)
    xsrf = browser.cookies.get("_xsrf")
    match = re.search(r'name="_xsrf" value="([^"]+)"', login.text)
    resp = browser.post(server.url + "login", timeout=10, allow_redirects=False,
                        data={"password": server.token,
                              "_xsrf": match.group(1) if match else xsrf})
    assert resp.status_code in (302, 303), resp.text
    assert browser.get(server.url + "agents/api/agents", timeout=10).status_code == 200
    return browser


def test_cross_site_post_with_only_the_cookie_is_refused(two_agents: dict[str, Any]) -> None:
    server: ServerProcess = two_agents["server"]
    browser = _cookie_session(server)
    # A forged cross-site post carries the cookie but not the XSRF token. Jupyter refuses it
    # before any handler runs: 403 without an Origin, 404 from a foreign Origin.
    for suffix in ("agents/a/disconnect", "agents/a/rotate-key"):
        resp = browser.post(server.url + "agents/api/" + suffix, timeout=10)
        assert resp.status_code == 403, (suffix, resp.text)
        resp = browser.post(server.url + "agents/api/" + suffix, timeout=10,
                            headers={"Origin": "http://evil.example"})
        assert resp.status_code in (403, 404), (suffix, resp.text)
    resp = browser.delete(server.url + "agents/api/agents/a", timeout=10,
                          headers={"Origin": "http://evil.example"})
    assert resp.status_code in (403, 404)
    assert_a_untouched(two_agents)
    # The cookie is no deployment key either.
    resp = browser.post(two_agents["endpoint"] + "/get_action", json={"obs": None}, timeout=10)
    assert resp.status_code == 401


def test_every_route_has_an_explicit_auth_decision() -> None:
    """Walk every registered workbench route and verb: Jupyter auth, Bearer key, or public."""
    from jupyter_server.serverapp import _has_tornado_web_authenticated
    from tornado import web

    from server_extension.handlers import all_routes
    from server_extension.handlers.control_plane import ControlPlaneHandler
    from server_extension.handlers.inference import InferenceHandler

    checked = 0
    for pattern, handler in all_routes():
        for verb in handler.SUPPORTED_METHODS:
            method = getattr(handler, verb.lower())
            if method is web.RequestHandler._unimplemented_method:
                continue
            checked += 1
            if issubclass(handler, InferenceHandler):
                decision = getattr(method, "auth_decision", None)
                assert decision in ("bearer", "public"), (pattern, verb)
                if decision == "public":
                    assert pattern.endswith("/status") or "rest" in pattern, (pattern, verb)
            elif issubclass(handler, ControlPlaneHandler):
                decision = getattr(method, "auth_decision", None)
                assert decision in ("access_token", "public"), (pattern, verb)
                if decision == "public":
                    assert pattern.endswith("/capabilities"), (pattern, verb)
            elif verb == "OPTIONS":
                # Jupyter's CORS preflight, inherited from APIHandler: does nothing, public.
                assert hasattr(method, "__allow_unauthenticated"), (pattern, verb)
            else:
                # Management verbs: Jupyter's own check that @web.authenticated is present.
                assert _has_tornado_web_authenticated(method), (pattern, verb)
    assert checked >= 14


# (method, path under agents/arena/, JSON body): the Arena control plane.
CONTROL_PLANE_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "api/cli/v1/projects", None),
    ("GET", "api/cli/v1/experiments/list?project=classic", None),
    ("GET", "api/cli/v1/experiments/jobs/checkpoints?experiment_name=cartpole-dqn", None),
    ("GET", "api/cli/v1/experiments/metrics?experiment_name=cartpole-dqn", None),
    ("POST", "api/cli/v1/inference/deploy", {"experiment_name": "cartpole-dqn"}),
    ("GET", "api/cli/v1/inference/deployments/list", None),
    ("GET", "api/cli/v1/inference/deployments/one?name=a", None),
    ("GET", "api/users/current", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_PLANE_ROUTES)
def test_control_plane_takes_access_tokens_only(two_agents: dict[str, Any], method: str,
                                                path: str, body: Any) -> None:
    server: ServerProcess = two_agents["server"]
    url = server.url + "agents/arena/" + path
    for headers in ({}, {"Authorization": f"Bearer {two_agents['a']}"},
                    {"Authorization": f"Bearer {server.token}"},
                    {"Authorization": f"token {server.token}"},
                    {"Authorization": "Bearer arena_pat_0_forged"}):
        resp = requests.request(method, url, json=body, headers=headers, timeout=10,
                                allow_redirects=False)
        assert resp.status_code == 401, (headers, resp.status_code, resp.text)
        assert resp.headers["Content-Type"].startswith("application/json")
    # Jupyter's login cookie is not a credential here either.
    resp = _cookie_session(server).request(method, url, json=body, timeout=10)
    assert resp.status_code == 401
    token = server.api("POST", "tokens", json={"name": f"matrix {method} {path}"}).json()
    try:
        resp = requests.request(method, url, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {token['token']}"})
        assert resp.status_code == 200, resp.text
    finally:
        server.api("DELETE", f"tokens/{token['id']}")
        if method == "POST":  # the deploy created an agent: leave the server as it was
            server.api("DELETE", "agents/cartpole-dqn")
    assert_a_untouched(two_agents)


def test_inference_takes_an_access_token_too(two_agents: dict[str, Any]) -> None:
    server: ServerProcess = two_agents["server"]
    token = server.api("POST", "tokens", json={"name": "matrix inference"}).json()
    headers = {"Authorization": f"Bearer {token['token']}"}
    resp = inference(two_agents, "POST", "get_action", {"obs": None}, headers)
    assert resp.status_code == 400  # past auth: the missing obs is the complaint
    assert "obs is required" in resp.json()["error"]
    server.api("DELETE", f"tokens/{token['id']}")
    resp = inference(two_agents, "POST", "get_action", {"obs": None}, headers)
    assert resp.status_code == 401


def test_endpoints_use_the_front_most_forwarded_scheme(two_agents: dict[str, Any]) -> None:
    """Behind TLS the front end sends https and the hub's proxy appends http: the first value
    counts (the test's loopback is a trusted proxy by default)."""
    server: ServerProcess = two_agents["server"]
    agent = server.api("GET", "agents/a", headers={
        "X-Forwarded-Proto": "https,http", "X-Forwarded-Host": "hub.example.org"}).json()
    assert agent["endpoint"] == "https://hub.example.org/agents/d/a"
    info = server.api("GET", "server", headers={"X-Scheme": "https"}).json()
    assert info["public_url"].startswith("https://127.0.0.1:")
    assert info["arena_base_url"] == info["public_url"] + "agents/arena"


def test_the_panel_page_origin_names_the_public_host(two_agents: dict[str, Any]) -> None:
    server: ServerProcess = two_agents["server"]
    page = {"X-Agents-Workbench-Page-Origin": "https://lab.example.org"}
    assert server.api("GET", "agents/a", headers=page).json()["endpoint"] == (
        "https://lab.example.org/agents/d/a")
    # Not a bare origin: ignored, the request's own host stays.
    bad = {"X-Agents-Workbench-Page-Origin": "https://lab.example.org/evil?x=1"}
    assert server.api("GET", "agents/a", headers=bad).json()["endpoint"].startswith(
        "http://127.0.0.1:")
    # Only Jupyter-authenticated calls may name it: the control plane ignores it.
    token = server.api("POST", "tokens", json={"name": "origin-check"}).json()["token"]
    try:
        deployments = requests.get(
            server.url + "agents/arena/api/cli/v1/inference/deployments/list", timeout=30,
            headers={"Authorization": f"Bearer {token}", **page})
        assert deployments.status_code == 200, deployments.text
        assert "/agents/d/a" in deployments.text
        assert "lab.example.org" not in deployments.text
    finally:
        for row in server.api("GET", "tokens").json()["tokens"]:
            if row["name"] == "origin-check":
                server.api("DELETE", f"tokens/{row['id']}")
