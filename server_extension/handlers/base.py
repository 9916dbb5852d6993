"""What the management and inference handlers share: the services they read from settings."""

from __future__ import annotations

from typing import Any, cast

from tornado import web

from ..deployer import Deployer
from ..registry import Registry
from ..store import ExperimentStore

# Keys under which the extension app puts its services into the Tornado settings.
DEPLOYER = "agents_workbench_deployer"
STORE = "agents_workbench_store"
REGISTRY = "agents_workbench_registry"
MAX_BODY_BYTES = "agents_workbench_max_body_bytes"
SESSIONS = "agents_workbench_sessions"


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
    base_url = handler.settings.get("base_url", "/")
    request = handler.request
    return f"{request.protocol}://{request.host}{base_url.rstrip('/')}/agents/d/{name}"
