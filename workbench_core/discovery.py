"""How a kernel finds the Jupyter server it belongs to.

The extension writes ``agents-workbench-<pid>.json`` into Jupyter's runtime directory, created
owner-only before anything is written (the same care jupyter_server takes with its own
``jpserver-<pid>.json``), and removes it on shutdown. It holds the server's URL, base_url and
the token the management API accepts. ``AGENTS_WORKBENCH_URL`` (and ``AGENTS_WORKBENCH_TOKEN``)
override the file, for kernels started elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from workbench_core.store import ROOT_ENV, default_root

URL_ENV = "AGENTS_WORKBENCH_URL"
TOKEN_ENV = "AGENTS_WORKBENCH_TOKEN"  # noqa: S105 - a variable name, not a secret
PREFIX = "agents-workbench-"
# Sent by the panel's client with the origin of the page showing the panel: a kernel talks to
# its server directly, but the browser knows the host users reach it at (public_url.py).
PAGE_ORIGIN_HEADER = "X-Agents-Workbench-Page-Origin"


class ServerNotFound(LookupError):
    """No running workbench server could be found; the message says what to do."""


@dataclass(frozen=True)
class ServerInfo:
    """Where the management API is and how to authenticate to it."""

    url: str
    token: str
    pid: int = 0
    root: str = ""

    def api(self, path: str) -> str:
        """The absolute URL of ``agents/api/<path>``."""
        return f"{self.url.rstrip('/')}/agents/api/{path.lstrip('/')}"


def runtime_file(pid: int | None = None, runtime_dir: Path | None = None) -> Path:
    """The discovery file path for server process ``pid`` (this process by default)."""
    folder = runtime_dir or Path(jupyter_runtime_dir())
    return folder / f"{PREFIX}{pid or os.getpid()}.json"


def write(info: ServerInfo, path: Path) -> None:
    """Write ``info`` to ``path`` readable by the owner only, whatever was there before.

    The temporary file has a fresh random name and is created exclusively without following
    links (``O_EXCL | O_NOFOLLOW``): a file or symlink planted at a predictable ``.tmp`` path
    can neither widen the mode nor redirect the write. The rename replaces ``path`` itself,
    even when ``path`` was a symlink.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(info), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(runtime_dir: Path | None = None) -> ServerInfo:
    """The server this process should talk to.

    Order: the environment variables; the file of our parent process (a kernel's parent is its
    Jupyter server); the most recent file of a server that is still running.
    """
    url = os.environ.get(URL_ENV)
    if url:
        return ServerInfo(url=url, token=os.environ.get(TOKEN_ENV, ""))
    folder = runtime_dir or Path(jupyter_runtime_dir())
    parent = folder / f"{PREFIX}{os.getppid()}.json"
    candidates = [parent] if parent.exists() else []
    candidates += sorted(folder.glob(f"{PREFIX}*.json"), key=lambda p: p.stat().st_mtime,
                         reverse=True)
    for path in candidates:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            info = ServerInfo(**data)
        except (OSError, ValueError, TypeError):
            continue
        if info.pid and not _alive(info.pid):
            continue
        return info
    raise ServerNotFound(
        "No running agents-workbench server was found. Start one with `agents-workbench run` "
        f"(or `jupyter lab` with the extension enabled), or set {URL_ENV} (and {TOKEN_ENV}) "
        f"to the server's URL and token. Looked in {folder}."
    )


def default_workspace(runtime_dir: Path | None = None) -> tuple[Path, str]:
    """Where a script or ``agents-workbench import`` writes when given no root, and why.

    ``$AGENTS_WORKBENCH_ROOT`` first (a kernel or terminal under ``agents-workbench run`` has
    it), then the workspace of the running workbench server, then ``~/agents-workbench``.
    Without the middle step a terminal next to the README's server (which serves
    ``./workspace``) would write where no server reads.
    """
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).expanduser(), f"${ROOT_ENV}"
    try:
        info = find(runtime_dir)  # the server a kernel here would talk to
    except ServerNotFound:
        info = None
    if info is not None and info.root:
        return Path(info.root), f"the workspace of the running server at {info.url}"
    return default_root(), "no running workbench server was found; pass --root (or root=) to choose"
