"""Lines the workbench used to make Jupyter print that read like trouble but were not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.sign import NotebookNotary

from server_extension.hosts import cli

REPO = Path(__file__).resolve().parent.parent

RENDER = """
import sys
if sys.argv[1] == "quiet":
    from server_extension.hosts.app import quiet_offscreen_rendering
    quiet_offscreen_rendering()
from workbench_core.episodes import play_episode
episode = play_episode({"kind": "gymnasium", "id": "CartPole-v1", "kwargs": {}}, None,
                       seed=0, render=True, max_frames=2)
print("frames", len(episode.frames), episode.frames[0].shape)
"""


def _render(mode: str) -> subprocess.CompletedProcess[str]:
    # A headless session as Jupyter often runs: no display, no runtime dir, no SDL driver.
    env = {key: value for key, value in os.environ.items()
           if key not in ("XDG_RUNTIME_DIR", "SDL_VIDEODRIVER", "SDL_AUDIODRIVER", "DISPLAY",
                          "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", RENDER, mode], env=env, capture_output=True,
                          text=True, timeout=120, check=True)


def test_episode_frames_render_without_the_xdg_runtime_dir_complaint() -> None:
    loud = _render("loud")
    if "XDG_RUNTIME_DIR" not in loud.stderr + loud.stdout:
        pytest.skip("this machine's SDL finds a display setup and prints nothing to silence")
    quiet = _render("quiet")
    assert "XDG_RUNTIME_DIR" not in quiet.stderr + quiet.stdout
    assert "frames 2 (400, 600, 3)" in quiet.stdout  # the dummy driver still draws the frames


def test_copied_notebooks_are_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The signature database lives in the Jupyter data folder; use a private one.
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    notary = NotebookNotary()
    # Unsigned as shipped (a signature is a digest of the content, kept in the database):
    # without the signing step Jupyter would call each copy untrusted.
    shipped = nbformat.read(str(REPO / "notebooks" / "Agents.ipynb"),
                            as_version=nbformat.NO_CONVERT)
    assert not notary.check_signature(shipped)
    notebooks = cli._notebooks_dir(tmp_path / "workspace")
    copied = sorted(notebooks.rglob("*.ipynb"))
    assert "Agents.ipynb" in {path.name for path in copied}
    for path in copied:
        notebook = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
        assert NotebookNotary().check_signature(notebook), path
