"""Voila with the workbench: the Agents panel published as a standalone web app.

Standalone Voila loads no Jupyter server extensions, so a kernel it starts would find no
management API to talk to. :class:`WorkbenchVoila` is ``voila.app.Voila`` plus the
workbench: it builds the same services the server extension builds (store, registry,
deployer: :meth:`AgentsWorkbenchApp.initialize_settings`, from the same
``--AgentsWorkbenchApp.*`` config), registers the same routes
(:func:`server_extension.handlers.all_routes`) under its ``base_url``, and tells its kernels
where the API is: ``AGENTS_WORKBENCH_URL``/``AGENTS_WORKBENCH_TOKEN`` in their environment,
and a discovery file like the extension's. Example::

    agents-workbench app --root ./workspace --port 8866
    python -m server_extension.hosts.voila_app notebooks/Agents.ipynb \
        --AgentsWorkbenchApp.root_dir=./workspace --port=8866 --no-browser

The app always requires a token (``--token=...``, else one is generated and printed in the
URL): the panel's kernel authenticates to the management API with it, and visitors without
it cannot reach the page or the API.

When Voila runs as an extension inside ``jupyter server`` (pages under ``/voila/render/``,
with this project's extension enabled too) nothing here is needed: Voila's kernels are that
server's kernels and find it through its discovery file, like any other kernel.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from jupyter_core.utils import run_sync
from jupyter_server.log import log_request
from jupyter_server.utils import url_path_join
from traitlets import default
from voila.app import Voila

from server_extension.handlers import all_routes
from server_extension.hosts.app import AgentsWorkbenchApp
from workbench_core import discovery
from workbench_core.store import ROOT_ENV


class WorkbenchVoila(Voila):
    """Voila serving the workbench's management and inference routes beside the notebook."""

    description = "agents-workbench app: the Agents panel as a Voila app, with the workbench API"
    classes: ClassVar[list[Any]] = [*Voila.classes, AgentsWorkbenchApp]

    @default("auto_token")
    def _default_auto_token(self) -> bool:
        # Without a token Voila switches auth off, and then the API would be open to anyone
        # who can reach the port; with one, the kernel authenticates and XSRF stays on.
        return True

    @default("port_retries")
    def _default_port_retries(self) -> int:
        # Kernels are told the URL before Voila binds; trying other ports would break it.
        return 0

    @property
    def kernel_url(self) -> str:
        """The URL this app's kernels use to reach it (loopback when bound to all addresses)."""
        host = self.ip if self.ip not in ("", "0.0.0.0", "::", "localhost") else "127.0.0.1"  # noqa: S104
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}{url_path_join(self.base_url, '/')}"

    def init_settings(self) -> dict[str, Any]:
        """Voila's settings plus the workbench services; point kernels at this app."""
        settings: dict[str, Any] = super().init_settings()
        token = self.identity_provider.token
        if not token:
            raise SystemExit(
                "agents-workbench app needs a token: the panel's kernel authenticates to the "
                "management API with it. Pass --token=<secret> or leave --token out to have "
                "one generated."
            )
        # ``serverapp=None``: there is no Jupyter server here, so the extension must not
        # write a discovery file for one; this app writes its own below.
        self.workbench = AgentsWorkbenchApp(parent=self, serverapp=None)
        if "import_mode" not in self.config.get("AgentsWorkbenchApp", {}):
            # The app's link (with its token) may be handed to others, and importing runs a
            # file's code: off unless the app is started with an explicit import_mode.
            self.workbench.import_mode = "off"
        self.workbench.initialize_settings()
        self.workbench.lease.url = self.kernel_url  # where other servers' panels send callers
        settings.update(self.workbench.settings)
        # Jupyter's access log (successes at debug level, failures as warnings), which Voila
        # leaves out: it is how an operator sees who calls the workbench API.
        settings["log_function"] = functools.partial(log_request,
                                                     record_prometheus_metrics=False)
        root = str(self.workbench.store.root)
        os.environ[discovery.URL_ENV] = self.kernel_url
        os.environ[discovery.TOKEN_ENV] = token
        os.environ[ROOT_ENV] = root
        self._discovery_path: Path | None = discovery.runtime_file()
        discovery.write(discovery.ServerInfo(url=self.kernel_url, token=token,
                                             pid=os.getpid(), root=root),
                        self._discovery_path)
        return settings

    def init_handlers(self) -> list[Any]:
        """The workbench routes first: Voila's notebook handler matches every other path."""
        ours = [(url_path_join(self.base_url, pattern), handler)
                for pattern, handler in all_routes()]
        return [*ours, *super().init_handlers()]

    def stop(self) -> None:
        """Stop kernels (Voila), then the deployer, and remove the discovery file."""
        try:
            super().stop()
        finally:
            workbench = getattr(self, "workbench", None)
            if workbench is not None:
                run_sync(workbench.stop_extension)()
            path = getattr(self, "_discovery_path", None)
            if path is not None:
                path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """Run the app (``python -m server_extension.hosts.voila_app NOTEBOOK [options]``)."""
    WorkbenchVoila.launch_instance(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
