"""``agents/api/serving``: which server of the workspace loads its agents, and a takeover.

``GET`` says whether this server serves, the serving server's URL, and whether that server
still beats (serving/lease.py); ``POST agents/api/serving/takeover`` makes this server the
serving one when the other has stopped beating (frozen by SIGSTOP or Ctrl-Z, hung, or on a
machine gone away). Both need Jupyter auth like the rest of the management API.
"""

from __future__ import annotations

import sqlite3
from typing import cast

from jupyter_server.auth.decorator import authorized
from tornado import web

from server_extension.handlers.base import SERVING
from server_extension.handlers.management import ManagementHandler
from server_extension.serving.lease import ServingLease
from server_extension.serving.reconciler import Reconciler

RECONCILER = "agents_workbench_reconciler"  # the settings key of the server's Reconciler


class ServingHandler(ManagementHandler):
    """``GET agents/api/serving``: the workspace's serving server as this server sees it."""

    @property
    def lease(self) -> ServingLease:
        """The server's view of the workspace's serving lease."""
        lease = self.settings.get(SERVING)
        if lease is None:
            raise web.HTTPError(503, "This server has no serving lease (it did not start).")
        return cast(ServingLease, lease)

    @web.authenticated
    @authorized
    def get(self) -> None:
        """``serving_here``, ``serving_url``, ``responding``, ``silent_since``,
        ``can_take_over`` and, while the serving server is silent, ``message``."""
        self.reply(self.lease.state())


class TakeoverHandler(ServingHandler):
    """``POST agents/api/serving/takeover``: serve the workspace's agents from this server."""

    @web.authenticated
    @authorized
    def post(self) -> None:
        """Take the lease from a silent serving server; 409 while it still beats."""
        lease = self.lease
        if lease.held:
            self.reply({**lease.state(), "took_over": False})
            return
        reconciler = cast(Reconciler, self.settings[RECONCILER])
        try:
            took = lease.silent_since() is not None and reconciler.take_over()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            # The frozen server stopped in the middle of a registry write and holds it.
            raise web.HTTPError(
                503, "The registry is locked by the server that stopped (%s): it was frozen "
                "in the middle of a write. Stop that process (kill it); this server then takes "
                "over by itself.", exc) from exc
        if not took:
            url = lease.holder_url() or "another server"
            raise web.HTTPError(
                409, "The serving server (%s) is responding (it beat within the last %g s); "
                "a takeover is only for a server that stopped. Stop it to serve from here.",
                url, lease.silence_s)
        self.log.warning("agents-workbench: serving taken over by this server on request")
        self.reply({**lease.state(), "took_over": True})


routes: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/agents/api/serving", ServingHandler),
    (r"/agents/api/serving/takeover", TakeoverHandler),
]
