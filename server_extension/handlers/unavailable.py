"""What every workbench route answers when the extension could not start on its workspace.

A read-only workspace used to leave the extension unloaded after one warning line, so every
``agents/api`` call met Jupyter's HTML 404. Instead each answers 503 with the reason.
"""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web


class UnavailableHandler(web.RequestHandler):
    """503 naming why the workbench did not start, for every verb."""

    SETTING = "agents_workbench_startup_error"

    def check_xsrf_cookie(self) -> None:
        """Nothing is changed here: no XSRF check."""

    @allow_unauthenticated
    def _answer(self) -> None:
        self.set_status(503)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        message = str(self.settings.get(self.SETTING) or "agents-workbench did not start.")
        self.finish(json.dumps({"message": message, "error": message}))

    get = post = put = patch = delete = _answer
