"""Real servers in child processes, for tests (and the soak benchmark) outside pytest's loop.

The Arena client and the panel's REST client are blocking; they cannot share the event loop
of an in-process test server, so conformance, restart, widget and soak runs talk to these.

- :class:`ServerProcess`: ``jupyter server`` with the workbench, token auth and no
  unauthenticated access; :func:`start_server` and :func:`running_server` start one over a
  workspace (with a copy of trained experiments).
- :class:`VoilaApp`: the standalone ``agents-workbench app``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
# How long a test waits for an agent to settle. A first Connect waits for its family's worker
# template to import (torch, AgileRL, transformers): seconds on a quiet machine, but over a
# minute was seen with two test workers and other jobs on the two cores. The bound only
# matters when something is wrong, so it is generous.
DEPLOY_TIMEOUT = 180.0
# For tests of the templates' warm-up as the extension loads (ServerProcess otherwise turns
# it off).
WARM_TEMPLATES = "--AgentsWorkbenchApp.warm_templates=True"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port nobody listens on right now, and not one this process handed out before.

    Linux often gives the port just released to the next ``bind(("", 0))``, so two calls in
    a row could return the same port: the JupyterHub test once got one port for two hub
    services, and the second could never start.
    """
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port found that was not handed out already")


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; its value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


# Processes told to stop whose shutdown is left to run beside the next tests; the session
# waits for them at its end (tests/conftest.py, pytest_sessionfinish).
_STOPPING: list[threading.Thread] = []


def stop_in_background(proc: subprocess.Popen[bytes], *, grace: float = 90.0) -> None:
    """SIGTERM ``proc`` (a session leader) and let it shut down while other tests run.

    For servers whose orderly shutdown is long and idle (a hub stopping its users' servers
    and services one timeout after another): the worker goes on at once. After ``grace``
    seconds the process group is killed.
    """
    proc.terminate()

    def reap() -> None:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    thread = threading.Thread(target=reap, name=f"stop-{proc.pid}", daemon=True)
    thread.start()
    _STOPPING.append(thread)


def wait_for_background_stops(timeout: float = 150.0) -> None:
    """Wait for every :func:`stop_in_background` to finish (the end of a test session)."""
    deadline = time.monotonic() + timeout
    while _STOPPING:
        _STOPPING.pop().join(max(0.0, deadline - time.monotonic()))


def copy_workspace(root: Path, experiments: Path | None) -> Path:
    """Make ``root`` a workspace (own registry) holding a copy of ``experiments``, if given."""
    root.mkdir(parents=True, exist_ok=True)
    if experiments is not None:
        shutil.copytree(experiments, root / "experiments")
    return root


class ChildServer:
    """A server in its own process group, logging to a file; what both hosts share."""

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _spawn(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=REPO, start_new_session=True)
        return self.proc

    @property
    def pid(self) -> int:
        """The server's process id (it must have been started)."""
        assert self.proc is not None, "the server was never started"
        return self.proc.pid

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """Stop gracefully (SIGTERM), then hard if it lingers; the exit status."""
        if isinstance(session := getattr(self, "session", None), requests.Session):
            session.close()  # pooled keep-alive sockets would otherwise warn when collected
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        """``kill -9`` the server: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class ServerProcess(ChildServer):
    """``jupyter server`` with the workbench, token auth and no unauthenticated access."""

    def __init__(self, root: Path, *, base_url: str = "/", extra_args: list[str] | None = None,
                 log_path: Path | None = None) -> None:
        self.root = root
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.extra_args = extra_args or []
        self.log_path = log_path or root / f"server-{self.port}.log"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    @property
    def url(self) -> str:
        """The server's URL, base_url included."""
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start the server and wait until its REST API answers."""
        runtime_dir = self.root / "runtime"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime_dir),
               "AGENTS_WORKBENCH_ROOT": str(self.root)}
        args = [
            sys.executable, "-m", "jupyter_server",
            f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.base_url={self.base_url}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_unauthenticated_access=False",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={self.root}",
            f"--AgentsWorkbenchApp.root_dir={self.root}",
            "--ServerApp.jpserver_extensions={'server_extension': True}",
            # Templates start at their family's first Connect: most test servers serve numpy
            # sidecar policies only, and warming torch and transformers for each of them was
            # most of the suite's CPU. Tests of the warming pass WARM_TEMPLATES instead
            # (traitlets refuses an option given twice).
            *([] if any("warm_templates" in a for a in self.extra_args)
              else ["--AgentsWorkbenchApp.warm_templates=False"]),
            *self.extra_args,
        ]
        proc = self._spawn(args, env)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"jupyter server exited early; log:\n{self.log()}")
                try:
                    if self.session.get(self.url + "api/status", timeout=2).status_code == 200:
                        return self
                except requests.ConnectionError:
                    pass
                time.sleep(0.05)
            raise TimeoutError(
                f"jupyter server did not answer in {timeout} s; log:\n{self.log()}")
        except BaseException:
            # A server that never answered is stopped and reaped here: the caller gets no
            # object to stop, and an unreaped child is a ResourceWarning (and a stray server).
            self.stop()
            raise

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call ``agents/api/<path>`` with the Jupyter token."""
        return self.session.request(method, self.url + "agents/api/" + path, timeout=30, **kwargs)

    def wait_status(self, name: str, statuses: tuple[str, ...] = ("Deployed", "Failed"),
                    timeout: float = DEPLOY_TIMEOUT) -> dict[str, Any]:
        """Poll an agent until its status is one of ``statuses``; return the agent."""
        deadline = time.monotonic() + timeout
        agent: dict[str, Any] = {}
        while time.monotonic() < deadline:
            agent = self.api("GET", f"agents/{name}").json()
            if agent.get("status") in statuses:
                return agent
            time.sleep(0.05)
        raise TimeoutError(f"agent {name} stayed {agent.get('status')}: {agent}")

    def deploy(self, name: str, experiment: str, checkpoint: str | int = "best", *,
               options: dict[str, Any] | None = None,
               timeout: float = DEPLOY_TIMEOUT) -> dict[str, Any]:
        """Create and connect an agent, wait for Deployed, return it (endpoint and key)."""
        body = {"name": name, "experiment": experiment, "checkpoint": checkpoint}
        if options is not None:
            body["options"] = options
        created = self.api("POST", "agents", json=body)
        assert created.status_code == 201, created.text
        assert self.api("POST", f"agents/{name}/connect").status_code == 200
        agent = self.wait_status(name, timeout=timeout)
        assert agent["status"] == "Deployed", agent
        return agent


def start_server(root: Path, experiments: Path | None, **kwargs: Any) -> ServerProcess:
    """A started server over a new workspace ``root`` with a copy of ``experiments``.

    ``kwargs`` go to :class:`ServerProcess`; the caller stops it.
    """
    return ServerProcess(copy_workspace(root, experiments), **kwargs).start()


@contextmanager
def running_server(root: Path, **kwargs: Any) -> Iterator[ServerProcess]:
    """A started server over the existing workspace ``root``, stopped on the way out."""
    server = ServerProcess(root, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


class VoilaApp(ChildServer):
    """``agents-workbench app`` over ``root`` in a child process, with debug (access) logs."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.port = free_port()
        self.token = "app-test-token"
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runtime = root / "runtime"
        self.log_path = root / "app.log"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime)}
        env.pop("AGENTS_WORKBENCH_URL", None)
        self._spawn([sys.executable, "-m", "server_extension.hosts.cli", "app", "--root", str(root),
                     "--port", str(self.port), "--token", self.token, "--no-browser", "--debug",
                     *extra], env)
        wait_until(self._answers, timeout=60, what="the app to answer")

    def _answers(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, self.log()
        try:
            return self.api("experiments").status_code == 200
        except requests.ConnectionError:
            return False

    def api(self, path: str, token: str | None = None) -> requests.Response:
        """GET ``agents/api/<path>`` with the app's token (or ``token``)."""
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.get(f"{self.url}agents/api/{path}", headers=headers, timeout=10)
