"""Access-token management under ``<base_url>agents/api/tokens``: mint, list, revoke.

Jupyter-authenticated like the rest of the management API (these tokens are what the Arena
SDK and CLI then use; see ``control_plane.py``). The secret is in the answer to ``POST`` only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from server_extension.handlers.management import ManagementHandler
from server_extension.workspace.registry import TokenRecord
from server_extension.workspace.tokens import TokenError, listing, mint, revoke

TOKEN_ID = r"(?P<token_id>[0-9a-f]{32})"  # noqa: S105 - a URL pattern, not a secret


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC).isoformat()


def token_json(record: TokenRecord) -> dict[str, Any]:
    """The REST shape of a token, without its secret."""
    return {"id": record.id, "name": record.name, "created_at": _iso(record.created_at),
            "last_used_at": _iso(record.last_used_at)}


class TokensHandler(ManagementHandler):
    """``GET`` lists the workspace's tokens; ``POST {"name"}`` mints one (201, secret once)."""

    @web.authenticated
    @authorized
    def get(self) -> None:
        """List tokens (names and times, never secrets)."""
        self.reply({"tokens": [token_json(r) for r in listing(self.registry)]})

    @web.authenticated
    @authorized
    def post(self) -> None:
        """Mint a token."""
        try:
            minted = mint(self.registry, self.json_body().get("name"))
        except TokenError as exc:
            raise web.HTTPError(400, "%s", exc) from exc
        self.set_header("Cache-Control", "no-store")
        self.reply({**token_json(minted.record), "token": minted.secret}, status=201)


class TokenHandler(ManagementHandler):
    """``DELETE agents/api/tokens/{id}``: revoke (204; 404 if unknown)."""

    @web.authenticated
    @authorized
    def delete(self, token_id: str) -> None:
        """Revoke a token."""
        try:
            revoke(self.registry, token_id)
        except TokenError as exc:
            raise web.HTTPError(404, "%s", exc) from exc
        self.set_status(204)
        self.finish()


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/agents/api/tokens", TokensHandler),
    (rf"/agents/api/tokens/{TOKEN_ID}", TokenHandler),
]
