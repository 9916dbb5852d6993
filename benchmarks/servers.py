"""The servers under test, each a child process on a loopback port.

(b) :class:`MinimalServer` - ``benchmarks/minimal_server.py``
(c) :class:`WorkbenchServer` - ``jupyter server`` with the workbench, token auth, agents made
    and connected through the management API as a user would
(d) :class:`RayServer` - ``benchmarks/ray_server.py``

Every child runs with one torch thread (``OMP_NUM_THREADS=1``) so that no server gets more
cores than another from torch's pool.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int) -> dict[str, float]:
    """RSS and PSS (MiB) of ``pid`` and all its descendants, and how many processes.

    RSS counts pages shared between forked workers once per process; PSS splits them, so
    its sum is what the tree really costs the machine.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, seen = [pid], []
    while todo:
        current = todo.pop()
        seen.append(current)
        todo.extend(children.get(current, []))
    rss = pss = 0
    for proc in seen:
        try:
            for line in Path(f"/proc/{proc}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1),
            "processes": len(seen)}


class _Child:
    """A child process started in its own session, stopped with SIGTERM then SIGKILL."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self._log_start = 0

    def _spawn(self, args: list[str], env: dict[str, str]) -> None:
        full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO), **env}
        # A log file may hold an earlier run's output (READY included): read only what
        # this child writes.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full,
                                         cwd=REPO, start_new_session=True)

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited early; log {self.log_path}:\n{self.log()}")
            try:
                if ready():
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{what} did not come up in {timeout} s; log {self.log_path}")

    def log(self) -> str:
        """What the child printed, last 4000 characters."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as fh:
            fh.seek(self._log_start)
            return fh.read().decode(errors="replace")[-4000:]

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM the child's whole session, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class WorkbenchServer(_Child):
    """(c): ``jupyter server`` with the workbench over ``root``."""

    def __init__(self, root: Path, log_dir: Path, *, batching: str = "off",
                 torch_threads: int = 1, extra: list[str] | None = None,
                 label: str | None = None) -> None:
        super().__init__(log_dir / f"workbench-{label or batching}.log")
        self.root = root
        self.token = secrets.token_hex(16)
        self.batching = batching
        self.torch_threads = torch_threads
        self.extra = extra or []
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {self.token}"

    @property
    def url(self) -> str:
        """Base URL (base_url ``/``)."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 120.0) -> WorkbenchServer:
        """Start and wait until the REST API answers."""
        return self.launch().wait(timeout)

    def wait(self, timeout: float = 120.0) -> WorkbenchServer:
        """Wait until a launched server's REST API answers."""
        self._wait(lambda: self.session.get(self.url + "api/status", timeout=2).ok,
                   timeout, "jupyter server")
        return self

    def launch(self) -> WorkbenchServer:
        """Start the process and return at once (several servers can start side by side)."""
        self._spawn([
            sys.executable, "-m", "jupyter_server",
            f"--ServerApp.port={self.port}", "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.allow_unauthenticated_access=False",
            "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={self.root}",
            f"--AgentsWorkbenchApp.root_dir={self.root}",
            "--ServerApp.jpserver_extensions={'server_extension': True}",
            f"--AgentsWorkbenchApp.torch_threads={self.torch_threads}",
            f"--AgentsWorkbenchApp.batching={self.batching}",
            *self.extra,
        ], {"JUPYTER_RUNTIME_DIR": str(self.root / "runtime"),
            "AGENTS_WORKBENCH_ROOT": str(self.root)})
        return self

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """``agents/api/<path>`` with the Jupyter token."""
        return self.session.request(method, self.url + "agents/api/" + path, timeout=60,
                                    **kwargs)

    def create(self, name: str, experiment: str, checkpoint: str | int = "best") -> None:
        """Create an agent (Undeployed)."""
        resp = self.api("POST", "agents", json={"name": name, "experiment": experiment,
                                                "checkpoint": checkpoint})
        if resp.status_code != 201:
            raise RuntimeError(f"creating {name}: {resp.status_code} {resp.text[:300]}")

    def connect(self, name: str, timeout: float = 120.0) -> tuple[dict[str, Any], float]:
        """Connect and wait for Deployed; the agent and seconds from Connect to Deployed."""
        started = time.perf_counter()
        resp = self.api("POST", f"agents/{name}/connect")
        if resp.status_code != 200:
            raise RuntimeError(f"connecting {name}: {resp.status_code} {resp.text[:300]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            agent = self.api("GET", f"agents/{name}").json()
            if agent.get("status") == "Deployed":
                return agent, time.perf_counter() - started
            if agent.get("status") == "Failed":
                raise RuntimeError(f"{name} failed: {agent.get('error')}")
            time.sleep(0.01)
        raise TimeoutError(f"{name} not Deployed in {timeout} s")

    def deploy(self, name: str, experiment: str,
               checkpoint: str | int = "best") -> dict[str, Any]:
        """Create and connect; the Deployed agent (endpoint, api_key)."""
        self.create(name, experiment, checkpoint)
        return self.connect(name)[0]

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

    def disconnect(self, name: str) -> None:
        """Disconnect an agent."""
        self.api("POST", f"agents/{name}/disconnect").raise_for_status()


class MinimalServer(_Child):
    """(b): the one-route Tornado app."""

    def __init__(self, root: Path, experiment: str, log_dir: Path, *,
                 threaded: bool = False) -> None:
        super().__init__(log_dir / f"minimal-{experiment}{'-threaded' if threaded else ''}.log")
        self.root, self.experiment, self.threaded = root, experiment, threaded
        self.key = secrets.token_hex(16)

    @property
    def url(self) -> str:
        """The get_action URL."""
        return f"http://127.0.0.1:{self.port}/get_action"

    def start(self, timeout: float = 90.0) -> MinimalServer:
        """Start and wait for READY."""
        self._spawn([sys.executable, "-m", "benchmarks.minimal_server", "--root",
                     str(self.root), "--experiment", self.experiment, "--port", str(self.port),
                     "--key", self.key, *(["--threaded"] if self.threaded else [])], {})
        self._wait(lambda: "READY" in self.log(), timeout, "minimal server")
        return self


class RayServer(_Child):
    """(d): Ray Serve with one replica."""

    def __init__(self, root: Path, experiment: str, log_dir: Path) -> None:
        super().__init__(log_dir / f"ray-{experiment}.log")
        self.root, self.experiment = root, experiment
        self.key = secrets.token_hex(16)

    @property
    def url(self) -> str:
        """The get_action URL (through Ray's HTTP proxy)."""
        return f"http://127.0.0.1:{self.port}/get_action"

    def start(self, timeout: float = 180.0) -> RayServer:
        """Start a local Ray and the deployment; wait for READY."""
        self._spawn([sys.executable, "-m", "benchmarks.ray_server", "--root", str(self.root),
                     "--experiment", self.experiment, "--port", str(self.port),
                     "--key", self.key, "--pythonpath", str(REPO)],
                    {"RAY_USAGE_STATS_ENABLED": "0"})
        self._wait(lambda: "READY" in self.log(), timeout, "ray server")
        return self


def have_ray() -> bool:
    """Whether ``ray[serve]`` is importable."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None and \
        importlib.util.find_spec("ray.serve") is not None
