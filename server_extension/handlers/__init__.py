"""All HTTP routes of the workbench, built in one place for every host (server or Voila)."""

from __future__ import annotations

from tornado import web

from server_extension.handlers import (
    checkpoints,
    control_plane,
    inference,
    llm,
    management,
    observability,
    openai,
    serving_state,
    tokens,
)


def all_routes() -> list[tuple[str, type[web.RequestHandler]]]:
    """Route patterns relative to the server's base_url, management first."""
    return [*management.routes, *serving_state.routes, *checkpoints.routes, *tokens.routes,
            *observability.routes, *inference.routes, *llm.routes, *openai.routes,
            *inference.fallback_routes, *control_plane.routes]


def route_first(app: web.Application, handlers: set[type[web.RequestHandler]]) -> bool:
    """Move the router rule holding ``handlers`` to the front of ``app``'s routing.

    Tornado tries host rules in the order they were added, and every extension loaded before
    this one (JupyterLab, Voila, ...) adds dozens of patterns that an inference request would
    otherwise be matched against first: about 20 µs of a ~1 ms request on this machine. The
    workbench's patterns all start with ``agents/``, so trying them first shadows nothing.
    Returns whether the rule was found.
    """
    rules = app.default_router.rules
    for index, rule in enumerate(rules):
        inner = getattr(rule.target, "rules", None) or []
        if any(r.target is handler for r in inner for handler in handlers):
            rules.insert(0, rules.pop(index))
            return True
    return False
