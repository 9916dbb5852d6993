"""What the management and inference handlers share: the services they read from settings."""

from __future__ import annotations

import errno
import sqlite3
from typing import Any, cast
from urllib.parse import unquote_plus

from tornado import httputil, web

from server_extension.serving.deployer import Deployer
from server_extension.workspace.registry import KEY_PREFIX, Registry
from server_extension.workspace.tokens import TOKEN_PREFIX
from workbench_core.store import ExperimentStore

# Keys under which the extension app puts its services into the Tornado settings.
DEPLOYER = "agents_workbench_deployer"
STORE = "agents_workbench_store"
REGISTRY = "agents_workbench_registry"
MAX_BODY_BYTES = "agents_workbench_max_body_bytes"
SESSIONS = "agents_workbench_sessions"
METRICS = "agents_workbench_metrics"  # a MetricsStore, absent when metrics are off
SERVING = "agents_workbench_serving"  # the workspace's ServingLease (workspace.py)


class ServicesMixin:
    """Hands a handler the workbench services the extension app built at start-up."""

    settings: dict[str, Any]

    @property
    def deployer(self) -> Deployer:
        """The server's one :class:`Deployer`."""
        return cast(Deployer, self.settings[DEPLOYER])

    @property
    def store(self) -> ExperimentStore:
        """The experiment store under the configured root."""
        return cast(ExperimentStore, self.settings[STORE])

    @property
    def registry(self) -> Registry:
        """The agents registry."""
        return cast(Registry, self.settings[REGISTRY])


def endpoint_url(handler: web.RequestHandler, name: str) -> str:
    """The full inference base URL of agent ``name`` as this request's client reaches it."""
    lease = handler.settings.get(SERVING)
    elsewhere = lease.holder_url() if lease is not None else None
    if elsewhere:
        # Another server on this workspace loads the agents: its endpoint is the one to use.
        return f"{elsewhere.rstrip('/')}/agents/d/{name}"
    base_url = handler.settings.get("base_url", "/")
    request = handler.request
    return f"{request.protocol}://{request.host}{base_url.rstrip('/')}/agents/d/{name}"


# A query parameter whose name (any case) contains one of these is a secret in every log.
SECRET_NAME_PARTS = ("token", "key", "auth", "secret", "password", "xsrf", "code", "state")


def scrub_query(request: httputil.HTTPServerRequest, names: frozenset[str] = frozenset(),
                secrets: tuple[str, ...] = ()) -> None:
    """Blank secret-looking query values in ``request.uri`` before anything logs it.

    Jupyter's access log scrubs parameter names that contain lower-case ``token``, ``key``...,
    but Tornado's own warning for an ``HTTPError`` (every 4xx of a management route) prints
    ``request.uri`` as it came, ``?token=<the Jupyter token>`` included, and ``?apiKey=`` or
    ``?note=awb_...`` pass Jupyter's check. Here a value is blanked when its parameter's name
    (any case, decoded) is in ``names`` or contains a :data:`SECRET_NAME_PARTS` entry, or the
    value holds a deployment key, an access token or one of ``secrets`` (the server's Jupyter
    token). Parsed arguments stay untouched, so handlers and Jupyter's own auth still see the
    request as sent.
    """
    path, sep, query = request.uri.partition("?") if request.uri else ("", "", "")
    if not sep:
        return
    parts = query.split("&")
    changed = False
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        plain_name, plain_value = unquote_plus(name).lower(), unquote_plus(value)
        if (plain_name in names or any(p in plain_name for p in SECRET_NAME_PARTS)
                or KEY_PREFIX in plain_value or TOKEN_PREFIX in plain_value
                or any(secret and secret in plain_value for secret in secrets)):
            parts[i] = f"{name}{eq}[secret]"
            changed = True
    if changed:
        request.uri = f"{path}?{'&'.join(parts)}"


def serving_elsewhere(settings: dict[str, Any]) -> str:
    """A sentence naming the server that loads this workspace's agents, when it is another."""
    lease = settings.get(SERVING)
    url = lease.holder_url() if lease is not None else None
    return f" On this workspace agents are served by the server at {url}." if url else ""


def disk_problem(exc: BaseException | None, where: str = "the workspace",
                 ) -> tuple[int, str] | None:
    """``(status, message)`` when ``exc`` (or what caused it) is a full or read-only disk.

    507 for a full disk, 503 for a read-only one: the caller did nothing wrong, and the
    message says what to free or fix instead of "Unhandled error".
    """
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc).lower()
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
                isinstance(exc, sqlite3.OperationalError) and "full" in text):
            return 507, (f"The disk that holds {where} is full ({exc}); nothing was changed. "
                         "Free space on it, then retry.")
        if (isinstance(exc, OSError) and exc.errno == errno.EROFS) or (
                isinstance(exc, sqlite3.OperationalError) and "readonly" in text):
            return 503, (f"The disk that holds {where} is read-only ({exc}); nothing was "
                         "changed. Make it writable, then retry.")
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None
