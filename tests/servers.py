"""A real ``jupyter server`` in a child process, for tests that need one outside pytest's loop.

The Arena client and the panel's REST client are blocking; they cannot share the event loop
of an in-process test server, so conformance, restart and widget tests talk to this one.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``jupyter server`` with the workbench, token auth and no unauthenticated access."""

    def __init__(self, root: Path, *, base_url: str = "/", extra_args: list[str] | None = None,
                 log_path: Path | None = None) -> None:
        self.root = root
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.extra_args = extra_args or []
        self.log_path = log_path or root / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
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
            *self.extra_args,
        ]
        # The child keeps its own copy of the descriptor; ours is closed at once.
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited early; log:\n{self.log()}")
            try:
                if self.session.get(self.url + "api/status", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"jupyter server did not answer in {timeout} s; log:\n{self.log()}")

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then hard if it lingers."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill9(self) -> None:
        """``kill -9`` the server: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call ``agents/api/<path>`` with the Jupyter token."""
        return self.session.request(method, self.url + "agents/api/" + path, timeout=30, **kwargs)

    def wait_status(self, name: str, statuses: tuple[str, ...] = ("Deployed", "Failed"),
                    timeout: float = 60.0) -> dict[str, Any]:
        """Poll an agent until its status is one of ``statuses``; return the agent."""
        deadline = time.monotonic() + timeout
        agent: dict[str, Any] = {}
        while time.monotonic() < deadline:
            agent = self.api("GET", f"agents/{name}").json()
            if agent.get("status") in statuses:
                return agent
            time.sleep(0.05)
        raise TimeoutError(f"agent {name} stayed {agent.get('status')}: {agent}")

    def deploy(self, name: str, experiment: str, checkpoint: str | int = "best") -> dict[str, Any]:
        """Create and connect an agent, wait for Deployed, return it (endpoint and key)."""
        created = self.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                   "checkpoint": checkpoint})
        assert created.status_code == 201, created.text
        assert self.api("POST", f"agents/{name}/connect").status_code == 200
        agent = self.wait_status(name)
        assert agent["status"] == "Deployed", agent
        return agent
