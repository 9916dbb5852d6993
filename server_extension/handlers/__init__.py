"""All HTTP routes of the workbench, built in one place for every host (server or Voila)."""

from __future__ import annotations

from tornado import web

from . import inference, llm, management, observability


def all_routes() -> list[tuple[str, type[web.RequestHandler]]]:
    """Route patterns relative to the server's base_url, management first."""
    return [*management.routes, *observability.routes, *inference.routes, *llm.routes,
            *inference.fallback_routes]
