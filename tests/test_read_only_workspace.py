"""A read-only workspace: a clear start-up error, and every workbench route says so (503).

The workspace is a real tmpfs remounted read-only (mounted here as root; skipped where
mounting is not allowed). It used to leave the extension unloaded after one warning line,
and every ``agents/api`` route answered Jupyter's HTML 404.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import ServerProcess


@pytest.fixture
def read_only_workspace(tmp_path: Path, demo_experiments: Path) -> Iterator[Path]:
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        shutil.copytree(demo_experiments / "cartpole-dqn", mount / "experiments" / "cartpole-dqn")
        (mount / "runtime").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        # Jupyter's own runtime folder (inside the workspace in tests.servers) stays writable.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount / "runtime")],
                       check=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount / "runtime")], check=False)
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_read_only_workspace_is_a_clear_error(read_only_workspace: Path,
                                               tmp_path: Path) -> None:
    server = ServerProcess(read_only_workspace, log_path=tmp_path / "server.log")
    server.start()
    try:
        listing = server.api("GET", "experiments")
        assert listing.status_code == 503, listing.text[:300]
        message = listing.json()["message"]
        assert "Read-only" in message or "read-only" in message, message
        assert "must be writable" in message
        assert requests.post(f"{server.url}agents/d/x/get_action", json={},
                             timeout=30).status_code == 503
        assert "cannot use the workspace" in server.log()
    finally:
        server.stop()
