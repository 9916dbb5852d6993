"""The workbench under a real JupyterHub 6: its proxy, two users, culling, a stopped server.

One hub for the whole module, started from the shipped
``jupyter-config/jupyterhub/jupyterhub_config.py`` plus a small overlay (DummyAuthenticator,
SimpleLocalProcessSpawner running every user as this OS user with their own HOME, so their
own workspace; free ports; fast activity reports and culling). configurable-http-proxy comes
from npm (scripts/setup.sh installs it under .venv/chp). The module is slow (two single-user
servers, a tiny LLM, a Chromium session and waiting out a cull take a few minutes on a loaded
machine), which is why it starts one hub and runs its steps in order: the cull comes last
because it stops alice's server.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.browser_support import shots
from tests.servers import REPO, copy_workspace, free_port, stop_in_background, wait_until

__all__ = ["shots"]  # a fixture used by name below

# The hub's set-up (a tiny LLM trained, two servers spawned) is charged to the first step.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

SHIPPED = REPO / "jupyter-config" / "jupyterhub" / "jupyterhub_config.py"
CHP = REPO / ".venv" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"
BIN = Path(sys.executable).parent
CULL_TIMEOUT = 16  # seconds of no activity before the culler stops a server (with 12, bob
# was culled once on a machine loaded by other work: late activity reports need the margin)
ACTIVITY_S = 2  # servers report activity, the hub reads the proxy, the culler runs: this often

OVERLAY = '''
c = get_config()  # noqa: F821
load_subconfig({shipped!r})  # noqa: F821
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{"alice", "bob"}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {homes!r} + "/{{username}}"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args.append("--LabApp.expose_app_in_browser=True")  # the browser step runs cells
c.Spawner.args.append("--ServerApp.allow_root=True")  # CI runs as root
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/cookie_secret"
c.JupyterHub.pid_file = {state!r} + "/jupyterhub.pid"
# The culler runs from the last step (alice would be culled while bob's server starts);
# the same service name keeps the shipped role and its scopes.
c.JupyterHub.services = [s for s in c.JupyterHub.services if s["name"] != "idle-culler"] + [
    {{"name": "idle-culler", "api_token": {culler_token!r}}},
    {{"name": "test-admin", "api_token": {admin_token!r}}},
]
c.JupyterHub.load_roles.append({{"name": "admin", "services": ["test-admin"]}})

def keep_alive_for_bob(spawner):
    # bob's idle Deployed agents keep his server up; alice's do not (the shipped default).
    if spawner.user.name == "bob":
        spawner.args = [a.replace("deployed_keeps_alive=False", "deployed_keeps_alive=True")
                        for a in spawner.args]

c.Spawner.pre_spawn_hook = keep_alive_for_bob
'''


class Hub:
    """The running hub: its public URL, admin API and per-user helpers."""

    def __init__(self, url: str, admin_token: str, password: str, state: Path,
                 homes: Path) -> None:
        self.url = url
        self.password = password
        self.state = state
        self.homes = homes
        self.admin = requests.Session()
        self.admin.headers["Authorization"] = f"token {admin_token}"
        self.tokens: dict[str, str] = {}

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.admin.request(method, f"{self.url}hub/api/{path}", timeout=60, **kwargs)

    def server(self, user: str) -> dict[str, Any] | None:
        """The user's default server as the hub reports it, or None when not running."""
        servers = self.api("GET", f"users/{user}").json().get("servers", {})
        return servers.get("") if isinstance(servers, dict) else None

    def start(self, user: str) -> None:
        resp = self.api("POST", f"users/{user}/server")
        assert resp.status_code in (201, 202), resp.text
        wait_until(lambda: (s := self.server(user)) is not None and s.get("ready"),
                   timeout=240, what=f"{user}'s server to be ready")

    def token(self, user: str) -> str:
        """A hub API token of ``user`` (what a user makes on the hub's token page)."""
        if user not in self.tokens:
            resp = self.api("POST", f"users/{user}/tokens", json={"note": "test"})
            assert resp.status_code in (200, 201), resp.text
            self.tokens[user] = resp.json()["token"]
        return self.tokens[user]

    def user_api(self, user: str, method: str, path: str, *, as_user: str | None = None,
                 **kwargs: Any) -> requests.Response:
        """``/user/<user>/agents/api/<path>`` through the proxy with ``as_user``'s token."""
        headers = {"Authorization": f"token {self.token(as_user or user)}"}
        return requests.request(method, f"{self.url}user/{user}/agents/api/{path}",
                                headers=headers, timeout=60, allow_redirects=False, **kwargs)

    def deploy(self, user: str, name: str, experiment: str) -> dict[str, Any]:
        resp = self.user_api(user, "POST", "agents", json={"name": name,
                                                           "experiment": experiment})
        assert resp.status_code == 201, resp.text
        assert self.user_api(user, "POST", f"agents/{name}/connect").status_code == 200
        return self.wait_deployed(user, name)

    def deployed(self, user: str, name: str, experiment: str = "cartpole-dqn") -> dict[str, Any]:
        """The user's agent ``name``, deployed now if an earlier step did not (steps may run
        in another order under pytest-xdist)."""
        if self.server(user) is None:
            self.start(user)
        found = self.user_api(user, "GET", f"agents/{name}")
        if found.status_code == 404:
            return self.deploy(user, name, experiment)
        return self.wait_deployed(user, name)

    def wait_deployed(self, user: str, name: str) -> dict[str, Any]:
        return dict(wait_until(
            lambda: (a := self.user_api(user, "GET", f"agents/{name}").json())["status"]
            in ("Deployed", "Failed") and a, timeout=240, what=f"{user}'s {name} Deployed"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, demo_experiments: Path) -> Iterator[Hub]:
    """JupyterHub + configurable-http-proxy with alice and bob, each with a workspace."""
    if not CHP.exists():
        pytest.fail(f"configurable-http-proxy is missing at {CHP}: run scripts/setup.sh "
                    "(it installs it from npm; node and npm come from apt).")
    from server_extension.demos.llm import build_llm_demo

    base = tmp_path_factory.mktemp("hub")
    state, homes, app_root = base / "state", base / "homes", base / "team"
    state.mkdir()
    for user in ("alice", "bob"):
        copy_workspace(homes / user / "agents-workbench", demo_experiments)
    build_llm_demo(homes / "alice" / "agents-workbench", quick=True)
    copy_workspace(app_root, demo_experiments)
    port, admin_token, password = free_port(), secrets.token_hex(16), secrets.token_hex(8)
    culler_token = secrets.token_hex(16)
    url = f"http://localhost:{port}/"  # the public URL; servers listen on 127.0.0.1
    config = base / "jupyterhub_config.py"
    config.write_text(OVERLAY.format(
        shipped=str(SHIPPED), password=password, homes=str(homes),
        singleuser=str(BIN / "jupyterhub-singleuser"), hub_port=free_port(),
        proxy_api_port=free_port(), chp=str(CHP), state=str(state), admin_token=admin_token,
        culler_token=culler_token))
    app_token = secrets.token_hex(16)
    env = {**os.environ,
           "AWB_HUB_BIND_URL": f"http://127.0.0.1:{port}",
           "AWB_HUB_PUBLIC_URL": url,
           "AWB_HUB_PYTHON": sys.executable,
           "AWB_HUB_CULL_TIMEOUT": str(CULL_TIMEOUT),
           "AWB_HUB_CULL_EVERY": str(ACTIVITY_S),
           "AWB_HUB_ACTIVITY_INTERVAL": str(ACTIVITY_S),
           "AWB_HUB_STOPPED_PORT": str(free_port()),
           "AWB_HUB_APP_ROOT": str(app_root),
           "AWB_HUB_APP_PORT": str(free_port()),
           "AWB_HUB_APP_TOKEN": app_token,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in ("AGENTS_WORKBENCH_ROOT", "AGENTS_WORKBENCH_URL", "AGENTS_WORKBENCH_TOKEN",
                 "JUPYTER_RUNTIME_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR"):
        env.pop(name, None)
    log = (state / "hub.log").open("wb")
    proc = subprocess.Popen([str(BIN / "jupyterhub"), "-f", str(config)], cwd=state, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    made = Hub(url, admin_token, password, state, homes)
    made.app_token = app_token  # type: ignore[attr-defined]
    made.culler_token = culler_token  # type: ignore[attr-defined]
    try:
        wait_until(lambda: _answers(f"{url}hub/api/"), timeout=120, what="the hub")
        made.start("alice")
        made.start("bob")
        yield made
    finally:
        made.admin.close()
        log.close()  # the hub writes through its own copy; hub.log stays in the state folder
        # The hub stops its services one after another, each given its spawner's timeouts,
        # then the users' servers: about a minute of waiting, left to run beside the next
        # module (the session waits for it at its end; past 90 s the hub's session is killed).
        stop_in_background(proc, grace=90)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


# -- the steps, in order --------------------------------------------------------------------


def test_01_workspaces_are_provisioned_per_user(hub: Hub) -> None:
    for user in ("alice", "bob"):
        notebook = hub.homes / user / "agents-workbench" / "notebooks" / "Agents.ipynb"
        assert notebook.exists(), user
    # Trusted on first spawn: signed in this OS user's notary database.
    import nbformat
    from nbformat.sign import NotebookNotary

    alice_home = hub.homes / "alice"
    notary = NotebookNotary(data_dir=str(alice_home / ".local" / "share" / "jupyter"))
    nb = nbformat.read(str(alice_home / "agents-workbench" / "notebooks" / "Agents.ipynb"),
                       as_version=4)
    assert notary.check_signature(nb)


def test_02_endpoints_are_public_and_clients_work_through_the_proxy(hub: Hub) -> None:
    from agilerl.arena.inference import Agent

    agent = hub.deployed("alice", "cartpole")
    assert agent["status"] == "Deployed", agent
    assert agent["endpoint"] == f"{hub.url}user/alice/agents/d/cartpole"
    server = hub.user_api("alice", "GET", "server").json()
    assert server["public_url"] == f"{hub.url}user/alice/"
    obs = np.zeros((3, 4), np.float32)
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        assert client.metadata is not None
        assert client.metadata.agent is not None
        assert client.metadata.agent.algo == "DQN"
        actions, _ = client.get_action(obs, batched=True)
    assert np.asarray(actions).shape == (3,)


def test_03_arena_cli_and_openai_client_through_the_proxy(hub: Hub, tmp_path: Path) -> None:
    token = hub.user_api("alice", "POST", "tokens", json={"name": "cli"}).json()["token"]
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "250",
           "ARENA_BASE_URL": f"{hub.url}user/alice/agents/arena", "ARENA_API_KEY": token,
           "ARENA_KEYCLOAK_URL": "http://127.0.0.1:9"}
    listed = subprocess.run([str(BIN / "arena"), "projects", "list"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    assert "classic" in listed.stdout

    from openai import OpenAI

    # Right after Connect a model is still loading (an LLM takes seconds in a new worker):
    # a caller with a valid credential is told to retry, not that there is no such agent.
    created = hub.user_api("alice", "POST", "agents", json={"name": "chat",
                                                           "experiment": "tiny-chat-sft"})
    assert created.status_code == 201, created.text
    assert hub.user_api("alice", "POST", "agents/chat/connect").status_code == 200
    loading = requests.get(f"{hub.url}user/alice/agents/d/chat/status", timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
    assert loading.status_code == 503, loading.text
    assert loading.headers["Retry-After"]
    assert "is loading" in loading.json()["error"]
    chat = hub.wait_deployed("alice", "chat")
    assert chat["status"] == "Deployed", chat
    with OpenAI(base_url=f"{chat['endpoint']}/v1", api_key=chat["api_key"]) as client:
        answer = client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=4,
            temperature=0)
    assert answer.choices[0].message.content is not None


def test_04_other_users_are_refused(hub: Hub) -> None:
    alice = hub.deployed("alice", "cartpole")
    bob_agent = hub.deployed("bob", "bobs")
    bob_token = hub.user_api("bob", "POST", "tokens", json={"name": "x"}).json()["token"]
    # bob's hub token on alice's management API: the hub's auth refuses it.
    cross = hub.user_api("alice", "GET", "agents", as_user="bob")
    assert cross.status_code == 403, cross.status_code
    body = {"obs": None}
    for key in (bob_agent["api_key"], bob_token, hub.token("bob")):
        resp = requests.post(f"{alice['endpoint']}/get_action", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 401, resp.text
        assert resp.json()["success"] is False


@pytest.mark.browser
def test_05_the_panel_through_the_hub_shows_proxy_urls_only(hub: Hub, shots: Any) -> None:
    from tests.browser_support import DOCS_SHOTS, in_browser, panel_loaded, pill, row
    from tests.test_browser_lab import KERNEL_IDLE

    alice = hub.deployed("alice", "cartpole")
    texts: dict[str, str] = {}

    def steps(page: Any) -> None:
        page.goto(f"{hub.url}hub/login")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", hub.password)
        page.click("input[type=submit], button[type=submit]")
        page.wait_for_url("**/user/alice/lab/**", timeout=120_000)
        page.wait_for_function(KERNEL_IDLE, timeout=180_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        panel_loaded(page)
        wait_until(lambda: "localhost" in page.locator(".awb-panel").inner_text(),
                   timeout=60, what="the public URL in the panel")
        # The expanded row: endpoint, key field and the code snippets (ARENA_BASE_URL...).
        pill(page, "cartpole", "Deployed").wait_for(timeout=120_000)
        chevron = row(page, "cartpole").locator("button:has(i.fa-chevron-down)").first
        chevron.scroll_into_view_if_needed()
        chevron.click()
        page.locator(".aw-kt-value").wait_for()
        page.locator(".awb-details").get_by_text("/user/alice/agents/d/cartpole").first \
            .wait_for()
        texts["panel"] = page.locator(".awb-panel").inner_text()
        if os.environ.get("AGENTS_WORKBENCH_SCREENSHOTS") == "1":
            DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator(".awb-panel").screenshot(path=str(DOCS_SHOTS / "jupyterhub.png"))

    in_browser(hub.url, steps, shots, timeout=600)
    text = texts["panel"]
    assert f"{hub.url}user/alice/" in text
    assert f"{hub.url}user/alice/agents/d/cartpole" in text
    assert "127.0.0.1" not in text
    assert alice["endpoint"].startswith(hub.url)
    # The page is closed: stop its kernel, whose panel would otherwise poll for a while.
    kernels = requests.get(f"{hub.url}user/alice/api/kernels", timeout=30,
                           headers={"Authorization": f"token {hub.token('alice')}"}).json()
    for kernel in kernels:
        requests.delete(f"{hub.url}user/alice/api/kernels/{kernel['id']}", timeout=30,
                        headers={"Authorization": f"token {hub.token('alice')}"})


def test_06_the_voila_app_is_a_hub_service(hub: Hub) -> None:
    token = hub.app_token  # type: ignore[attr-defined]
    url = f"{hub.url}services/agents-app/agents/api/agents"
    last: list[str] = []
    try:
        resp = wait_until(lambda: _get_ok(url, token, last), timeout=120,
                          what="the app service")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its last answer: {last[-1:]}") from None
    assert resp.json() == {"agents": []}
    refused = requests.get(url, timeout=30, allow_redirects=False)
    assert refused.status_code in (302, 401, 403)


def _get_ok(url: str, token: str, answers: list[str]) -> requests.Response | None:
    """The answer to a GET when it is 200, else None; every answer is appended to ``answers``."""
    try:
        resp = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=10)
    except requests.RequestException as exc:
        answers.append(repr(exc))
        return None
    answers.append(f"{resp.status_code} {resp.text[:300]}")
    return resp if resp.status_code == 200 else None


def test_07_culling_with_and_without_traffic(hub: Hub) -> None:
    """Calls to alice's agent keep her server up past the cull timeout; once they stop it
    is culled (her agents do not keep it alive); bob's idle Deployed agent keeps his up
    (deployed_keeps_alive). Then alice's endpoints answer JSON 503, not the hub's HTML."""
    # About 70 s: it must outlast the hub's cull timeout twice (traffic, then none).
    alice = hub.deployed("alice", "cartpole")
    hub.deployed("bob", "bobs")
    headers = {"Authorization": f"Bearer {alice['api_key']}"}

    def called_and_seen() -> bool:
        # Earlier steps may have left alice idle for longer than the cull timeout: the culler
        # must first see the calls' activity, or its first round culls her at once.
        requests.post(f"{alice['endpoint']}/get_action", json=obs_body(1), headers=headers,
                      timeout=30)
        server = hub.server("alice") or {}
        seen = server.get("last_activity")
        if not seen:
            return False
        when = datetime.fromisoformat(str(seen).replace("Z", "+00:00"))
        return (datetime.now(UTC) - when).total_seconds() < CULL_TIMEOUT / 3

    wait_until(called_and_seen, timeout=120, what="the hub to see alice's calls as activity")
    # The shipped culler's command, with this test's timeout, as an external service.
    culler = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub_idle_culler", f"--url={hub.url}hub/api",
         f"--timeout={CULL_TIMEOUT}", f"--cull-every={ACTIVITY_S}"],
        env={**os.environ, "JUPYTERHUB_API_TOKEN": hub.culler_token},  # type: ignore[attr-defined]
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _cull_and_check(hub, alice, headers)
    finally:
        culler.terminate()
        culler.wait(30)
    hub.start("alice")  # for any step that runs after this one


def _cull_and_check(hub: Hub, alice: dict[str, Any], headers: dict[str, str]) -> None:
    busy_until = time.monotonic() + CULL_TIMEOUT * 2
    while time.monotonic() < busy_until:
        resp = requests.post(f"{alice['endpoint']}/get_action", json=obs_body(1),
                             headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        time.sleep(0.5)
    assert hub.server("alice") is not None, "culled although its agent was being called"
    bob_idle_since = time.monotonic()  # bob's last call was in an earlier step
    wait_until(lambda: hub.server("alice") is None, timeout=CULL_TIMEOUT * 8,
               what="alice's idle server to be culled")
    wait_until(lambda: time.monotonic() - bob_idle_since > CULL_TIMEOUT * 2,
               timeout=CULL_TIMEOUT * 3, what="bob idle for twice the cull timeout")
    assert hub.server("bob") is not None, "bob's server was culled despite deployed_keeps_alive"

    # alice's server is not running: JSON 503 for every kind of client.
    status = requests.get(f"{alice['endpoint']}/status", timeout=30, allow_redirects=False)
    assert status.status_code == 503, status.text
    assert "the user's server is not running" in status.json()["error"].lower()
    assert status.headers["Retry-After"]
    act = requests.post(f"{alice['endpoint']}/get_action", json=obs_body(1), headers=headers,
                        timeout=30, allow_redirects=False)
    assert act.status_code == 503
    assert act.json()["success"] is False
    from agilerl.arena.exceptions import ArenaInferenceError
    from agilerl.arena.inference import Agent

    with Agent(alice["endpoint"], api_key=alice["api_key"], probe_on_init=False) as client, \
            pytest.raises(ArenaInferenceError) as info:
        client.status()
    assert info.value.status_code == 503
    # Browsers still get the hub's own page for everything else.
    page = requests.get(f"{hub.url}user/alice/lab", timeout=30, allow_redirects=False)
    assert page.status_code == 307
    assert page.headers["Location"].endswith("/hub/user/alice/lab")


def obs_body(batch: int) -> dict[str, Any]:
    """A get_action body with ``batch`` CartPole observations (base64 .npy)."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((batch, 4), np.float32), allow_pickle=False)
    return {"obs": base64.b64encode(buf.getvalue()).decode(), "batch_size": batch}
