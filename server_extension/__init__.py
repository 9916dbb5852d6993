"""agents-workbench's Jupyter server extension: experiments in, HTTP endpoints out."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from server_extension.hosts.app import AgentsWorkbenchApp

    return [{"module": "server_extension", "app": AgentsWorkbenchApp}]
