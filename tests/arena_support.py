"""Running the unchanged Arena CLI and SDK against a test server, the way a user would.

Every run is a fresh process with its own ``HOME`` (the client keeps ``~/.arena`` there and
computes the paths at import), ``ARENA_BASE_URL`` pointing at the server's ``agents/arena``
and ``ARENA_API_KEY`` holding a workspace access token. ``ARENA_KEYCLOAK_URL`` points nowhere
so nothing could ever reach the hosted login.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.servers import ServerProcess

BIN = Path(sys.executable).parent
ARENA = str(BIN / "arena")
_ARENA_VARS = ("ARENA_BASE_URL", "ARENA_API_KEY", "ARENA_ORG_KEY", "ARENA_EXTERNAL_USER_ID")


def arena_env(server: ServerProcess, home: Path, key: str | None) -> dict[str, str]:
    """The environment a user's shell has after following the snippet's exports."""
    env = {k: v for k, v in os.environ.items() if k not in _ARENA_VARS}
    home.mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(home),
        "ARENA_BASE_URL": server.url + "agents/arena",
        "ARENA_KEYCLOAK_URL": "http://127.0.0.1:9",
        # Wide enough that rich's tables do not wrap the values the tests look for.
        "COLUMNS": "250",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    if key is not None:
        env["ARENA_API_KEY"] = key
    return env


def arena(server: ServerProcess, home: Path, key: str | None, *args: str,
          stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``arena <args>`` as a subprocess; the completed process (stdout, stderr, returncode)."""
    return subprocess.run([ARENA, *args], env=arena_env(server, home, key), input=stdin,
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def run_code(server: ServerProcess, home: Path, key: str | None, code: str,
             language: str = "python") -> subprocess.CompletedProcess[str]:
    """Run a snippet (Python or bash) in a fresh process with the Arena environment."""
    command = ([sys.executable, "-c", code] if language == "python"
               else [shutil.which("bash") or "bash", "-c", code])
    return subprocess.run(command, env=arena_env(server, home, key), capture_output=True,
                          text=True, timeout=180, check=False)
