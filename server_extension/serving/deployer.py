"""The deployer: turns Connect into a live runtime and keeps the registry truthful.

Lifecycle (see the inference contract)::

    Undeployed --connect--> Pending --loaded + probe answered--> Deployed
    Pending --load or probe failed--> Failed (error holds the reason)
    Deployed --health probe fails--> Pending --fails again--> Failed (runtime dropped)
    Failed --probe answers--> Deployed (runtimes that recover by themselves: Ray, kept live
                                        and probed, their calls refused with a 503)
    any --disconnect--> Undeployed

Where models run: with ``isolation="process"`` (the server's default) each local agent is
loaded, probed and served in a worker process of its own (``server_extension/serving/worker/``); the
deployer starts it, relays calls to it (:meth:`relay`, :meth:`invoke`, :meth:`stream`),
restarts it when it dies while serving and fails the agent when it dies while loading or too
often. With ``isolation="thread"`` (and for the Ray backend, whose models live in Ray) the
runtime is loaded here and called on a worker thread pool.

Threading: every public method is called on the Tornado event loop and returns quickly.
Loading and probing in-process run on a small loader pool, inference on a worker pool;
results come back to the loop through ``asyncio.wrap_future``. ``_live`` and ``_generation``
are only touched on the loop, so they need no lock. A runtime may be called by several
threads at once.

Example::

    deployer = Deployer(registry, store, device="cpu")
    deployer.start()                     # reloads agents that were connected before a restart
    await deployer.connect("cartpole")   # returns at once with status Pending
    live = deployer.live("cartpole")     # a LiveDeployment once Deployed
    action, _ = await deployer.call(live, live.runtime.get_action, obs)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tornado.ioloop import PeriodicCallback

from server_extension.serving import batching
from server_extension.serving.batching import MODES as BATCHING_MODES
from server_extension.serving.inline import inline_limit
from server_extension.serving.runtimes import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
    load_runtime,
    numpy_policy,
    warm_loader,
)
from server_extension.serving.worker import families, serving
from server_extension.serving.worker.supervisor import (
    WorkerBusy,
    WorkerCallError,
    WorkerDied,
    WorkerProcess,
    WorkerTimeout,
    rss_bytes,
    template_for,
    warm_templates,
)
from server_extension.workspace.registry import (
    AgentRecord,
    CheckpointChange,
    NotFound,
    Registry,
    commit_change,
    end_unfinished_changes,
    get_change,
    mark_change,
    open_changes,
)
from workbench_core.store import ExperimentStore, StoreError

T = TypeVar("T")
log = logging.getLogger("agents_workbench.deployer")
# A Pending agent's note while its framework's template is still importing (the panel shows it).
STARTING_RUNTIME = "Starting the model runtime"


class RequestTimeout(TimeoutError):
    """A runtime call that ran past the configured request timeout."""


class AgentUnavailable(RuntimeError):
    """The agent's worker died during the call (answered 503; the agent restarts or fails)."""


class AgentBusy(RuntimeError):
    """The agent holds as many calls as it may (answered 429 with Retry-After)."""


class WorkerRuntime(Runtime):
    """Stands in the server for a runtime that lives in a worker process.

    Only ``kind`` and ``close`` are used here: calls go through :meth:`Deployer.relay`,
    :meth:`Deployer.invoke` and :meth:`Deployer.stream`, which send them to the worker.
    """

    def __init__(self, kind: AgentKind, worker: WorkerProcess) -> None:
        self.kind = kind
        self.worker = worker
        # What serves it ("numpy": the policy sidecar; "full": the framework's own runtime),
        # and why a sidecar it had was not used (GET agents/{name} shows both).
        self.runtime_name = "full"
        self.runtime_note: str | None = None

    def probe(self) -> None:
        """Not callable in the server; the deployer probes through the worker."""
        raise RuntimeError("probe a worker runtime through Deployer.invoke(live, 'probe')")

    def close(self) -> None:
        """Stop the worker process (its memory goes back to the machine)."""
        self.worker.close()


class CheckpointTraffic:
    """Calls answered by one checkpoint: count, errors, recent latencies (the traffic view
    shows them per checkpoint while a split runs)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=2000)

    def add(self, seconds: float, ok: bool) -> None:
        """Count one call."""
        self.requests += 1
        if not ok:
            self.errors += 1
        self.latencies.append(seconds)

    def to_json(self) -> dict[str, Any]:
        """Counts and p50/p95/p99 latency in ms over the recent calls."""
        ordered = sorted(self.latencies)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {"requests": self.requests, "errors": self.errors, "p50_ms": pct(0.5),
                "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


@dataclass
class LiveDeployment:
    """A loaded runtime serving one agent's endpoint."""

    name: str
    deployment_id: str
    api_key: str = field(repr=False)
    runtime: Runtime
    # Longest base64 obs that get_action may serve on the event loop (inline.py); 0: never.
    inline_obs_chars: int = 0
    instance_id: str = field(default_factory=lambda: "inst_" + secrets.token_hex(6))
    loaded_at: float = field(default_factory=time.time)
    health_failures: int = 0
    # Failed by its health check but kept, since its backend recovers by itself (Ray).
    failed: bool = False
    # The checkpoint it serves (status route, traffic view) and the calls it is running:
    # a checkpoint change closes the runtime it replaced only once those reach 0.
    experiment: str = ""
    checkpoint_step: int | None = None
    in_flight: int = 0
    # Set when a checkpoint change replaced it: calls that looked it up before the switch
    # are handed to the agent's current deployment instead.
    retired: bool = False
    # A split: this second checkpoint answers canary_percent % of the calls (sticky per LLM
    # session) until Promote or Abort; canary_change is its registry row.
    canary: LiveDeployment | None = None
    canary_percent: int = 0
    canary_change: int | None = None
    traffic: CheckpointTraffic = field(default_factory=CheckpointTraffic)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, (RuntimeLoadError, StoreError)):
        return text
    return f"{exc.__class__.__name__}: {text}"


class Deployer:
    """Owns the live runtimes and moves agents through the deployment lifecycle."""

    def __init__(
        self,
        registry: Registry,
        store: ExperimentStore,
        *,
        device: str = "cpu",
        worker_threads: int = 4,
        health_check_interval: float = 30.0,
        health_check_failures: int = 2,
        request_timeout: float = 60.0,
        loader: Callable[..., Runtime] = load_runtime,
        batching: str = "auto",
        backend: str = "local",
        backends: dict[str, Callable[..., Runtime]] | None = None,
        inline_below_ms: float = 0.0,
        isolation: str = "thread",
        load_timeout: float = 120.0,
        worker_memory_mb: float = 4096.0,
        max_concurrent_calls: int = 64,
        limits: serving.Limits | None = None,
        torch_threads: int = 0,
        worker_nice: int = 0,
        warm: bool = True,
        restart_limit: int = 3,
        restart_window: float = 120.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.device = device
        self.request_timeout = request_timeout
        self.health_check_interval = health_check_interval
        self.health_check_failures = max(1, health_check_failures)
        self._loader = loader
        # Serving backend of agents whose options name none; other backends' loaders
        # (ray_backend.RayBackend.load) take the agent's name as well.
        self.backend = backend
        self._backends = dict(backends or {})
        if batching not in BATCHING_MODES:
            raise ValueError(f"batching must be one of {BATCHING_MODES}, not {batching!r}")
        self.batching = batching  # how loaded runtimes are wrapped: see batching.py
        self.inline_below_ms = inline_below_ms  # opt-in: see inline.py
        self._workers = ThreadPoolExecutor(worker_threads, thread_name_prefix="agents-infer")
        self._loaders = ThreadPoolExecutor(2, thread_name_prefix="agents-load")
        self._live: dict[str, LiveDeployment] = {}
        # Bumped on every connect/disconnect so a load that finishes late is discarded.
        self._generation: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Experiments whose loader module has been imported (or is being) by warm().
        self._warmed: set[str] = set()
        self._health: PeriodicCallback | None = None
        # Worker processes (isolation="process"): see server_extension/serving/worker/.
        if isolation not in ("process", "thread"):
            raise ValueError(f"isolation must be 'process' or 'thread', not {isolation!r}")
        # A loader handed in by the caller runs in this process: it cannot cross a fork.
        self.isolation = isolation if loader is load_runtime else "thread"
        self.load_timeout = load_timeout
        self.worker_memory_mb = worker_memory_mb
        self.max_concurrent_calls = max_concurrent_calls
        self.limits = limits or serving.Limits()
        self.torch_threads = torch_threads
        self.worker_nice = worker_nice
        self.warm_ahead = warm  # start templates ahead of any Connect (else each at its first one)
        self.worker_threads = worker_threads
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self._worker_set: set[WorkerProcess] = set()
        self._deaths: dict[str, deque[float]] = {}
        self._restarts: dict[str, int] = {}
        self._log_dir: Path | None = None
        self._sweeper: PeriodicCallback | None = None
        # False on a server that shares its workspace with the one that loads (workspace.py):
        # Connect then only marks the agent Pending in the registry.
        self.serves = True
        self._loading: dict[str, int] = {}  # name -> generation of the load in flight
        self._changing: dict[str, int] = {}  # name -> id of the checkpoint change loading
        self._splits: dict[str, LiveDeployment] = {}  # name -> the deployment with a canary
        self._probing: set[int] = set()  # health probes in flight

    # -- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        """Bring back agents that were connected when the server last stopped (or crashed)."""
        if self.serves:
            self._end_unfinished_changes()
        records = self.registry.list()
        for record in records:
            if record.connected and record.status == "Failed":
                # Its last load or worker failed: loading it again at every start would be
                # a crash loop. It keeps its reason and waits for Retry (Connect).
                continue
            if record.connected:
                if self.serves:
                    self._begin_connect(record.name)
            else:
                self.warm(record)
                if self.serves and record.deployment_id and record.status != "Undeployed":
                    # A crash between writes can leave a disconnected agent marked live.
                    self.registry.update(record.name, status="Undeployed", error=None)
        if self.health_check_interval > 0:
            self._health = PeriodicCallback(
                self._spawn_health_check, self.health_check_interval * 1000
            )
            self._health.start()
        if self.isolation == "process":
            self._sweeper = PeriodicCallback(self._sweep, 200)
            self._sweeper.start()
            if self.serves:  # a follower loads nothing: its templates would only use memory
                self.warm_templates()

    def warm_templates(self) -> None:
        """Start the worker templates this workspace's experiments need, in the background
        (``worker/families.py``); nothing without experiments, with thread isolation or with
        ``warm`` off (each template then starts at its family's first Connect). Safe to call
        more than once."""
        if self.isolation == "process" and self.warm_ahead:
            self._loaders.submit(self._warm_template)

    def _warm_template(self) -> None:
        # Only a workspace that has experiments pays for the template (seconds of imports,
        # a few hundred MiB): that is where a Connect can come.
        try:
            frameworks = sorted({e.info.framework for e in self.store.list()})
        except Exception as exc:  # noqa: BLE001 - a broken store is reported by its listing
            log.debug("Not warming workers: %s", exc)
            return
        if frameworks and self._has_sidecars():
            frameworks.append(families.NUMPY)  # ready in well under a second: first
        if frameworks:
            warm_templates(frameworks)  # one template per family, Classic first

    def _sweep(self) -> None:
        self._drop_orphan_canaries()
        now = time.monotonic()
        for worker in list(self._worker_set):
            if worker.reason is not None:
                self._worker_set.discard(worker)  # closed or died: nothing left to watch
            else:
                worker.sweep(now)

    async def stop(self) -> None:
        """Stop health checks, drop runtimes and shut the pools down. Registry rows stay."""
        if self._health is not None:
            self._health.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.stop()
        for live in list(self._live.values()):
            self._close_live(live)
        self._live.clear()
        for worker in list(self._worker_set):
            worker.close()
        self._worker_set.clear()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._loaders.shutdown(wait=False, cancel_futures=True)
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    # -- lifecycle ----------------------------------------------------------------------

    def live(self, name: str) -> LiveDeployment | None:
        """The live deployment of ``name`` (loaded and answering), or ``None``."""
        return self._live.get(name)

    def connect(self, name: str) -> AgentRecord:
        """Mark the agent Pending and start loading it; returns without waiting for the load."""
        self.registry.get(name)
        self._deaths.pop(name, None)  # a user's Connect (or Retry) starts the count afresh
        return self._begin_connect(name)

    def _begin_connect(self, name: str) -> AgentRecord:
        self.registry.ensure_deployment(name)
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        old = self._live.pop(name, None)
        if old is not None:
            self._close_live(old)
        record = self.registry.update(name, status="Pending", connected=True, error=None)
        if self.serves:
            self._loading[name] = generation
            self._spawn(self._load(name, generation))
        return record

    async def _load(self, name: str, generation: int) -> None:
        try:
            await self._load_once(name, generation)
        finally:
            if self._loading.get(name) == generation:
                del self._loading[name]

    async def _load_once(self, name: str, generation: int) -> None:
        started = time.perf_counter()
        try:
            record = self.registry.get(name)
            inline_chars = 0
            if self._in_worker(record):
                runtime: Runtime = await self._load_in_worker(record)
            else:
                runtime = await asyncio.wrap_future(
                    self._loaders.submit(self._load_and_probe, record)
                )
            if self.inline_below_ms > 0 and not isinstance(runtime, WorkerRuntime):
                inline_chars = await asyncio.wrap_future(
                    self._loaders.submit(inline_limit, runtime, self.inline_below_ms))
        except Exception as exc:  # noqa: BLE001 - any load failure becomes the agent's reason
            if self._generation.get(name) == generation:
                log.warning("Agent %s failed to load: %s", name, _describe(exc))
                self._set_if_exists(name, status="Failed", error=_describe(exc))
            return
        if self._generation.get(name) != generation:
            # Disconnected, deleted or reconnected while loading: this runtime is stale.
            self._close_runtime(runtime)
            return
        try:
            record = self.registry.update(name, status="Deployed", error=None,
                                          deployed_at=time.time())
        except Exception:
            self._close_runtime(runtime)
            raise
        assert record.deployment_id is not None
        assert record.api_key is not None
        self._live[name] = LiveDeployment(
            name=name, deployment_id=record.deployment_id, api_key=record.api_key,
            runtime=runtime, inline_obs_chars=inline_chars,
            experiment=record.experiment, checkpoint_step=record.checkpoint_step,
        )
        log.info("Agent %s deployed in %.3f s", name, time.perf_counter() - started)

    def _in_worker(self, record: AgentRecord) -> bool:
        return (self.isolation == "process"
                and record.options.get("backend", self.backend) == "local")

    def _has_sidecars(self) -> bool:
        """Whether any AgileRL experiment holds a policy sidecar (a checkpoint's numpy form)."""
        try:
            experiments = [e for e in self.store.list()
                           if e.info.framework in ("agilerl", "sb3")]
        except Exception:  # noqa: BLE001 - a broken store is reported by its listing
            return False
        for experiment in experiments:
            try:  # the store's listing is bounded (a checkpoints folder linked to /usr...)
                if any(numpy_policy.ready(c.path) for c in experiment.checkpoints()):
                    return True
            except Exception as exc:  # noqa: BLE001 - a broken experiment has none to serve
                log.debug("No sidecars in %s: %s", experiment.name, exc)
        return False

    async def _load_in_worker(self, record: AgentRecord) -> WorkerRuntime:
        """Start a worker for ``record``, load and probe its checkpoint there.

        A checkpoint with a policy sidecar is served by a numpy worker (no torch to import);
        when that worker refuses the sidecar (it does not answer the probe set as the library
        did, or belongs to other bytes), a worker of the full runtime serves it instead."""
        experiment = await asyncio.wrap_future(
            self._loaders.submit(self.store.get, record.experiment))
        checkpoint = experiment.checkpoint(record.checkpoint_step)  # StoreError: what's missing
        info = experiment.info
        candidate = info.framework in ("agilerl", "sb3") and not info.recurrent \
            and checkpoint.path.is_file()
        note = None
        if candidate and numpy_policy.ready(checkpoint.path):
            try:
                runtime = await self._worker_load(record, experiment, families.NUMPY, {})
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, torch serves it
                note = f"Its numpy form was not used: {str(exc).strip()}"
                log.warning("Agent %s is served by the full runtime. %s", record.name, note)
            else:
                runtime.runtime_name = "numpy"
                return runtime
        # No sidecar yet (an older workspace, an import): written after this load, so the next
        # fresh server serves it without torch.
        export = candidate and note is None and not numpy_policy.ready(checkpoint.path)
        runtime = await self._worker_load(record, experiment, None,
                                          {"export_sidecar": export})
        runtime.runtime_note = note
        return runtime

    def runtime_info(self, name: str) -> dict[str, Any]:
        """Which runtime serves ``name`` here (``numpy``, ``full``; ``None`` when not loaded
        in a worker of this server) and why a sidecar it has was not used."""
        live = self._live.get(name)
        runtime = live.runtime if live is not None else None
        return {"runtime": getattr(runtime, "runtime_name", None),
                "runtime_note": getattr(runtime, "runtime_note", None)}

    async def _worker_load(self, record: AgentRecord, experiment: Any, family: str | None,
                           extra: dict[str, Any]) -> WorkerRuntime:
        """A worker of ``family`` (``None``: the framework's own) with the checkpoint loaded."""
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="agents-workbench-workers-"))
        settings = {
            "root": str(self.store.root), "experiment": record.experiment,
            "framework": experiment.info.framework, "step": record.checkpoint_step,
            "device": self.device, "options": dict(record.options), "batching": self.batching,
            "threads": self.worker_threads, "torch_threads": self.torch_threads,
            "nice": self.worker_nice,
            "memory_mb": self.worker_memory_mb, "max_rows": self.limits.max_rows,
            "max_array_bytes": self.limits.max_array_bytes, "family": family, **extra,
        }
        worker = WorkerProcess(record.name, settings, self._log_dir,
                               on_exit=self._worker_exited,
                               max_calls=self.max_concurrent_calls,
                               memory_mb=self.worker_memory_mb,
                               # the largest array a call may carry, and room to encode it
                               frame_cap=self.limits.max_array_bytes + 16 * 2**20)
        self._worker_set.add(worker)
        try:
            await self._start_worker(worker, family or experiment.info.framework)
            answer, _ = await worker.call(
                {"op": "load"}, timeout=self.load_timeout,
                late=f"the checkpoint did not load within {self.load_timeout:g} s and its "
                "worker was stopped (AgentsWorkbenchApp.load_timeout)")
        except WorkerDied as exc:
            worker.close()
            raise RuntimeLoadError(f"The worker died while loading the checkpoint: {exc}") \
                from exc
        except WorkerCallError as exc:
            worker.close()
            text = str(exc) if exc.kind in ("load", "memory") else f"Loading failed: {exc}"
            raise RuntimeLoadError(text) from exc
        except BaseException:
            worker.close()
            raise
        return WorkerRuntime(AgentKind(**answer["result"]["kind"]), worker)

    async def _start_worker(self, worker: WorkerProcess, framework: str) -> None:
        """Start ``worker``; while its family's template is still importing, the agent says
        so ("Starting the model runtime (n s)") rather than a silent Pending."""
        start = asyncio.ensure_future(worker.start())
        try:
            while not start.done():
                template = template_for(framework)
                if template is not None and not template.ready:
                    since = time.time() - (template.started_at or time.time())
                    with contextlib.suppress(Exception):  # deleted meanwhile: no note
                        if self.registry.get(worker.name).status == "Pending":
                            self.registry.update(worker.name, error=(
                                f"{STARTING_RUNTIME} ({max(0, round(since))} s)"))
                await asyncio.wait({start}, timeout=1.0)
        except BaseException:
            start.cancel()
            raise
        await start

    def _worker_exited(self, worker: WorkerProcess) -> None:
        """A worker died on its own (crash, signal, memory, a call past its deadline)."""
        self._worker_set.discard(worker)
        name = worker.name
        live = self._live.get(name)
        if live is not None and live.canary is not None \
                and getattr(live.canary.runtime, "worker", None) is worker:
            self._drop_canary(live, f"Its worker stopped: {worker.reason or 'it exited'}")
            return
        if live is None or getattr(live.runtime, "worker", None) is not worker:
            return  # it died while loading: _load_in_worker reports it
        self._live.pop(name, None)
        self._drop_canary(live, "The worker of the checkpoint it split with restarted.")
        reason = worker.reason or "the worker stopped"
        log.warning("Agent %s: %s", name, reason)
        now = time.monotonic()
        deaths = self._deaths.setdefault(name, deque())
        deaths.append(now)
        while deaths and now - deaths[0] > self.restart_window:
            deaths.popleft()
        if len(deaths) > self.restart_limit:
            self._set_if_exists(name, status="Failed", error=(
                f"Its worker died {len(deaths)} times within {self.restart_window:g} s, so it "
                f"is not restarted again; the last time: {reason}. Fix the cause, then Retry."))
            return
        self._restarts[name] = self._restarts.get(name, 0) + 1
        generation = self._generation.get(name, 0) + 1
        self._generation[name] = generation
        self._set_if_exists(name, status="Pending", error=f"Restarting its worker: {reason}")
        self._loading[name] = generation
        self._spawn(self._load(name, generation))

    def worker_info(self, name: str) -> dict[str, Any] | None:
        """The agent's worker process as the traffic view shows it, or ``None`` (not live, or
        served in this process)."""
        live = self._live.get(name)
        worker = getattr(live.runtime, "worker", None) if live is not None else None
        if worker is None or worker.pid is None:
            return None
        rss = rss_bytes(worker.pid)
        return {
            "pid": worker.pid, "rss_mb": round(rss / 2**20, 1),
            "peak_rss_mb": round(max(rss, worker.peak_rss) / 2**20, 1),
            "memory_limit_mb": self.worker_memory_mb, "restarts": self._restarts.get(name, 0),
            "started_at": worker.started_at, "calls_in_flight": worker.in_flight,
            **worker.cpu_use(),
        }

    def _load_and_probe(self, record: AgentRecord) -> Runtime:
        experiment = self.store.get(record.experiment)
        checkpoint = experiment.checkpoint(record.checkpoint_step)
        backend = record.options.get("backend", self.backend)
        if backend == "local":
            runtime = self._loader(experiment, checkpoint, device=self.device,
                                   options=record.options)
        elif backend in self._backends:
            runtime = self._backends[backend](experiment, checkpoint, device=self.device,
                                              options=record.options, name=record.name)
        else:
            raise RuntimeLoadError(
                f"This server has no {backend!r} backend configured; set "
                f"AgentsWorkbenchApp.backend or create the agent with another backend.")
        try:
            runtime.probe()
        except Exception as exc:
            self._close_runtime(runtime)
            raise RuntimeLoadError(
                f"The checkpoint loaded but failed its first health probe: {_describe(exc)}"
            ) from exc
        if backend != "local":
            # A remote agent scales by replicas; one batcher here would funnel them into one.
            return runtime
        # Concurrent get_action calls share one forward where that pays (batching.py).
        return batching.wrap(runtime, self.batching)

    def warm(self, record: AgentRecord) -> None:
        """Import the agent's framework (torch, AgileRL, ...) on the loader pool, ahead of Connect.

        An agent is usually connected seconds after it is created; importing then, not at
        Connect, is what keeps a server's first Connect near the warm figure. A server with no
        agents imports nothing. Failures are left for Connect to report with the agent.
        """
        if record.options.get("backend", self.backend) != "local":
            return
        if self.isolation == "process":
            self._loaders.submit(self._warm_template)
            return
        warmed = self._warmed
        if record.experiment in warmed:
            return
        warmed.add(record.experiment)

        def import_loader() -> None:
            try:
                warm_loader(self.store.get(record.experiment))
            except Exception as exc:  # noqa: BLE001 - Connect reports it with the agent
                log.debug("Warming %s failed: %s", record.experiment, exc)

        self._loaders.submit(import_loader)

    def disconnect(self, name: str) -> AgentRecord:
        """Turn the endpoint off at once; the agent (and its key) stays."""
        record = self.registry.get(name)
        if record.deployment_id is not None:
            # The registry first: when it cannot be written (a full disk) the agent keeps
            # serving and the caller gets the error, never a stopped agent shown Deployed.
            record = self.registry.update(name, status="Undeployed", connected=False,
                                          error=None)
        self._generation[name] = self._generation.get(name, 0) + 1
        live = self._live.pop(name, None)
        if live is not None:
            self._close_live(live)
        return record

    def unload(self, name: str) -> None:
        """Drop this server's runtime of ``name`` without touching the registry (another
        server disconnected, deleted or re-created the agent)."""
        self._generation[name] = self._generation.get(name, 0) + 1
        self._loading.pop(name, None)
        live = self._live.pop(name, None)
        if live is not None:
            log.info("Agent %s changed in the registry elsewhere; unloaded here", name)
            self._close_live(live)

    def step_down(self) -> None:
        """Another server took the serving lease (lease.py): stop every worker and load in
        flight here, without a registry write (the registry is the new leader's now)."""
        self.serves = False
        for task in list(self._tasks):
            task.cancel()  # loads, checkpoint changes, probes: a cancelled load closes its worker
        for name in set(self._live) | set(self._loading) | set(self._changing):
            self._generation[name] = self._generation.get(name, 0) + 1
        self._loading.clear()
        self._changing.clear()
        for live in list(self._live.values()):
            if live.canary is not None:
                self._close_runtime(live.canary.runtime)
                live.canary = None
            self._close_runtime(live.runtime)
        self._live.clear()
        self._splits.clear()
        for worker in list(self._worker_set):
            worker.close()
        self._worker_set.clear()

    def sync(self, *, reload_deployed: bool = False) -> None:
        """Bring the live runtimes in line with the registry after another server wrote it.

        Unloads agents no longer connected (or deleted, or re-created with a new deployment);
        when this server loads the workspace's agents, starts loading those connected
        elsewhere (Pending with no error: a fresh Connect) and, with ``reload_deployed`` (it
        just took over from a server that stopped), those still marked Deployed.
        """
        records = {r.name: r for r in self.registry.list()}
        for name, live in list(self._live.items()):
            record = records.get(name)
            if (record is None or not record.connected
                    or record.deployment_id != live.deployment_id):
                self.unload(name)
        for name in list(self._loading):
            record = records.get(name)
            if record is None or not record.connected:
                self.unload(name)
        if not self.serves:
            return
        self._sync_changes(reload_deployed)
        for record in records.values():
            if not record.connected or record.name in self._loading:
                continue
            fresh_connect = record.status == "Pending" and record.error is None
            orphaned = (reload_deployed and record.name not in self._live
                        and record.status in ("Pending", "Deployed"))
            if fresh_connect or orphaned:
                self._begin_connect(record.name)

    def _sync_changes(self, took_over: bool) -> None:
        """Checkpoint changes and splits asked for, promoted or aborted through another
        server (or left open by the server this one took over from)."""
        if took_over:
            self._end_unfinished_changes()
        self._drop_orphan_canaries()
        for name in list(self._live):
            self.settle_split(name)  # promoted or aborted through another server
        for change in open_changes(self.registry):
            if change.agent in self._live:
                self.change_checkpoint(change)  # asked for through another server
            elif change.agent not in self._loading:
                mark_change(self.registry, change.id, "failed",
                            "The agent was not serving when the change reached the server "
                            "that loads it; Connect it, then change its checkpoint.")

    def delete(self, name: str) -> None:
        """Disconnect and remove the agent."""
        self.disconnect(name)
        self._generation.pop(name, None)
        self.registry.delete_agent(name)

    def rotate_key(self, name: str) -> AgentRecord:
        """New key for the agent; the old one is refused from the moment this returns."""
        self.registry.ensure_deployment(name)
        key = self.registry.rotate_key(name)
        live = self._live.get(name)
        if live is not None:
            live.api_key = key
        return self.registry.get(name)

    # -- checkpoint changes -------------------------------------------------------------

    def current(self, live: LiveDeployment) -> LiveDeployment:
        """``live``, or the deployment that replaced it when a checkpoint change switched the
        agent after the caller looked it up (same deployment, so the same key still holds)."""
        if not live.retired:
            return live
        now = self._live.get(live.name)
        if now is not None and now.deployment_id == live.deployment_id:
            return now
        return live

    def target(self, live: LiveDeployment, sticky: str | None = None) -> LiveDeployment:
        """The deployment that answers this call: the agent's current one, or its canary for
        ``canary_percent`` % of the calls while a split runs. With ``sticky`` (an LLM session
        id) the choice is a hash of it, so one conversation stays on one checkpoint."""
        live = self.current(live)
        canary = live.canary
        if canary is None:
            return live
        if sticky is not None:
            digest = hashlib.blake2b(sticky.encode(), digest_size=4).digest()
            roll = int.from_bytes(digest, "big") % 100
        else:
            roll = random.randrange(100)  # noqa: S311 - traffic split, not security
        return canary if roll < live.canary_percent else live

    def checkpoint_traffic(self, name: str) -> list[dict[str, Any]]:
        """Requests, errors and latency of each checkpoint serving ``name`` (two during a
        split), for the traffic view."""
        live = self._live.get(name)
        if live is None:
            return []
        rows = [{"role": "primary", "experiment": live.experiment,
                 "step": live.checkpoint_step,
                 "percent": 100 - live.canary_percent if live.canary else 100,
                 **live.traffic.to_json()}]
        if live.canary is not None:
            canary = live.canary
            rows.append({"role": "canary", "experiment": canary.experiment,
                         "step": canary.checkpoint_step, "percent": live.canary_percent,
                         **canary.traffic.to_json()})
        return rows

    def changing(self, name: str) -> int | None:
        """The id of the checkpoint change of ``name`` loading on this server, if any."""
        return self._changing.get(name)

    def change_checkpoint(self, change: CheckpointChange) -> None:
        """Start moving the live agent to ``change``'s checkpoint; returns at once.

        The checkpoint loads and is probed in a runtime of its own (a new worker process)
        while the current one keeps serving. When it answers, the agent switches to it in one
        step on the event loop; calls already running finish on the old runtime, which is then
        closed. If it fails, the old one keeps serving and the change is marked ``failed``
        with the reason; the agent's status is not touched. On a server that does not load the
        workspace's agents this does nothing: the serving server picks the change up from the
        registry (:meth:`sync`).
        """
        if not self.serves or change.agent in self._changing:
            return
        self._changing[change.agent] = change.id
        mark_change(self.registry, change.id, "loading")
        self._spawn(self._change(change))

    async def _change(self, change: CheckpointChange) -> None:
        name = change.agent
        try:
            await self._change_once(change)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the old one serving
            log.warning("Agent %s: checkpoint %s did not take over: %s", name,
                        change.checkpoint_step, _describe(exc))
            try:
                mark_change(self.registry, change.id, "failed", _describe(exc))
            except Exception:  # noqa: BLE001 - the agent was deleted meanwhile
                log.debug("Agent %s vanished during its checkpoint change", name)
        finally:
            if self._changing.get(name) == change.id:
                del self._changing[name]

    async def _change_once(self, change: CheckpointChange) -> None:
        name = change.agent
        old = self._live.get(name)
        if old is None:
            raise RuntimeLoadError(
                "The agent is not serving here (not Deployed); Connect it, then change its "
                "checkpoint.")
        generation = self._generation.get(name, 0)
        started = time.perf_counter()
        record = dataclasses.replace(
            self.registry.get(name), experiment=change.experiment,
            checkpoint_rule=change.checkpoint_rule, checkpoint_step=change.checkpoint_step)
        if self._in_worker(record):
            runtime: Runtime = await self._load_in_worker(record)
        else:
            runtime = await asyncio.wrap_future(
                self._loaders.submit(self._load_and_probe, record))
        inline_chars = 0
        try:
            if self.inline_below_ms > 0 and not isinstance(runtime, WorkerRuntime):
                inline_chars = await asyncio.wrap_future(
                    self._loaders.submit(inline_limit, runtime, self.inline_below_ms))
            old = self._live.get(name)
            if self._generation.get(name, 0) != generation or old is None:
                raise RuntimeLoadError(
                    "The agent was disconnected, restarted or deleted while the new "
                    "checkpoint loaded; nothing was switched.")
            if change.kind == "split":
                mark_change(self.registry, change.id, "canary")
            else:
                commit_change(self.registry, change)
        except BaseException:
            self._close_runtime(runtime)
            raise
        new = LiveDeployment(
            name=name, deployment_id=old.deployment_id, api_key=old.api_key, runtime=runtime,
            inline_obs_chars=inline_chars, experiment=change.experiment,
            checkpoint_step=change.checkpoint_step)
        if change.kind == "split":
            old.canary, old.canary_change = new, change.id
            old.canary_percent = int(change.percent or 0)
            self._splits[name] = old
            log.info("Agent %s: %s step %s answers %s%% of the calls (canary)", name,
                     change.experiment, change.checkpoint_step, old.canary_percent)
            return
        # The switch: from here every lookup of the agent gets the new runtime.
        self._live[name] = new
        old.retired = True
        log.info("Agent %s now serves %s step %s (loaded beside the old in %.3f s)", name,
                 change.experiment, change.checkpoint_step, time.perf_counter() - started)
        self._spawn(self._retire(old))

    def _end_unfinished_changes(self) -> None:
        # This server just began loading the workspace's agents: no change is loading here and
        # no canary is loaded, whatever the registry says of the server before.
        closed = end_unfinished_changes(
            self.registry, "The server that was loading this checkpoint stopped; the agent "
            "serves the checkpoint it served before. Try the change again.")
        if closed:
            log.info("Closed %d checkpoint change(s) left open by a stopped server", closed)

    def settle_split(self, name: str) -> None:
        """Bring the agent's split in line with its registry row: Promote (the row now
        ``serving``) makes the canary the agent's only checkpoint, Abort (``aborted``) drops it.
        Both need no load, so they take effect at once; the checkpoint that stops serving is
        closed after the calls it is running."""
        live = self._live.get(name)
        if live is None or live.canary is None or live.canary_change is None:
            return
        try:
            outcome = get_change(self.registry, live.canary_change).outcome
        except NotFound:
            outcome = "aborted"  # the agent was deleted; unload() closes the rest
        if outcome == "canary":
            return
        canary = live.canary
        live.canary, live.canary_change, live.canary_percent = None, None, 0
        self._splits.pop(name, None)
        if outcome == "serving":
            self._live[name] = canary
            live.retired = True
            log.info("Agent %s: canary %s step %s promoted", name, canary.experiment,
                     canary.checkpoint_step)
            self._spawn(self._retire(live))
        else:
            canary.retired = True
            log.info("Agent %s: canary %s step %s dropped", name, canary.experiment,
                     canary.checkpoint_step)
            self._spawn(self._retire(canary))

    async def _retire(self, old: LiveDeployment) -> None:
        """Close ``old`` once the calls it was running have finished (or timed out)."""
        deadline = time.monotonic() + self.request_timeout + 5.0
        # One turn of the loop at least: a handler that looked the agent up in the same turn
        # as the switch reaches relay() (and so counts in in_flight, or is redirected) next.
        await asyncio.sleep(0.05)
        while old.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._close_runtime(old.runtime)

    # -- serving ------------------------------------------------------------------------

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Start ``fn`` on a worker thread with no timeout (a stream runs as long as it must)."""
        return self._workers.submit(fn, *args, **kwargs)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on a worker thread; :class:`RequestTimeout` past the request timeout.

        A timed-out call cannot be interrupted (Python threads cannot be killed); it finishes
        in the background while the caller gets its error.
        """
        future = self._workers.submit(fn, *args, **kwargs)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.request_timeout)
        except TimeoutError as exc:
            raise RequestTimeout(
                f"The model did not answer within {self.request_timeout:g} s."
            ) from exc

    async def relay(self, live: LiveDeployment, route: str, body: bytes) -> tuple[int, bytes, int]:
        """Answer ``route`` (get_action, predict) for a raw request body: (status, JSON, rows).

        The body is decoded, checked against the limits, answered and encoded where the model
        is: in its worker, or on a worker thread here.
        """
        live = self.target(live)
        runtime = live.runtime
        live.in_flight += 1
        started, status = time.perf_counter(), 500
        try:
            if isinstance(runtime, WorkerRuntime):
                answer, payload = await self._worker_call(
                    runtime, {"op": "relay", "route": route}, body)
                status = int(answer["status"])
                return status, payload, int(answer.get("rows") or 0)
            status, payload, rows = await self.call(
                serving.relay, runtime, route, body, self.limits)
            return status, payload, rows
        finally:
            live.in_flight -= 1
            live.traffic.add(time.perf_counter() - started, status < 500)

    async def invoke(self, live: LiveDeployment, method: str, *args: Any,
                     sticky: str | None = None) -> Any:
        """Call the runtime method or serving operation ``method`` with JSON-able ``args``.

        ``method`` is a public method of the runtime or a name in ``worker.serving.OPS``.
        Where the runtime lives in a worker process the call is relayed there, so arguments
        and results are plain JSON values. :class:`RequestError` raised by the runtime comes
        back as itself (a 400), :class:`RequestTimeout` past the request timeout,
        :class:`AgentUnavailable` when the worker died, :class:`AgentBusy` when it is full.
        """
        live = self.target(live, sticky)
        runtime = live.runtime
        live.in_flight += 1
        started, ok = time.perf_counter(), False
        try:
            if isinstance(runtime, WorkerRuntime):
                answer, _ = await self._worker_call(
                    runtime, {"op": "invoke", "name": method, "args": list(args)})
                ok = True
                return answer.get("result")
            result = await self.call(serving.resolve(runtime, method), *args)
            ok = True
            return result
        except RequestError:
            ok = True  # the caller's mistake, not the checkpoint's
            raise
        finally:
            live.in_flight -= 1
            if method != "probe":
                live.traffic.add(time.perf_counter() - started, ok)

    async def _worker_call(self, runtime: WorkerRuntime, header: dict[str, Any],
                           body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        try:
            return await runtime.worker.call(header, body, timeout=self.request_timeout)
        except WorkerTimeout as exc:
            raise RequestTimeout(
                f"The model did not answer within {self.request_timeout:g} s; its worker was "
                "stopped and restarts (AgentsWorkbenchApp.request_timeout).") from exc
        except WorkerDied as exc:
            raise AgentUnavailable(
                f"The agent's worker died during the call ({exc}); it restarts, retry in a "
                "moment.") from exc
        except WorkerBusy as exc:
            raise AgentBusy(
                f"The agent is serving {self.max_concurrent_calls} calls already "
                "(AgentsWorkbenchApp.max_concurrent_calls); retry shortly.") from exc
        except WorkerCallError as exc:
            if exc.kind in ("request", "memory"):
                raise RequestError(str(exc)) from exc
            raise

    async def stream(self, live: LiveDeployment, method: str, *args: Any,
                     sticky: str | None = None) -> AsyncGenerator[str, None]:
        """Iterate the text pieces of the streaming ``method`` as they come.

        The method is called as ``method(*args, cancelled)`` with a ``threading.Event`` that
        is set when the consumer stops iterating (``aclose()``, a closed connection), so the
        model stops at its next token. Errors of the runtime are raised to the consumer.
        """
        live = self.target(live, sticky)
        live.in_flight += 1
        started, ok = time.perf_counter(), False
        try:
            async for piece in self._stream(live, method, *args):
                yield piece
            ok = True
        except (RequestError, GeneratorExit):
            ok = True  # the caller's mistake, or the caller went away
            raise
        finally:
            live.in_flight -= 1
            live.traffic.add(time.perf_counter() - started, ok)

    async def _stream(self, live: LiveDeployment, method: str, *args: Any,
                      ) -> AsyncGenerator[str, None]:
        runtime = live.runtime
        if isinstance(runtime, WorkerRuntime):
            pieces = runtime.worker.stream({"name": method, "args": list(args)},
                                           timeout=self.request_timeout)
            try:
                async for piece in pieces:
                    yield piece
            except WorkerTimeout as exc:
                raise RequestTimeout(str(exc)) from exc
            except WorkerDied as exc:
                raise AgentUnavailable(f"The agent's worker died during the stream ({exc}).") \
                    from exc
            except WorkerCallError as exc:
                if exc.kind in ("request", "memory"):
                    raise RequestError(str(exc)) from exc
                raise
            finally:
                await pieces.aclose()
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()
        done = object()
        produce_fn = serving.resolve(runtime, method)

        def produce() -> None:
            try:
                for piece in produce_fn(*args, cancelled):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        self.submit(produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            cancelled.set()

    # -- health -------------------------------------------------------------------------

    def _spawn_health_check(self) -> None:
        self._spawn(self.health_check())

    async def health_check(self) -> None:
        """Probe every live runtime once, all at once (an agent that does not answer holds up
        no other); demote or fail the ones that do not answer."""
        await asyncio.gather(*(self._probe_once(name, live)
                               for name, live in list(self._live.items())))

    async def _probe(self, name: str, live: LiveDeployment) -> None:
        try:
            await self.invoke(live, "probe")
        except Exception as exc:  # noqa: BLE001 - any probe failure counts
            if isinstance(exc, AgentUnavailable) and isinstance(live.runtime, WorkerRuntime):
                return  # its worker died: _worker_exited restarts or fails it
            if self._live.get(name) is not live:
                return
            live.health_failures += 1
            reason = f"Health check failed: {_describe(exc)}"
            log.warning("Agent %s: %s", name, reason)
            if live.health_failures >= self.health_check_failures:
                if getattr(live.runtime, "recovers", False):
                    # Its backend keeps trying to bring replicas back (ray_backend): the
                    # agent stays Failed, its calls answered 503, until a probe succeeds.
                    live.failed = True
                else:
                    self._live.pop(name, None)
                    self._close_runtime(live.runtime)
                self._set_if_exists(name, status="Failed", error=reason)
            else:
                self._set_if_exists(name, status="Pending", error=reason)
            return
        if self._live.get(name) is live and live.health_failures:
            live.health_failures = 0
            live.failed = False
            self._set_if_exists(name, status="Deployed", error=None)

    async def _probe_once(self, name: str, live: LiveDeployment) -> None:
        if id(live) in self._probing:
            return  # the last round's probe of it has not come back yet
        self._probing.add(id(live))
        try:
            await self._probe(name, live)
        finally:
            self._probing.discard(id(live))

    # -- helpers ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_if_exists(self, name: str, **changes: Any) -> None:
        try:
            self.registry.update(name, **changes)
        except Exception:  # noqa: BLE001 - the agent was deleted meanwhile; nothing to record
            log.debug("Agent %s vanished before its status could be set", name)

    def _close_live(self, live: LiveDeployment) -> None:
        """Close a deployment's runtime, and end its split if it runs one."""
        self._drop_canary(live, "The agent was disconnected, reloaded or stopped; the split "
                          "ended.", outcome="aborted")
        self._close_runtime(live.runtime)

    def _drop_canary(self, live: LiveDeployment, reason: str, outcome: str = "failed") -> None:
        """End a split that cannot go on; its row gets ``outcome`` with ``reason``."""
        canary, change_id = live.canary, live.canary_change
        self._splits.pop(live.name, None)
        if canary is None:
            return
        live.canary, live.canary_change, live.canary_percent = None, None, 0
        canary.retired = True
        self._close_runtime(canary.runtime)
        if change_id is not None:
            try:
                mark_change(self.registry, change_id, outcome, reason)
            except Exception:  # noqa: BLE001 - the agent was deleted meanwhile
                log.debug("Agent %s vanished while its split ended", live.name)

    def _drop_orphan_canaries(self) -> None:
        # A primary dropped without _close_live (its health check failed it) leaves its canary
        # running; end those splits here.
        for name, primary in list(self._splits.items()):
            if self._live.get(name) is not primary:
                self._drop_canary(primary, "The checkpoint it split with stopped serving.")

    @staticmethod
    def _close_runtime(runtime: Runtime) -> None:
        try:
            runtime.close()
        except Exception:
            log.exception("Closing a runtime failed")
