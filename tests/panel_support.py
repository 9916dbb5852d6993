"""What the panel's tests share: a live server per module, and a front end that records.

The panel is built in the test process against a REAL ``jupyter server`` child process
(:class:`tests.servers.ServerProcess`). There is no browser: :class:`RecordingComm` stands
in for the front end at the one documented seam, ``comm.create_comm`` ("intended to be
replaced"), so tests can read everything the kernel sends to a browser and deliver the
custom messages a browser would send.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import comm
import ipywidgets as widgets
import pytest
import requests
from comm.base_comm import BaseComm

from tests.servers import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent


class RecordingComm(BaseComm):
    """A comm whose front end is this list: every message the kernel publishes is kept."""

    sent: ClassVar[list[dict[str, Any]]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append({"msg_type": msg_type, "comm_id": self.comm_id,
                                   "data": data})


@pytest.fixture
def front_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Widgets made in this test talk to a recording front end; yields what it received."""
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    yield RecordingComm.sent
    RecordingComm.sent = []


def browser_sends(widget: widgets.Widget, content: dict[str, Any]) -> None:
    """Deliver a custom message from the browser, as ``model.send(content)`` does in JS."""
    widget.comm.handle_msg({"content": {"comm_id": widget.comm.comm_id,
                                        "data": {"method": "custom", "content": content}},
                            "buffers": []})


def custom_replies(sent: list[dict[str, Any]], widget: widgets.Widget) -> list[dict[str, Any]]:
    """The custom messages the kernel sent to ``widget``'s front end."""
    return [m["data"]["content"] for m in sent
            if m["comm_id"] == widget.comm.comm_id and m["data"].get("method") == "custom"]


def saved_state_json() -> str:
    """Every live widget's state as JupyterLab would save it with the notebook."""
    return json.dumps(widgets.Widget.get_manager_state(drop_defaults=False), default=str)


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` until it is truthy; its value, or AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def start_server(root: Path, demo_experiments: Path | None, **kwargs: Any) -> ServerProcess:
    """A real server over ``root``, with a copy of the demo experiments when given."""
    root.mkdir(parents=True, exist_ok=True)
    if demo_experiments is not None:
        shutil.copytree(demo_experiments, root / "experiments")
    # ServerProcess.start() drops its handle on the log file without closing it (the child
    # keeps its own copy); that ResourceWarning is not the panel's to fail on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        server = ServerProcess(root, **kwargs).start()
        gc.collect()
    return server


class VoilaApp:
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
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server_extension.cli", "app", "--root", str(root),
                 "--port", str(self.port), "--token", self.token, "--no-browser", "--debug",
                 *extra],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                start_new_session=True)
        wait_until(self._answers, timeout=60, what="the app to answer")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, self.log()
        try:
            return self.api("experiments").status_code == 200
        except requests.ConnectionError:
            return False

    def api(self, path: str, token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.get(f"{self.url}agents/api/{path}", headers=headers, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)
