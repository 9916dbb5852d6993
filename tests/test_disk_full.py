"""A full workspace disk: writes answer 507 naming the disk, and nothing is half done.

The workspace is a real 20 MB tmpfs (mounted here as root; skipped where mounting is not
allowed), filled with a real file until the kernel says ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.servers import ServerProcess, copy_workspace
from tests.test_management_api import obs_payload


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the disk under ``folder`` to the last block; the filler file."""
    filler = folder / "filler.bin"
    for size in (1 << 16, 512):  # big blocks, then the last partial one
        with contextlib.suppress(OSError), filler.open("ab") as fh:
            while True:
                fh.write(b"\0" * size)
                fh.flush()
    assert os.statvfs(folder).f_bavail == 0, "the disk did not fill"
    return filler


def _act(agent: dict[str, object]) -> requests.Response:
    return requests.post(f"{agent['endpoint']}/get_action", timeout=30,
                         json=obs_payload(np.zeros((1, 4), np.float32)),
                         headers={"Authorization": f"Bearer {agent['api_key']}"})


@pytest.mark.slow
def test_a_full_disk_is_507_naming_it_and_disconnect_tears_nothing_down(
        small_disk: Path, demo_experiments: Path) -> None:
    root = small_disk / "ws"
    copy_workspace(root, None)
    shutil.copytree(demo_experiments / "cartpole-dqn", root / "experiments" / "cartpole-dqn")
    server = ServerProcess(root, extra_args=["--AgentsWorkbenchApp.health_check_interval=0"],
                           log_path=small_disk.parent / "server.log")  # off the full disk
    server.start()
    try:
        agent = server.deploy("full", "cartpole-dqn")
        assert _act(agent).status_code == 200
        filler = _fill(small_disk)
        # A management write: 507 with the disk named, not a 500 "Unhandled error".
        created = server.api("POST", "agents", json={"name": "another",
                                                     "experiment": "cartpole-dqn",
                                                     "checkpoint": "best"})
        if created.status_code == 201:  # SQLite found room in its own free pages
            server.api("DELETE", "agents/another")
        else:
            assert created.status_code == 507, created.text
            assert "disk" in created.json()["message"]
            assert "full" in created.json()["message"]
        # Disconnect writes the registry before it stops anything: refused as a whole.
        for _ in range(20):  # each write that found room makes the next one less likely to
            gone = server.api("POST", "agents/full/disconnect")
            if gone.status_code != 200:
                break
            server.api("POST", "agents/full/connect")
            server.wait_status("full")
        assert gone.status_code == 507, gone.text
        assert "Free space" in gone.json()["message"]
        assert server.api("GET", "agents/full").json()["status"] == "Deployed"
        assert _act(agent).status_code == 200  # still served, as the panel says
        # Space again: the same call works.
        os.unlink(filler)
        assert server.api("POST", "agents/full/disconnect").status_code == 200
        assert _act(agent).status_code == 404
    finally:
        server.stop()
