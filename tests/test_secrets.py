"""Secrets hygiene: deployment keys stay out of logs, tracebacks and listings; the files that
hold them are owner-only; keys are compared in constant time.

One real ``jupyter server`` child process per module, logging at DEBUG (so every request is
access-logged, successes included) into a file these tests read. Every key the registry
hands out starts with ``awb_``, so "no key in the log" is checked as "no ``awb_`` anywhere".
Notebook outputs and widget state are covered by test_notebooks.py and test_panel.py.
"""

from __future__ import annotations

import ast
import base64
import inspect
import io
import stat
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from server_extension.workspace.registry import KEY_PREFIX
from tests.servers import ServerProcess, copy_workspace, running_server

# Server-side faults can only be provoked from inside the server process: this Jupyter config
# file (plain Python, run by the server at start-up) makes the CartPole policy raise on one
# sentinel observation and makes rotate-key fail for agent "boom" after the new key exists.
SENTINEL = 12345.0
FAULTS = textwrap.dedent(f"""
    import server_extension.serving.deployer as deployer
    import server_extension.serving.runtimes.agilerl as agilerl

    real_get_action = agilerl.AgileRLRuntime.get_action
    real_rotate = deployer.Deployer.rotate_key

    def get_action(self, obs, **kwargs):
        if getattr(obs, "size", 0) and float(obs.flat[0]) == {SENTINEL}:
            raise RuntimeError("injected fault: the policy blew up")
        return real_get_action(self, obs, **kwargs)

    def rotate_key(self, name):
        record = real_rotate(self, name)
        if name == "boom":
            raise RuntimeError("injected fault: rotate-key failed after the new key was made")
        return record

    agilerl.AgileRLRuntime.get_action = get_action
    deployer.Deployer.rotate_key = rotate_key
""")


def npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


OBS = {"obs": npy(np.zeros((1, 4), np.float32)), "batch_size": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           demo_experiments: Path) -> Iterator[ServerProcess]:
    root = copy_workspace(tmp_path_factory.mktemp("secrets"), demo_experiments)
    config = root / "faults_config.py"
    config.write_text(FAULTS)
    # The faults are patched into the server process by its config file, so the agents run
    # there (isolation=thread). Under worker processes a model's traceback goes to its
    # worker's log, and the worker never sees a key: the server checks it before relaying.
    with running_server(root, extra_args=["--ServerApp.log_level=DEBUG",
                                          "--AgentsWorkbenchApp.isolation=thread",
                                          f"--config={config}"]) as proc:
        yield proc


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def get_action(agent: dict[str, Any], key: str, body: Any = None, query: str = "",
               ) -> requests.Response:
    return requests.post(f"{agent['endpoint']}/get_action{query}", json=body or OBS,
                         headers=bearer(key), timeout=30)


def assert_no_key_in(text: str, where: str, *keys: str) -> None:
    for key in keys:
        assert key not in text, f"a deployment key appears in {where}"
    assert KEY_PREFIX not in text, f"something key-shaped ({KEY_PREFIX}...) appears in {where}"


def test_keys_never_reach_the_server_log(server: ServerProcess) -> None:
    start = len(server.log())
    agent = server.deploy("logged", "cartpole-dqn")
    first = agent["api_key"]
    assert get_action(agent, first).status_code == 200
    rotated = server.api("POST", "agents/logged/rotate-key").json()["api_key"]
    assert get_action(agent, rotated).status_code == 200
    # Failed auth: a wrong key, the rotated-away key, a key of the wrong shape of header.
    wrong = KEY_PREFIX + "not-the-key-0123456789"
    assert get_action(agent, wrong).status_code == 401
    assert get_action(agent, first).status_code == 401
    resp = requests.post(f"{agent['endpoint']}/get_action", json=OBS, timeout=30,
                         headers={"Authorization": f"token {rotated}"})
    assert resp.status_code == 401
    # Keys in the query string, under names Jupyter's own log scrubbing does and does not
    # catch (it matches lower-case substrings, so apiKey and Authorization slip past it).
    for param in ("api_key", "token", "key", "apiKey", "Authorization", "access_token"):
        resp = requests.post(f"{agent['endpoint']}/get_action?{param}={rotated}", json=OBS,
                             timeout=30)
        assert resp.status_code == 400, (param, resp.text)
        assert_no_key_in(resp.text, f"the answer to ?{param}=", rotated)
    # A key under a name nobody would guess is not a credential to the server, but it must
    # not be written down either.
    resp = get_action(agent, rotated, query=f"?note={rotated}")
    assert resp.status_code == 200
    resp = requests.get(f"{server.url}agents/api/agents?apiKey={rotated}", timeout=30)
    assert resp.status_code == 403
    # Lifecycle calls whose answers carry the key must not log it either.
    server.api("POST", "agents/logged/disconnect")
    server.api("POST", "agents/logged/connect")
    server.wait_status("logged")
    server.api("GET", "agents")

    log = server.log()[start:]
    assert "/agents/d/logged/get_action" in log  # the requests above were access-logged
    assert_no_key_in(log, "the server log", first, rotated, wrong)


def test_keys_stay_out_of_tracebacks_and_5xx_answers(server: ServerProcess) -> None:
    start = len(server.log())
    agent = server.deploy("faulty", "cartpole-dqn")
    key = agent["api_key"]
    boom = np.zeros((1, 4), np.float32)
    boom[0, 0] = SENTINEL
    resp = get_action(agent, key, {"obs": npy(boom), "batch_size": 1})
    assert resp.status_code == 500
    assert_no_key_in(resp.text, "the 500 answer", key)
    assert "blew up" not in resp.text  # internals go to the log, not to the caller

    server.deploy("boom", "cartpole-dqn")
    resp = server.api("POST", "agents/boom/rotate-key")
    assert resp.status_code == 500
    assert_no_key_in(resp.text, "the management 500 answer")
    new_key = server.api("GET", "agents/boom").json()["api_key"]

    log = server.log()[start:]
    # Both faults ran and were logged with their tracebacks...
    assert "injected fault: the policy blew up" in log
    assert "injected fault: rotate-key failed" in log
    assert log.count("Traceback (most recent call last)") >= 2
    # ...and no key went with them.
    assert_no_key_in(log, "the server log", key, new_key)


def test_listings_show_a_key_only_while_deployed(server: ServerProcess) -> None:
    deployed = server.deploy("shown", "cartpole-dqn")
    assert deployed["api_key"].startswith(KEY_PREFIX)
    server.api("POST", "agents", json={"name": "never-connected", "experiment": "cartpole-dqn"})
    server.deploy("was-deployed", "pendulum-td3")
    resp = server.api("POST", "agents/was-deployed/disconnect")
    assert resp.json()["api_key"] is None
    # A Failed agent has a key in the registry but no endpoint to use it on.
    # (cartpole-ppo: no other test in this module uses it, so breaking it harms none.)
    server.api("POST", "agents", json={"name": "broken", "experiment": "cartpole-ppo",
                                       "checkpoint": "final"})
    step = server.api("GET", "agents/broken").json()["checkpoint_step"]
    checkpoints = server.root / "experiments" / "cartpole-ppo" / "checkpoints"
    for path in checkpoints.glob(f"step_{step}*"):
        path.write_bytes(b"not a checkpoint")
    server.api("POST", "agents/broken/connect")
    assert server.wait_status("broken")["status"] == "Failed"
    # Rotating an undeployed agent's key answers without the key.
    resp = server.api("POST", "agents/never-connected/rotate-key")
    assert resp.status_code == 200
    assert_no_key_in(resp.text, "rotate-key of an undeployed agent")

    hidden = ("never-connected", "was-deployed", "broken")
    for name in hidden:
        resp = server.api("GET", f"agents/{name}")
        assert_no_key_in(resp.text, f"GET agents/{name}")
        assert resp.json()["endpoint"] is None
    listing = server.api("GET", "agents").json()["agents"]
    by_name = {a["name"]: a for a in listing}
    assert all(by_name[name]["api_key"] is None for name in hidden)
    shown = {a["api_key"] for a in listing if a["api_key"] is not None}
    assert shown == {a["api_key"] for a in listing if a["status"] == "Deployed"}
    assert deployed["api_key"] in shown
    assert_no_key_in(server.api("GET", "experiments").text, "the experiments listing")
    assert_no_key_in(requests.get(deployed["endpoint"] + "/status", timeout=30).text,
                     "the public status route")


def test_files_holding_keys_are_owner_only(server: ServerProcess) -> None:
    server.deploy("on-disk", "cartpole-dqn")
    root = server.root
    files = [p for p in root.iterdir() if p.name.startswith(("registry.sqlite3",
                                                             "sessions.sqlite3"))]
    # The WAL side files (-wal, -shm) hold recent rows, keys included.
    assert {p.name for p in files} >= {"registry.sqlite3", "registry.sqlite3-wal",
                                       "registry.sqlite3-shm", "sessions.sqlite3"}
    files += list((root / "runtime").glob("agents-workbench-*.json"))
    assert any(p.suffix == ".json" for p in files), "no discovery file was written"
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} has mode {oct(mode)}; it must be 0o600"


def _compares_key(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "api_key" for n in ast.walk(node))


def test_key_comparison_is_constant_time() -> None:
    """The only key check calls hmac.compare_digest; no ``==`` touches a key anywhere."""
    import server_extension
    from server_extension.handlers.inference import InferenceHandler

    # The key check lives in credential() (authenticate() calls it): it compares the given
    # key with the agent's, or with a decoy of the same shape when the name has none.
    tree = ast.parse(textwrap.dedent(inspect.getsource(InferenceHandler.credential)))
    digests = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and ast.unparse(n.func) == "hmac.compare_digest"]
    assert len(digests) == 1
    assigned = [n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and ast.unparse(n.targets[0]) == "expected"]
    assert assigned
    assert _compares_key(assigned[0].value)
    assert "expected" in ast.unparse(digests[0])

    package = Path(server_extension.__file__).parent
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                assert not _compares_key(node), (
                    f"{source.name}:{node.lineno} compares a key with ==: {ast.unparse(node)}")


def test_control_plane_log_lines_keep_no_token(server: ServerProcess) -> None:
    start = len(server.log())
    token = server.api("POST", "tokens", json={"name": "logged-cli"}).json()["token"]
    base = f"{server.url}agents/arena/api/cli/v1"
    # 4xx answers of the control plane are logged with their URL: tokens in the query string,
    # under names that do and do not look like credentials, must be blanked there.
    for query in (f"apiKey={token}", f"ARENA_API_KEY={token}", f"name={token}"):
        resp = requests.get(f"{base}/projects?{query}", timeout=30)
        assert resp.status_code == 401, resp.text
        resp = requests.get(f"{base}/inference/deployments/one?{query}", timeout=30,
                            headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code in (400, 404), resp.text
    log = server.log()[start:]
    assert "/agents/arena/api/cli/v1/projects" in log  # the requests above were logged
    assert_no_key_in(log, "the server log", token)
