"""What the management and inference handlers share: the services they read from settings."""

from __future__ import annotations

import errno
import sqlite3
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import unquote_plus

from tornado import httputil, web

from server_extension.handlers.public_url import public_base
from server_extension.serving.deployer import Deployer
from server_extension.serving.lease import silence_message
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
STATUS_KIND_PUBLIC = "agents_workbench_status_kind_public"  # status shows kind to anyone
# Ends in "_last_activity": jupyter_server's web_app.last_activity() takes the newest of every
# such setting, which is what jupyterhub-singleuser reports to the hub (and the culler reads).
LAST_ACTIVITY = "agents_workbench_last_activity"


def stamp_activity(settings: dict[str, Any]) -> None:
    """Record activity now (hosts/activity.py says who reads it)."""
    settings[LAST_ACTIVITY] = datetime.now(UTC)


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


def endpoint_url(handler: web.RequestHandler, name: str, *, page_origin: bool = False) -> str:
    """The full inference base URL of agent ``name`` as a user reaches it (public_url.py).

    ``page_origin``: the request passed Jupyter auth, so the panel's page origin may count.
    """
    lease = handler.settings.get(SERVING)
    elsewhere = lease.holder_url() if lease is not None else None
    if elsewhere:
        # Another server on this workspace loads the agents: its endpoint is the one to use.
        return f"{elsewhere.rstrip('/')}/agents/d/{name}"
    base = public_base(handler.settings, handler.request, page_origin=page_origin)
    return f"{base}agents/d/{name}"


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
    """A sentence naming the server that loads this workspace's agents, when it is another
    (and saying so when that server has stopped answering)."""
    lease = settings.get(SERVING)
    url = lease.holder_url() if lease is not None else None
    if not url:
        return ""
    silent = serving_silence(settings)
    return f" On this workspace agents are served by the server at {url}." + (
        f" {silent}" if silent else "")


def serving_silence(settings: dict[str, Any]) -> str | None:
    """"The serving server (URL) is not responding since ..." while another server holds the
    serving lease and has stopped beating (serving/lease.py); ``None`` otherwise."""
    lease = settings.get(SERVING)
    if lease is None:
        return None
    since = lease.silent_since()
    return None if since is None else silence_message(lease.holder_url() or "", since)


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
