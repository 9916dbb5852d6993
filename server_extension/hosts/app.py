"""The Jupyter server extension: builds the workbench services and registers its routes."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from tornado.ioloop import IOLoop
from traitlets import Bool, Enum, Float, Int, List, TraitError, Unicode, default, validate

from server_extension.handlers import all_routes, route_first
from server_extension.handlers.base import (
    DEPLOYER,
    MAX_BODY_BYTES,
    METRICS,
    REGISTRY,
    SERVING,
    SESSIONS,
    STATUS_KIND_PUBLIC,
    STORE,
)
from server_extension.handlers.imports import EVALUATOR, IMPORTS
from server_extension.handlers.public_url import (
    DEFAULT_TRUSTED,
    PUBLIC_URL,
    TRUSTED_PROXIES,
    parse_networks,
)
from server_extension.handlers.serving_state import RECONCILER
from server_extension.handlers.unavailable import UnavailableHandler
from server_extension.hosts.activity import ActivityReporter
from server_extension.serving.deployer import Deployer
from server_extension.serving.importing.evaluation import BackgroundEvaluator
from server_extension.serving.metrics import MetricsStore, register_collector, unregister_store
from server_extension.serving.ray_backend import RayBackend
from server_extension.serving.reconciler import Reconciler, ServingLease
from server_extension.serving.worker.serving import Limits
from server_extension.workspace.registry import Registry
from server_extension.workspace.sessions import SessionStore
from workbench_core import discovery
from workbench_core.store import ExperimentStore, default_root

# The episode player renders gymnasium environments (pygame, hence SDL) in the kernel, which
# inherits this process's environment. Frames are drawn offscreen, but SDL still probes for a
# display and prints "XDG_RUNTIME_DIR is invalid or not set" on headless machines; its dummy
# drivers draw the same frames without that probe. Only where no window could open anyway
# (Linux without a display), so a desktop user's render_mode="human" still gets its window;
# a driver the user chose is kept.
OFFSCREEN_SDL = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


def quiet_offscreen_rendering() -> None:
    """Give kernels started from here SDL's dummy drivers on a headless Linux machine."""
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if sys.platform.startswith("linux") and headless:
        for name, value in OFFSCREEN_SDL.items():
            os.environ.setdefault(name, value)


class AgentsWorkbenchApp(ExtensionApp):
    """Serves experiments' checkpoints as agents under ``<base_url>agents/``."""

    name = "server_extension"
    description = "agents-workbench: deploy trained checkpoints as HTTP endpoints"

    root_dir = Unicode(
        help="Workspace folder: experiments/ and the registry. "
        "Default: $AGENTS_WORKBENCH_ROOT, else ~/agents-workbench."
    ).tag(config=True)

    @default("root_dir")
    def _default_root(self) -> str:
        return str(default_root())

    device = Unicode("cpu", help="Torch device for runtimes: 'cpu' or 'cuda'.").tag(config=True)
    worker_threads = Int(
        4, help="Threads that run an agent's calls in its worker (under isolation='thread': "
        "the server's threads for all agents).").tag(config=True)
    torch_threads = Int(
        0, help="torch.set_num_threads for each agent's worker (for the server process under "
        "isolation='thread'); 0: half the machine's cores in each worker (torch's default "
        "in the server under isolation='thread')."
    ).tag(config=True)
    health_check_interval = Float(
        30.0, help="Seconds between health probes of deployed agents; 0 turns them off."
    ).tag(config=True)
    health_check_failures = Int(
        2, help="Failed probes in a row before a Deployed agent becomes Failed."
    ).tag(config=True)
    request_timeout = Float(60.0, help="Seconds a model call may take before 504.").tag(config=True)
    max_body_mb = Float(32.0, help="Largest inference request body, in MiB (413 above).").tag(
        config=True
    )
    batching = Enum(
        ["auto", "on", "off"], "auto",
        help="Gather concurrent calls to one agent into one batched call: get_action into "
        "one forward, LLM generate requests with the same settings into one generate. For "
        "get_action 'auto' does so only for policies whose forward is costly (at least 0.5 ms, "
        "measured at load): for small MLPs the gathering costs more than it saves. LLM "
        "generate is batched under 'auto' and 'on'.",
    ).tag(config=True)
    inline_below_ms = Float(
        0.0, help="Serve get_action on the event loop, skipping the hop to a worker thread, "
        "for agents of this package's AgileRL runtime whose 8-row call measured at most this "
        "many ms at load (and requests of at most 8 float32 rows). About doubles what a core "
        "serves for demo-sized MLPs; the price is that such a call can no longer time out "
        "(a hang would stall the server). 0 (the default) keeps every call on a thread."
    ).tag(config=True)
    isolation = Enum(
        ["process", "thread"], "process",
        help="Where local agents' models run. 'process' (the default): each agent in a worker "
        "process this server supervises, so a checkpoint that crashes, hangs or eats memory "
        "costs only its agent. 'thread': inside this server on worker threads (no isolation; "
        "for debugging a runtime with a debugger, or the inline path).",
    ).tag(config=True)
    load_timeout = Float(
        120.0, help="Seconds a worker may take to load and probe a checkpoint before the agent "
        "is Failed and the worker stopped.",
    ).tag(config=True)
    leader_silence_s = Float(
        10.0, help="Seconds without the serving server's heartbeat (it beats every second) "
        "after which the other servers of the workspace say it is not responding and offer to "
        "take over (POST agents/api/serving/takeover, or the panel's button).",
    ).tag(config=True)
    warm_templates = Bool(
        True, help="Start the worker templates (one per framework family, each importing its "
        "libraries) as the extension loads, so a first Connect finds its runtime imported. Off: "
        "a family's template starts at its first Connect, and a server whose agents never need "
        "torch or transformers never imports them (the test suite's servers run this way).",
    ).tag(config=True)
    worker_nice = Int(
        5, help="Nice level of every agent's worker process (0-19; higher yields the CPU "
        "sooner), so a spinning checkpoint cannot starve the server's event loop. A worker "
        "never runs at a lower level than the server itself (that needs privileges).",
    ).tag(config=True)
    worker_memory_mb = Float(
        4096.0, help="Memory one agent's worker may use, in MiB (its heap is capped at this and "
        "its resident size watched); past it the call fails or the worker is stopped with the "
        "reason. 0: no limit.",
    ).tag(config=True)
    max_concurrent_calls = Int(
        64, help="Calls one agent holds at once (in its worker or queued for it); more are "
        "answered 429 with Retry-After.",
    ).tag(config=True)
    max_batch_rows = Int(
        65536, help="Rows (leading-axis length) one get_action or predict call may carry "
        "(400 above).",
    ).tag(config=True)
    max_array_mb = Float(
        256.0, help="Bytes the arrays of one call may decode to, in MiB (400 above).",
    ).tag(config=True)
    worker_restart_limit = Int(
        3, help="Times an agent's worker is restarted after dying within two minutes before "
        "the agent is left Failed.",
    ).tag(config=True)
    import_mode = Enum(
        ["on", "workspace", "off"], "on",
        help="Who may import checkpoints through POST agents/api/experiments (the panel's "
        "Import, agents_widget.import_checkpoint). 'on': any path this server's user can read "
        "(JupyterLab: your own machine). 'workspace': paths under root_dir only. 'off': no "
        "import (the Voila app's default). Importing runs the file's code in a worker process.",
    ).tag(config=True)
    metrics_enabled = Bool(
        True, help="Keep request counts, latencies and a request log per deployment (shown in "
        "the panel, under agents/api/agents/<name>/metrics and in the server's /metrics)."
    ).tag(config=True)
    sessions_per_agent = Int(
        1000, help="Chat sessions an LLM agent keeps; past it the least recently updated go."
    ).tag(config=True)
    sessions_per_caller = Int(
        100, help="Chat sessions one client address keeps per agent; past it its own least "
        "recently updated go first."
    ).tag(config=True)
    request_log_size = Int(
        200, help="Requests each deployment's request log keeps (the most recent ones)."
    ).tag(config=True)

    backend = Enum(
        ["local", "ray"], "local",
        help="Serving backend of agents whose options name none: 'local' runs models in this "
        "server, 'ray' deploys each agent as a Ray Serve application (see ray_address).",
    ).tag(config=True)
    ray_address = Unicode(
        None, allow_none=True,
        help="Ray cluster for the 'ray' backend (host:port of the head, or ray://host:10001). "
        "Empty: a local Ray is started on first use, with ray_num_cpus CPUs.",
    ).tag(config=True)
    ray_num_cpus = Int(
        0, help="CPUs of the local Ray started when ray_address is empty; 0 means all."
    ).tag(config=True)
    ray_replica_cpus = Float(
        1.0, help="CPUs Ray reserves for each replica of a 'ray' agent (fractions allowed)."
    ).tag(config=True)

    startup_error: str | None = None

    public_url = Unicode(
        "", help="The URL users reach this server at, e.g. https://hub.example.org (this "
        "server's base_url is appended) or https://example.org/workbench/ (a path replaces "
        "it). Wins over everything else; empty: $JUPYTERHUB_PUBLIC_URL under JupyterHub, the "
        "panel's page, else the request's own host (forwarded scheme and host from "
        "trusted_proxies only).",
    ).tag(config=True)

    @validate("public_url")
    def _check_public_url(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and not (value.startswith(("http://", "https://")) and len(value.split("/")) > 2
                          and value.split("/")[2]):
            raise TraitError(f"public_url {value!r} must start with http:// or https://")
        return value

    trusted_proxies = List(
        Unicode(), list(DEFAULT_TRUSTED),
        help="Addresses or networks (CIDR) whose X-Forwarded-Proto / X-Scheme / "
        "X-Forwarded-Host count when building public URLs (the first value of each: the "
        "front-most proxy's). Default: loopback, where JupyterHub's proxy usually runs.",
    ).tag(config=True)

    @validate("trusted_proxies")
    def _check_proxies(self, proposal: Any) -> list[str]:
        try:
            parse_networks(proposal["value"])
        except ValueError as exc:
            raise TraitError(str(exc)) from exc
        return list(proposal["value"])

    status_kind_public = Bool(
        False, help="Let GET agents/d/<name>/status show the agent's kind (algorithm, "
        "multi-agent, LLM...) to callers without a key or token. Off: anonymous callers get "
        "only the deployment's ids; callers with the key or a token get everything.",
    ).tag(config=True)
    deployed_keeps_alive = Bool(
        False, help="Count Deployed agents as activity even when nobody calls them, so an "
        "idle culler (jupyterhub-idle-culler) never stops a server that serves agents. Off: "
        "only calls count (each authenticated inference call is activity), so a server whose "
        "agents sit idle is culled like any idle server.",
    ).tag(config=True)

    provision_notebooks = Bool(
        False, help="At start, copy the shipped notebooks (the Agents notebook first) into "
        "<root_dir>/notebooks, trusted, unless that folder exists: what `agents-workbench "
        "run` does, for servers started by something else (a JupyterHub spawner).",
    ).tag(config=True)

    def initialize_settings(self) -> None:
        """Open the store and registry, build the deployer, write the discovery file.

        A workspace that cannot be written (a read-only disk) is a clear error in the log and
        a 503 naming it on every workbench route, never a silently missing extension.
        """
        try:
            self._initialize_settings()
        except (OSError, sqlite3.Error) as exc:
            self.startup_error = (
                f"agents-workbench cannot use the workspace {self.root_dir}: {exc}. The "
                "workspace must be writable (the registry and sessions live in it): make it "
                "writable, or pick another with --AgentsWorkbenchApp.root_dir, then restart.")
            self.log.error(self.startup_error)
            self.settings[UnavailableHandler.SETTING] = self.startup_error

    def _initialize_settings(self) -> None:
        root = Path(self.root_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        self._share_log()
        if self.provision_notebooks:
            from server_extension.hosts.cli import provision

            provision(root)
        quiet_offscreen_rendering()
        if self.torch_threads > 0 and self.isolation == "thread":
            import torch

            torch.set_num_threads(self.torch_threads)
        self.store = ExperimentStore(root)
        self.registry = Registry(root / "registry.sqlite3")
        self.sessions = SessionStore(root / "sessions.sqlite3",
                                     max_per_agent=self.sessions_per_agent,
                                     max_per_caller=self.sessions_per_caller)
        # Nothing of Ray is imported until an agent asks for the 'ray' backend.
        self.ray_backend = RayBackend(
            self.ray_address, num_cpus=self.ray_num_cpus or None,
            replica_cpus=self.ray_replica_cpus, request_timeout=self.request_timeout,
            workspace=root,
        )
        self.deployer = Deployer(
            self.registry,
            self.store,
            device=self.device,
            worker_threads=self.worker_threads,
            health_check_interval=self.health_check_interval,
            health_check_failures=self.health_check_failures,
            request_timeout=self.request_timeout,
            batching=self.batching,
            inline_below_ms=self.inline_below_ms,
            backend=self.backend,
            backends={"ray": self.ray_backend.load},
            isolation=self.isolation,
            load_timeout=self.load_timeout,
            worker_memory_mb=self.worker_memory_mb,
            max_concurrent_calls=self.max_concurrent_calls,
            limits=Limits(max_rows=self.max_batch_rows,
                          max_array_bytes=int(self.max_array_mb * 1024 * 1024)),
            torch_threads=self.torch_threads,
            worker_nice=self.worker_nice,
            warm=self.warm_templates,
            restart_limit=self.worker_restart_limit,
        )
        self.metrics: MetricsStore | None = None
        if self.metrics_enabled:
            self.metrics = MetricsStore(log_size=self.request_log_size)
            register_collector(self.metrics)
            self.settings[METRICS] = self.metrics
        self.settings[IMPORTS] = {"mode": self.import_mode, "memory_mb": self.worker_memory_mb,
                                  "timeout_s": max(self.load_timeout, 300.0)}
        # Imported checkpoints without scores are scored in worker processes, in the
        # background; started with the loop, it resumes what a stopped server left.
        self.evaluator = BackgroundEvaluator(root, memory_mb=self.worker_memory_mb,
                                             nice=min(self.worker_nice + 5, 19))
        self.settings[EVALUATOR] = self.evaluator
        self.settings.update({
            DEPLOYER: self.deployer,
            STORE: self.store,
            REGISTRY: self.registry,
            SESSIONS: self.sessions,
            MAX_BODY_BYTES: int(self.max_body_mb * 1024 * 1024),
            PUBLIC_URL: self.public_url,
            TRUSTED_PROXIES: parse_networks(self.trusted_proxies),
            STATUS_KIND_PUBLIC: self.status_kind_public,
        })
        self.activity = ActivityReporter(self.settings, self.registry,
                                         keep_alive=self.deployed_keeps_alive)
        # Another server may serve this workspace already (workspace.py): until the lease is
        # decided, Connect only writes the registry.
        self.deployer.serves = False
        self.lease = ServingLease(root, self.registry, silence_s=self.leader_silence_s)
        # Templates import for seconds: start them now, before the HTTP server listens, when
        # this server will be the one that loads agents (the lease is free).
        if self.lease.try_acquire():
            self.deployer.warm_templates()
        self.settings[SERVING] = self.lease
        self.reconciler = Reconciler(self.deployer, self.lease)
        self.settings[RECONCILER] = self.reconciler
        # The loop may not run yet while extensions load; restore agents once it does.
        IOLoop.current().add_callback(self._start_serving)
        self._discovery_path: Path | None = None
        IOLoop.current().add_callback(self._write_discovery)
        self.log.info("agents-workbench serving experiments from %s", root)

    def _start_serving(self) -> None:
        server = self.serverapp
        if server is not None:  # the Voila app sets the URL itself (it has no serverapp)
            self.lease.url = server.connection_url
        self.deployer.serves = self.lease.try_acquire()
        if not self.deployer.serves:
            self.log.info("agents-workbench: another server (%s) loads this workspace's "
                          "agents; this one follows its registry", self.lease.holder_url())
        self.deployer.start()
        self.reconciler.start()
        self.evaluator.start()
        if server is not None:
            # The web app copied this extension's settings when it was built: stamps must go
            # to its own dict, the one jupyter_server's last_activity() reads.
            self.activity.settings = server.web_app.settings
        self.activity.start()
        if self.deployer.serves and self.ray_address and any(
                record.options.get("backend", self.backend) == "ray"
                for record in self.registry.list()):
            # A server of this workspace killed earlier may have left applications on the
            # cluster; joining now takes them over even if no Ray agent reconnects.
            self.ray_backend.adopt()

    def _share_log(self) -> None:
        # The workbench's modules log under "agents_workbench"; send that where Jupyter's own
        # log goes, with its format, instead of Python's bare last-resort handler.
        workbench_log = logging.getLogger("agents_workbench")
        if not workbench_log.handlers and isinstance(self.log, logging.Logger):
            for handler in self.log.handlers:
                workbench_log.addHandler(handler)
            workbench_log.setLevel(self.log.getEffectiveLevel())
            workbench_log.propagate = False

    def _write_discovery(self) -> None:
        server = self.serverapp
        if server is None:
            return
        path = discovery.runtime_file(runtime_dir=Path(server.runtime_dir))
        discovery.write(
            discovery.ServerInfo(
                url=server.connection_url, token=server.identity_provider.token or "",
                pid=os.getpid(), root=str(self.store.root),
            ),
            path,
        )
        self._discovery_path = path

    def initialize_handlers(self) -> None:
        """Register management and inference routes under the server's base_url."""
        if self.startup_error is not None:
            self.handlers.append((r"/agents/(?:api|d|arena)/.*", UnavailableHandler))
            return
        self.handlers.extend(all_routes())

    def _prepare_handlers(self) -> None:
        # jupyter_server adds self.handlers to the web app here; then put them first in line.
        super()._prepare_handlers()
        assert self.serverapp is not None
        route_first(self.serverapp.web_app, {handler for _, handler in all_routes()}
                    | {UnavailableHandler})

    async def stop_extension(self) -> None:
        """Drop loaded runtimes and remove the discovery file; registry rows stay."""
        if self.startup_error is not None:
            return  # nothing was started
        self.reconciler.stop()
        self.evaluator.stop()
        self.activity.stop()
        await self.deployer.stop()
        self.lease.release()  # after its workers stopped: another server takes over at once
        # After the deployer closed its runtimes, so their Serve applications go first.
        await asyncio.to_thread(self.ray_backend.shutdown)
        if self.metrics is not None:
            unregister_store(self.metrics)
        self.registry.close()
        self.lease.close()  # only now: closing it while SQLite has the file drops its locks
        self.sessions.close()
        if self._discovery_path is not None:
            self._discovery_path.unlink(missing_ok=True)

    def current_activity(self) -> dict[str, Any] | None:
        """Deployed agents keep jupyter_server's own idle shutdown (shutdown_no_activity_timeout)
        away only under ``deployed_keeps_alive``, as they keep the hub's culler away."""
        if self.startup_error is not None or not self.deployed_keeps_alive:
            return None
        live = [r.name for r in self.registry.list() if r.status == "Deployed"]
        return {"deployed_agents": live} if live else None
