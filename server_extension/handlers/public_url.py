"""The URL a user can reach this server at, which is not always the address it listens on.

Under JupyterHub a single-user server listens on ``127.0.0.1:<random port>`` (or a pod's
address) and users reach it through the hub's proxy at ``<public host>/user/<name>/``; behind a
TLS front end the scheme is ``https`` although the server itself speaks ``http``. Every URL the
workbench hands out (endpoints, ``ARENA_BASE_URL``, the panel's header line) is built from
:func:`public_base`, first match wins:

1. ``AgentsWorkbenchApp.public_url``, when set (a path in it replaces the server's base_url);
2. ``$JUPYTERHUB_PUBLIC_URL`` (the hub sets it when its ``public_url`` is configured), whose
   origin is joined with this server's base_url (the hub's ``$JUPYTERHUB_SERVICE_PREFIX``);
3. the page origin the panel reports (management calls only, which are Jupyter-authenticated:
   the kernel asks the server directly, but the browser showing the panel knows where it is);
4. the request's own host, with the scheme of the first ``X-Forwarded-Proto`` (or
   ``X-Scheme``) value and the first ``X-Forwarded-Host`` value when the request came from a
   trusted proxy (``AgentsWorkbenchApp.trusted_proxies``; by default loopback only, where
   JupyterHub's proxy runs unless configured otherwise).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tornado import httputil

from workbench_core.discovery import PAGE_ORIGIN_HEADER

PUBLIC_URL = "agents_workbench_public_url"  # settings key: the explicit public_url ('' unset)
TRUSTED_PROXIES = "agents_workbench_trusted_proxies"  # settings key: a tuple of networks
HUB_PUBLIC_URL_ENV = "JUPYTERHUB_PUBLIC_URL"
HUB_PREFIX_ENV = "JUPYTERHUB_SERVICE_PREFIX"
DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks in ``values`` (addresses or CIDRs); ValueError names a bad entry."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(
                f"trusted_proxies entry {value!r} is not an IP address or network "
                "(e.g. 127.0.0.1 or 10.0.0.0/8)") from exc
    return tuple(networks)


def valid_origin(value: str) -> str | None:
    """``value`` as ``scheme://host[:port]`` if it is an http(s) origin without a path."""
    value = value.strip().rstrip("/")
    return value if _ORIGIN.match(value) else None


def _peer(request: httputil.HTTPServerRequest) -> str:
    # The socket's own peer: with Jupyter's trust_xheaders Tornado overwrites remote_ip from
    # X-Real-Ip / X-Forwarded-For, which a caller can forge.
    context = getattr(request.connection, "context", None)
    address = getattr(context, "address", None)
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(getattr(context, "_orig_remote_ip", None) or request.remote_ip or "")


def trusted(request: httputil.HTTPServerRequest, networks: tuple[Network, ...]) -> bool:
    """Whether the request's direct peer is one of the trusted proxies."""
    try:
        peer = ipaddress.ip_address(_peer(request))
    except ValueError:
        return False  # a Unix socket has no address; nothing forwards through it here
    return any(peer in network for network in networks)


def _first(value: str | None) -> str:
    return (value or "").split(",")[0].strip()


def request_origin(request: httputil.HTTPServerRequest, networks: tuple[Network, ...]) -> str:
    """The origin the caller used: forwarded scheme and host only from a trusted proxy."""
    # With trust_xheaders Tornado has already set request.protocol from the *last*
    # X-Forwarded-Proto value ("https,http" -> http); the front-most proxy wrote the first.
    scheme = request.protocol
    host = request.host
    if trusted(request, networks):
        forwarded = _first(request.headers.get("X-Forwarded-Proto")) or _first(
            request.headers.get("X-Scheme"))
        if forwarded.lower() in ("http", "https"):
            scheme = forwarded.lower()
        forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
        if forwarded_host and valid_origin(f"{scheme}://{forwarded_host}"):
            host = forwarded_host
    return f"{scheme}://{host}"


def public_base(settings: dict[str, Any], request: httputil.HTTPServerRequest, *,
                page_origin: bool = False) -> str:
    """This server's public base URL, ending in ``/`` (see the module docstring).

    ``page_origin`` allows the panel's reported page origin (only for requests that passed
    Jupyter auth: anyone else could point the URLs handed out elsewhere).
    """
    base_url = str(settings.get("base_url", "/") or "/")
    if not base_url.endswith("/"):
        base_url += "/"
    explicit = str(settings.get(PUBLIC_URL) or "")
    if explicit:
        parts = urlsplit(explicit)
        path = parts.path if parts.path not in ("", "/") else base_url
        return f"{parts.scheme}://{parts.netloc}{path.rstrip('/')}/"
    hub = os.environ.get(HUB_PUBLIC_URL_ENV, "")
    if hub:
        parts = urlsplit(hub)
        prefix = os.environ.get(HUB_PREFIX_ENV) or base_url
        return f"{parts.scheme}://{parts.netloc}{_slashed(prefix)}"
    if page_origin:
        origin = valid_origin(request.headers.get(PAGE_ORIGIN_HEADER, ""))
        if origin:
            return f"{origin}{base_url}"
    networks = settings.get(TRUSTED_PROXIES)
    if networks is None:
        networks = parse_networks(DEFAULT_TRUSTED)
    return f"{request_origin(request, networks)}{base_url}"


def _slashed(path: str) -> str:
    return "/" + path.strip("/") + "/" if path.strip("/") else "/"
