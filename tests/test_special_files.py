"""Special files in the workspace cost one listing entry, never the server.

A FIFO named ``experiment.json`` used to block the Jupyter server's event loop until someone
wrote to it; a symlink to ``/dev/zero`` as ``metrics.csv`` or as a training mark read without
bound until the server was OOM-killed. Here each sits in its place in a real workspace, read
by the real store and by a real server's management API and Arena control plane.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from server_extension.serving.lease import ServingLease
from server_extension.workspace.registry import Registry
from tests.servers import ServerProcess, copy_workspace
from workbench_core import regular_files, training_marks
from workbench_core.store import ExperimentStore, StoreError

# Every place the workspace is read, and what goes there.
SPECIALS = ("fifo", "dev-zero")


def _special(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


def _copy(root: Path, source: str, name: str) -> Path:
    target = root / "experiments" / name
    shutil.copytree(root / "experiments" / source, target)
    info = json.loads((target / "experiment.json").read_text())
    info["name"] = name
    (target / "experiment.json").write_text(json.dumps(info))
    return target


def _hostile_workspace(root: Path) -> None:
    for kind in SPECIALS:
        _special(_copy(root, "cartpole-dqn", f"json-{kind}") / "experiment.json", kind)
        _special(_copy(root, "cartpole-dqn", f"metrics-{kind}") / "metrics.csv", kind)
        _copy(root, "cartpole-dqn", f"mark-{kind}")
        marks = root / "experiments" / training_marks.MARKS_DIR
        marks.mkdir(exist_ok=True)
        _special(marks / f"mark-{kind}.json", kind)


@pytest.mark.parametrize("kind", [*SPECIALS, "socket", "folder"])
def test_only_regular_files_are_read(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "file"
    with socket.socket(socket.AF_UNIX) as sock:
        if kind == "socket":
            sock.bind(str(path))
        elif kind == "folder":
            path.mkdir()
        else:
            _special(path, kind)
        with pytest.raises(regular_files.NotARegularFile, match="not a regular file"):
            regular_files.read_capped(path, 1024)


def test_links_are_refused_where_none_may_be_and_caps_hold(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert regular_files.read_capped(link, 10) == b"{}"
    with pytest.raises(regular_files.NotARegularFile, match="symbolic link"):
        regular_files.read_capped(link, 10, follow_links=False)
    real.write_bytes(b"x" * 11)
    with pytest.raises(regular_files.TooLarge, match="is over"):
        regular_files.read_capped(real, 10)


def test_the_store_reports_special_files_as_broken_entries(
        tmp_path: Path, demo_experiments: Path) -> None:
    root = copy_workspace(tmp_path, demo_experiments)
    _hostile_workspace(root)
    store = ExperimentStore(root)
    listing = store.listing()  # returns at all: nothing blocked, nothing read without end
    broken = {row["name"]: row["error"] for row in listing["broken"]}
    good = {row["name"]: row for row in listing["experiments"]}
    for kind in SPECIALS:
        assert "not a regular file" in broken[f"json-{kind}"]
        assert "metrics.csv must be a regular file" in broken[f"metrics-{kind}"]
        # A mark that is not a regular file is no mark: the experiment lists as trained.
        assert good[f"mark-{kind}"]["training"] is None
        with pytest.raises(StoreError, match="not a regular file"):
            store.get(f"metrics-{kind}").metrics()
    assert "cartpole-dqn" in good


@pytest.mark.parametrize("kind", SPECIALS)
def test_a_special_file_where_the_old_lock_file_was_changes_nothing(tmp_path: Path,
                                                                    kind: str) -> None:
    # The lease lives in the registry database now (lease.py); the old lock file's name,
    # planted as a FIFO or a link to /dev/zero, is never opened.
    _special(tmp_path / "serving.lock", kind)
    registry = Registry(tmp_path / "registry.sqlite3")
    lease = ServingLease(tmp_path, registry, url="http://here/")
    try:
        assert lease.holder() == {}
        assert lease.try_acquire()
        assert lease.holder()["url"] == "http://here/"
    finally:
        registry.close()
        lease.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory,
           demo_experiments: Path) -> Iterator[ServerProcess]:
    root = copy_workspace(tmp_path_factory.mktemp("special"), demo_experiments)
    _hostile_workspace(root)
    srv = ServerProcess(root, extra_args=["--AgentsWorkbenchApp.health_check_interval=0"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _cli(server: ServerProcess, path: str, token: str) -> requests.Response:
    # The timeout bounds a hang only (a blocked event loop used to answer never).
    return requests.get(f"{server.url}agents/arena/api/cli/v1/{path}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.mark.slow
def test_a_server_lists_around_special_files(server: ServerProcess) -> None:
    listing = server.api("GET", "experiments")
    assert listing.status_code == 200, listing.text
    broken = {row["name"] for row in listing.json()["broken"]}
    assert {f"json-{k}" for k in SPECIALS} <= broken
    token = server.api("POST", "tokens", json={"name": "special"}).json()["token"]
    projects = _cli(server, "projects", token)
    assert projects.status_code == 200, projects.text
    for project in {p["name"] for p in projects.json()}:
        assert _cli(server, f"experiments/list?project={project}", token).status_code == 200
    for kind in SPECIALS:
        answer = _cli(server, f"experiments/metrics?experiment_name=metrics-{kind}"
                              "&preview_rows=5", token)
        assert answer.status_code == 400, answer.text
        assert "must be a regular file" in answer.text
        assert _cli(server, f"experiments/jobs/checkpoints?experiment_name=mark-{kind}",
                    token).status_code == 200
        answer = _cli(server, f"experiments/jobs/checkpoints?experiment_name=metrics-{kind}",
                      token)
        assert answer.status_code == 400, answer.text
        answer = _cli(server, f"experiments/jobs/checkpoints?experiment_name=json-{kind}", token)
        assert answer.status_code == 404, answer.text
    assert server.proc is not None
    assert server.proc.poll() is None
