"""A JupyterHub service that answers a stopped user's inference paths with JSON.

While a user's server runs, the hub's proxy (configurable-http-proxy) routes
``/user/<name>/`` to it. Once the server is stopped or culled that route is gone and the
request falls through to the hub, which answers HTML: a login redirect for ``GET status``, a
403 "_xsrf argument missing" page for ``POST get_action``. API clients then fail on JSON
decoding instead of being told what happened.

Run as a hub-managed service with a proxy route for ``/user/`` (``Proxy.extra_routes``, see
``jupyter-config/jupyterhub/jupyterhub_config.py``): the proxy picks the longest matching
prefix, so a running server's own ``/user/<name>/`` route still wins and only requests for a
user whose server is not running reach this service. Then:

* ``/user/<name>/agents/d/...`` and ``/user/<name>/agents/arena/...`` get the inference
  contract's ``503 {"success": false, "error": "... the user's server is not running ..."}``
  with ``Retry-After`` (the OpenAI routes under ``.../v1/`` get OpenAI's error shape);
* every other path is redirected to ``/hub/user/<name>/...``, exactly what the hub itself does
  with it, so browsers still get the hub's "start your server" page.

Nothing here reads credentials or user data; it needs no hub API token.
"""

from __future__ import annotations

import json
import os
import re
import sys
from urllib.parse import urlsplit

from tornado import ioloop, web

RETRY_AFTER_S = 30
_PATH = re.compile(r"^(?P<prefix>/(?:.*/)?)user/(?P<user>[^/]+)(?P<rest>/.*)?$")


def not_running_message(user: str, hub_base: str) -> str:
    """What an API client is told about a server that is not running."""
    return (f"The user's server is not running (user {user!r}): it was stopped or culled "
            "for inactivity, so its agents are not being served. The user can start it again "
            f"from the hub ({hub_base}hub/home); agents that were Deployed reconnect when "
            "it starts.")


class StoppedServerHandler(web.RequestHandler):
    """Every method, every path under the ``/user/`` route."""

    def check_xsrf_cookie(self) -> None:
        """Nothing to protect: no state changes here."""

    def _answer(self) -> None:
        match = _PATH.match(self.request.path)
        if match is None:
            raise web.HTTPError(404)
        prefix, user, rest = match["prefix"], match["user"], match["rest"] or "/"
        if rest.startswith(("/agents/d/", "/agents/arena/")):
            self.set_status(503)
            self.set_header("Content-Type", "application/json")
            self.set_header("Cache-Control", "no-store")
            self.set_header("Retry-After", str(RETRY_AFTER_S))
            message = not_running_message(user, prefix)
            if "/v1/" in rest:
                body: dict[str, object] = {"error": {
                    "message": message, "type": "server_not_running", "param": None,
                    "code": "server_not_running"}}
            else:
                body = {"success": False, "error": message}
            self.finish(json.dumps(body))
            return
        query = f"?{self.request.query}" if self.request.query else ""
        # 307 keeps the method and body, as the hub's own redirect does for GET.
        self.redirect(f"{prefix}hub/user/{user}{rest}{query}", status=307)

    get = post = put = patch = delete = head = options = _answer


def make_app() -> web.Application:
    """The service's Tornado application."""
    return web.Application([(r"/.*", StoppedServerHandler)])


def main() -> None:
    """Listen where the hub says (``$JUPYTERHUB_SERVICE_URL``) or on ``argv[1]``."""
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    parts = urlsplit(url or "http://127.0.0.1:10102")
    make_app().listen(parts.port or 80, parts.hostname or "127.0.0.1")
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
