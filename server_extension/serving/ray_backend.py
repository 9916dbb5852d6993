"""The ``ray`` serving backend: one Ray Serve application per agent, reached through its handle.

The Jupyter server keeps the endpoint, the key check and the contract (``agents/d/<name>/``);
only the model call crosses into Ray. Each agent becomes a Serve application whose replicas
build the runtime with the workbench's own loaders (:func:`~server_extension.serving.runtimes.
load_runtime`) from the same checkpoint path, so a replica serves exactly what the ``local``
backend would. Replicas keep no per-client state: a recurrent policy's hidden state travels
with each request, so any replica can answer any call.

Example::

    backend = RayBackend(address=None, num_cpus=2)      # a local Ray, started on first use
    runtime = backend.load(experiment, checkpoint, device="cpu",
                           options={"backend": "ray", "replicas": 2}, name="cartpole")
    runtime.probe()                                      # answered by a replica
    actions, _ = runtime.get_action(obs)                 # from a worker thread, not the loop
    runtime.close()                                      # deletes the Serve application
    backend.shutdown()

Threading: every control-plane call (``ray.init``, ``serve.run``, ``serve.delete``,
``ray.shutdown``) runs on one long-lived thread owned by the backend. That thread matters:
Ray's local processes (GCS, raylet) are tied to the *thread* that started them on Linux
(parent-death signal), so starting Ray on a short-lived thread kills the cluster when the
thread ends. One thread also keeps control calls in order: a delete queued by Disconnect runs
before the deploy of a Connect that follows it. :class:`RayRuntime` methods block on a
DeploymentResponse and are called from the deployer's worker threads; they are thread-safe.

Checkpoints must be readable by the replicas at the same path: true for a local Ray; for a
multi-node cluster the workspace must sit on storage every node mounts at the same path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server_extension.serving.deployer import AgentUnavailable, RequestTimeout
from server_extension.serving.runtimes import (
    AgentKind,
    RequestError,
    Runtime,
    RuntimeLoadError,
    load_runtime,
)
from workbench_core.store import Checkpoint, Experiment, ExperimentStore

log = logging.getLogger("agents_workbench.ray")

# Serve application names start with this, so an operator can tell the workbench's apart;
# then comes the workspace tag (workspace_tag), so two workspaces on one cluster keep apart.
APP_PREFIX = "awb-"
# Methods the replica dispatches; anything else is refused (the handle is not a free RPC).
_RUNTIME_CALLS = frozenset(
    {"get_action", "predict", "generate", "format_chat", "count_tokens", "check_prompt",
     "chat_prompt", "complete", "fim_prompt"}
)
# Ray 2.60's raylet gives its Python agents a fixed few seconds to come up and aborts the
# start otherwise ("Timed out waiting for file .../metrics_agent_port"); on a busy small
# machine that happens now and then, and a second try usually succeeds.
LOCAL_START_ATTEMPTS = 3
# Ray runs its workers 15 nice levels below the raylet by default; here the workers are the
# replicas serving requests, and they should not lose the CPU to everything else on the
# machine (the Jupyter server included).
LOCAL_RAY_CONFIG: dict[str, Any] = {"worker_niceness": 0}
# How much sooner than the request timeout a health probe gives up waiting on a replica, so
# that its own error (naming the application) arrives before the deployer's timeout.
PROBE_MARGIN_S = 2.0
# Tries at joining a cluster through Ray Client (see RayBackend._join).
CLIENT_JOIN_ATTEMPTS = 3
INSTALL_HINT = (
    "The 'ray' backend needs Ray Serve in the Jupyter server's environment: "
    "pip install 'agents-workbench[ray]' (ray[serve]), then restart the server."
)


def workspace_tag(root: str | os.PathLike[str]) -> str:
    """Six hex digits naming a workspace on a cluster: from its absolute path, which every node
    sees alike (the workspace sits on shared storage at the same path)."""
    path = os.path.realpath(os.fspath(root))
    return hashlib.sha256(path.encode()).hexdigest()[:6]


def app_prefix(root: str | os.PathLike[str]) -> str:
    """The start of every Serve application name of the workspace at ``root``."""
    return f"{APP_PREFIX}{workspace_tag(root)}-"


def actor_options(options: Mapping[str, Any], replica_cpus: float) -> dict[str, Any]:
    """``ray_actor_options`` of an agent's replicas: the server's CPUs per replica and the
    agent's ``ray_resources`` (placement on nodes started with those resources)."""
    chosen: dict[str, Any] = {"num_cpus": replica_cpus}
    if options.get("ray_resources"):
        chosen["resources"] = dict(options["ray_resources"])
    return chosen


def scale_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Serve deployment keywords for an agent's ``replicas`` / ``min_replicas`` /
    ``max_replicas`` options: a fixed count, or autoscaling between the bounds."""
    low, high = options.get("min_replicas"), options.get("max_replicas")
    if low is None and high is None:
        return {"num_replicas": int(options.get("replicas", 1))}
    low = 1 if low is None else int(low)
    high = max(low, int(options.get("replicas", low)) if high is None else int(high))
    initial = int(options.get("replicas", low))
    return {"autoscaling_config": {
        "min_replicas": low, "max_replicas": high,
        "initial_replicas": min(max(initial, low), high),
        # A replica runs one forward at a time (one CPU); queueing past 2 is worth a replica.
        "target_ongoing_requests": 2,
    }}


class AgentReplica:
    """What runs inside each Serve replica: one runtime built from the checkpoint on disk.

    A load error is kept rather than raised: Serve would retry a failing constructor many
    times (each retry importing torch again), while the deployer wants the reason once.
    """

    def __init__(self, root: str, experiment: str, *, step: int, device: str,
                 options: dict[str, Any], torch_threads: int) -> None:
        self.runtime: Runtime | None = None
        self.error: str | None = None
        try:
            if torch_threads > 0:
                import torch

                torch.set_num_threads(torch_threads)
            exp = ExperimentStore(root).get(experiment)
            self.runtime = load_runtime(exp, exp.checkpoint(step), device=device,
                                        options=options)
        except Exception as exc:  # noqa: BLE001 - reported to the deployer by describe()
            self.error = str(exc).strip() or exc.__class__.__name__
            if not isinstance(exc, RuntimeLoadError):
                self.error = f"{exc.__class__.__name__}: {self.error}"

    def describe(self) -> dict[str, Any]:
        """The runtime's kind, or the load error."""
        if self.runtime is None:
            return {"error": self.error}
        return {"kind": self.runtime.kind.to_json()}

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        """``("ok", value)``, or ``("request", message)`` for the caller's fault (a 400)."""
        if method not in _RUNTIME_CALLS:
            raise ValueError(f"{method!r} is not a runtime call")
        runtime = self._runtime()
        try:
            return "ok", getattr(runtime, method)(*args, **kwargs)
        except RequestError as exc:
            # Sent back as data: an exception would come back wrapped with a remote traceback.
            return "request", str(exc)

    def stream(self, prompt: str, params: dict[str, Any]) -> Iterator[str]:
        """Text pieces of one completion; Serve stops iterating when the caller cancels."""
        yield from self._runtime().stream(prompt, params, threading.Event())

    def stream_completion(self, prompt: str, params: dict[str, Any]) -> Iterator[str]:
        """The OpenAI routes' stream events (see ``LLMRuntime.stream_completion``)."""
        yield from self._runtime().stream_completion(  # type: ignore[attr-defined]
            prompt, params, threading.Event())

    def probe(self) -> int:
        """One sample request through the runtime; the replica's pid (which one answered)."""
        self._runtime().probe()
        return os.getpid()

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeLoadError(f"This replica could not load the checkpoint: {self.error}")
        return self.runtime


def _short(exc: BaseException) -> str:
    # Ray's errors carry the remote traceback; the agent's error text wants the last line.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else exc.__class__.__name__


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """:class:`RuntimeLoadError` when ``host:port`` (or ``ray://host:port``) does not accept
    a TCP connection; other address forms ("auto") are left to ``ray.init``."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeLoadError(
            f"The Ray cluster at {address} is not reachable ({exc}). Start it (ray start "
            "--head) or fix AgentsWorkbenchApp.ray_address; leave it empty for a local Ray."
        ) from exc


def _is_ray_process(process: Any, ray_dir: str) -> bool:
    # Ray's daemons run binaries or scripts from inside the ray package; a kernel the server
    # started meanwhile does not.
    import psutil

    try:
        return any(part.startswith(ray_dir) for part in process.cmdline())
    except psutil.Error:  # gone already, or not ours to inspect
        return False


def start_local_ray(num_cpus: int, *, attempts: int = LOCAL_START_ATTEMPTS,
                    **kwargs: Any) -> str:
    """Start a private local Ray (even if another runs on this machine); its GCS address.

    Call it from a thread that lives as long as Ray should (see the module docstring).
    """
    import psutil  # a dependency of Ray's
    import ray

    me = psutil.Process()
    ray_dir = os.path.dirname(ray.__file__)
    for attempt in range(1, attempts + 1):
        before = {child.pid for child in me.children()}
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False, **{"logging_level": logging.WARNING,
                                             "_system_config": LOCAL_RAY_CONFIG, **kwargs})
        except Exception as exc:
            # A start that failed half-way is not known to ray.shutdown(): stop the processes
            # it left (our own children, started by this attempt) by their ids.
            ray.shutdown()
            leftovers = [c for c in me.children()
                         if c.pid not in before and _is_ray_process(c, ray_dir)]
            for child in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            psutil.wait_procs(leftovers, timeout=10)
            if attempt == attempts:
                raise
            log.warning("Starting a local Ray failed (%s); trying again", _short(exc))
        else:
            break
    address: str = ray.get_runtime_context().gcs_address
    return address


class RayCallError(AgentUnavailable):
    """A call that Ray could not complete (no replica, node lost, cluster unreachable): a 503."""


class RayCallTimeout(RayCallError, RequestTimeout):
    """No replica answered within the request timeout (a 504)."""


def _call_error(app_name: str, exc: BaseException) -> RayCallError:
    cls = RayCallTimeout if isinstance(exc, TimeoutError) else RayCallError
    return cls(f"Ray Serve application {app_name}: {_short(exc)}")


class RayRuntime(Runtime):
    """A :class:`Runtime` whose calls go to a Serve application's replicas.

    ``recovers``: when its health check fails, Serve keeps trying to place replicas (on a node
    that returns, for one), so the deployer keeps probing a Failed Ray agent and turns it
    Deployed again once a replica answers.
    """

    recovers = True

    def __init__(self, backend: RayBackend, app_name: str, handle: Any, kind: AgentKind,
                 timeout: float) -> None:
        self.backend = backend
        self.app_name = app_name
        self.kind = kind
        self._handle = handle
        # Made on the first stream: Ray Client refuses streaming handles, and agents that never
        # stream (policies, classifiers) should serve through it all the same.
        self._streaming: Any = None
        self._timeout = timeout
        self._closed = False
        # Calls waiting on a replica; close() cancels them, since calls to an application being
        # deleted would otherwise hold their worker threads until the timeout.
        self._pending: set[Any] = set()
        self._lock = threading.Lock()

    def _result(self, response: Any, timeout: float | None = None) -> Any:
        with self._lock:
            if self._closed:
                response.cancel()
                raise RayCallError(f"Ray Serve application {self.app_name} was disconnected.")
            self._pending.add(response)
        try:
            return response.result(timeout_s=self._timeout if timeout is None else timeout)
        except Exception as exc:
            raise _call_error(self.app_name, exc) from exc
        finally:
            with self._lock:
                self._pending.discard(response)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        status, value = self._result(self._handle.call.remote(method, args, kwargs))
        if status == "request":
            raise RequestError(value)
        return value

    def get_action(self, obs: Any, *, hidden_state: Any = None, action_mask: Any = None,
                   env_defined_actions: Any = None) -> tuple[Any, Any]:
        """Batched actions from a replica; the hidden state rides along both ways."""
        action, hidden = self._call("get_action", obs, hidden_state=hidden_state,
                                    action_mask=action_mask,
                                    env_defined_actions=env_defined_actions)
        return action, hidden

    def predict(self, inputs: Any) -> Any:
        """Batched outputs from a replica."""
        return self._call("predict", inputs)

    def generate(self, prompts: list[str], params: dict[str, Any]) -> list[str]:
        """Completions from a replica."""
        completions: list[str] = self._call("generate", prompts, params)
        return completions

    def stream(self, prompt: str, params: dict[str, Any], cancelled: Any) -> Iterator[str]:
        """Pieces as a replica produces them; cancels the replica's work once ``cancelled``."""
        return self._stream("stream", prompt, params, cancelled)

    def _stream(self, method: str, prompt: str, params: dict[str, Any],
                cancelled: Any) -> Iterator[str]:
        if self._streaming is None:
            try:
                self._streaming = self._handle.options(stream=True)
            except RuntimeError as exc:  # Ray Client: "Streaming DeploymentHandles are not..."
                raise RayCallError(f"Ray Serve application {self.app_name} cannot stream: "
                                   f"{_short(exc)} Use the non-streaming routes, or give "
                                   "ray_address as host:port (GCS) instead.") from exc
        response = getattr(self._streaming, method).remote(prompt, params)
        try:
            for piece in response:
                if cancelled.is_set():
                    break
                yield piece
        except Exception as exc:  # surfaced to the client as an in-band stream error
            raise _call_error(self.app_name, exc) from exc
        finally:
            response.cancel()

    def probe(self) -> None:
        """A sample request answered by some replica (the health check)."""
        self.probe_pid()

    def probe_pid(self) -> int:
        """Probe, returning the process id of the replica that answered.

        Serve's own view is asked first: when it has given a deployment up as unhealthy with
        no replica running (its node lost, no node left with the resources it needs), a probe
        would only wait out the timeout, while Serve says why at once.
        """
        self.backend.check_running(self.app_name)
        try:
            # A little under the request timeout, which the deployer's own wait enforces: the
            # probe's failure must be Ray's (which application, what Serve says now), not the
            # deployer's generic "did not answer".
            pid: int = self._result(self._handle.probe.remote(),
                                    timeout=max(1.0, self._timeout - PROBE_MARGIN_S))
        except RayCallTimeout:
            # Serve may have given the deployment up while the probe waited (a lost node).
            self.backend.check_running(self.app_name)
            raise
        return pid

    def close(self) -> None:
        """Cancel calls in flight and delete the Serve application (queued; returns at once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pending, self._pending = list(self._pending), set()
        for response in pending:
            response.cancel()
        self.backend.delete(self.app_name)


class RayLLMRuntime(RayRuntime):
    """An LLM on Ray: the chat-template and token helpers the LLM routes look for, remotely."""

    def format_chat(self, messages: list[dict[str, str]]) -> str:
        """The model input for a conversation, from the replica's tokenizer."""
        text: str = self._call("format_chat", messages)
        return text

    def count_tokens(self, prompt: str) -> int:
        """Tokens in ``prompt`` by the replica's tokenizer."""
        count: int = self._call("count_tokens", prompt)
        return count

    def check_prompt(self, prompt: str) -> int:
        """400 (RequestError) when ``prompt`` does not fit the model's context."""
        count: int = self._call("check_prompt", prompt)
        return count

    def chat_prompt(self, messages: list[dict[str, Any]],
                    tools: list[dict[str, Any]] | None = None) -> str:
        """The OpenAI routes' model input (``LLMRuntime.chat_prompt``) from the replica."""
        text: str = self._call("chat_prompt", messages, tools)
        return text

    def fim_prompt(self, prompt: str, suffix: str) -> str:
        """``LLMRuntime.fim_prompt`` on a replica."""
        text: str = self._call("fim_prompt", prompt, suffix)
        return text

    def complete(self, prompts: list[str], params: dict[str, Any]) -> dict[str, Any]:
        """``LLMRuntime.complete`` on a replica."""
        result: dict[str, Any] = self._call("complete", prompts, params)
        return result

    def stream_completion(self, prompt: str, params: dict[str, Any],
                          cancelled: Any) -> Iterator[str]:
        """``LLMRuntime.stream_completion``'s events as a replica produces them."""
        return self._stream("stream_completion", prompt, params, cancelled)


class RayBackend:
    """Connects to (or starts) a Ray cluster on first use and deploys agents onto Serve."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 replica_cpus: float = 1.0, request_timeout: float = 60.0,
                 start_timeout: float = 180.0, torch_threads: int = 1,
                 max_ongoing_requests: int = 8,
                 workspace: str | os.PathLike[str] | None = None) -> None:
        self.address = address or None
        # Names of this workspace's applications start with it; without a workspace (a
        # backend used on its own) only the common prefix, and no orphans are swept.
        self.app_prefix = app_prefix(workspace) if workspace is not None else APP_PREFIX
        self.workspace = workspace
        self.num_cpus = num_cpus
        self.replica_cpus = replica_cpus
        self.request_timeout = request_timeout
        self.start_timeout = start_timeout
        self.torch_threads = torch_threads
        self.max_ongoing_requests = max_ongoing_requests
        self._control = ThreadPoolExecutor(1, thread_name_prefix="agents-ray")
        self._started_ray = False
        self._joined_ray = False  # True when this backend called ray.init (so it leaves)
        self._connected = False
        self._apps: set[str] = set()
        self._stopping = False

    # -- called from the deployer's loader threads ---------------------------------------

    def load(self, experiment: Experiment, checkpoint: Checkpoint, *, device: str = "cpu",
             options: Mapping[str, Any] | None = None, name: str = "agent") -> Runtime:
        """Deploy ``checkpoint`` as a Serve application; blocks until it answers or fails.

        :class:`RuntimeLoadError` with the reason (Ray missing, cluster unreachable, replicas
        that could not start and Serve's explanation, the checkpoint's own load error).
        """
        future = self._control.submit(self._deploy, experiment, checkpoint, device,
                                      dict(options or {}), name)
        return future.result()

    def delete(self, app_name: str) -> None:
        """Delete an application in the background (Disconnect must not wait for Ray)."""
        try:
            self._control.submit(self._delete, app_name)
        except RuntimeError:
            log.debug("Ray backend already shut down; %s goes with it", app_name)

    def adopt(self) -> None:
        """Join the cluster in the background and take over what a previous server of this
        workspace left on it (see :meth:`_sweep_orphans`); failures are logged only, and
        the first deploy tries again."""
        def join() -> None:
            try:
                self._ensure_ray()
            except Exception as exc:  # noqa: BLE001 - the agents' own Connect reports it
                log.warning("Could not join Ray to take over old applications: %s", exc)
        with contextlib.suppress(RuntimeError):  # shut down already
            self._control.submit(join)

    def check_running(self, app_name: str) -> None:
        """:class:`RayCallError` with Serve's reason unless ``app_name`` has a running replica."""
        from ray import serve

        try:
            app = serve.status().applications.get(app_name)
        except Exception as exc:  # the controller (or the cluster) is unreachable
            raise _call_error(app_name, exc) from exc
        if app is None:
            raise RayCallError(f"Ray Serve application {app_name} is gone from the cluster "
                               "(deleted outside the workbench?); Disconnect and Connect.")
        for deployment in app.deployments.values():
            running = {getattr(s, "value", str(s)): n
                       for s, n in deployment.replica_states.items()}.get("RUNNING", 0)
            status = str(deployment.status).rsplit(".", 1)[-1]
            # Only Serve's own verdict fails fast: a replica being replaced (killed, or its
            # node lost a moment ago) is waited for by the probe, as a request would be.
            if running == 0 and status in ("UNHEALTHY", "DEPLOY_FAILED"):
                reason = deployment.message or app.message or "no replica is running"
                raise RayCallError(f"Ray Serve application {app_name} has no running replica "
                                   f"({status}): {reason}")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Delete this server's applications and leave Ray (stopping it if we started it)."""
        # Deletes still queued are moot on a Ray we started: it stops with everything on it.
        self._stopping = True
        try:
            self._control.submit(self._shutdown).result(timeout)
        except Exception:
            log.exception("Shutting the Ray backend down failed")
        self._control.shutdown(wait=False, cancel_futures=True)

    # -- on the control thread -----------------------------------------------------------

    def _ensure_ray(self) -> None:
        if self._connected:
            return
        try:
            import ray
            from ray import serve
        except ImportError as exc:
            raise RuntimeLoadError(f"{INSTALL_HINT} ({exc})") from exc
        if not ray.is_initialized():
            started = time.perf_counter()
            if self.address is not None:
                # ray.init keeps retrying an address nobody answers on for minutes; a plain
                # TCP connect tells the user at once.
                _check_reachable(self.address)
            try:
                if self.address is None:
                    start_local_ray(self.num_cpus or os.cpu_count() or 1,
                                    namespace="agents-workbench")
                else:
                    self._join(self.address)
            except Exception as exc:  # every failure to reach Ray is the agent's reason
                where = f"at {self.address}" if self.address else "locally"
                raise RuntimeLoadError(
                    f"Could not start or reach the Ray cluster {where}: {_short(exc)}. Check "
                    "AgentsWorkbenchApp.ray_address (host:port of the head's GCS, or "
                    "ray://host:10001), or leave it empty for a local Ray."
                ) from exc
            self._started_ray = self.address is None
            self._joined_ray = True
            log.info("Connected to Ray (%s) in %.1f s", self.address or "local",
                     time.perf_counter() - started)
        # No HTTP proxy: requests reach replicas through handles from this server only.
        serve.start(proxy_location="Disabled")
        self._connected = True
        if self.address is not None:
            self._sweep_orphans()

    @staticmethod
    def _join(address: str) -> None:
        import ray

        # Ray Client's head starts one server process per client; on a busy head that start
        # fails now and then ("Starting Ray client server failed") and a second one succeeds.
        attempts = CLIENT_JOIN_ATTEMPTS if address.startswith("ray://") else 1
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=address, include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=False,
                         namespace="agents-workbench")
                return
            except Exception as exc:
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt == attempts:
                    raise
                log.warning("Joining Ray at %s failed (%s); trying again", address,
                            _short(exc))
                time.sleep(1.0)

    def _sweep_orphans(self) -> None:
        """Delete this workspace's applications that this server did not create.

        They are what a server of this workspace left when it was killed (``kill -9``): the
        agents they served are connected again from the registry under fresh names, and an
        agent deleted meanwhile has no use for one. Only this workspace's prefix is touched.
        """
        from ray import serve

        if self.app_prefix == APP_PREFIX:
            return
        try:
            names = list(serve.status().applications)
        except Exception:
            log.warning("Could not list Ray Serve applications", exc_info=True)
            return
        for name in names:
            if name.startswith(self.app_prefix) and name not in self._apps:
                log.info("Deleting Ray Serve application %s, left by an earlier server of this "
                         "workspace", name)
                try:
                    serve.delete(name)
                except Exception:
                    log.warning("Could not delete Ray Serve application %s", name,
                                exc_info=True)

    def _deploy(self, experiment: Experiment, checkpoint: Checkpoint, device: str,
                options: dict[str, Any], name: str) -> Runtime:
        self._ensure_ray()
        from ray import serve
        from ray.serve.api import RunTarget

        # A fresh name per load: a late delete of a stale load never hits the current one.
        app_name = f"{self.app_prefix}{name}-{secrets.token_hex(3)}"
        deployment: Any = serve.deployment(
            AgentReplica, name="agent",
            ray_actor_options=actor_options(options, self.replica_cpus),
            max_ongoing_requests=self.max_ongoing_requests,
            max_constructor_retry_count=1,
            health_check_period_s=2, health_check_timeout_s=30,
            **scale_config(options),
        )
        # The replica finds the experiment under the same workspace root (experiments/<name>).
        root = str(experiment.folder.parent.parent)
        app = deployment.bind(root, experiment.name, step=checkpoint.step, device=device,
                              options=options, torch_threads=self.torch_threads)
        self._apps.add(app_name)
        try:
            serve.run_many([RunTarget(target=app, name=app_name, route_prefix=None)],
                           wait_for_applications_running=False)
            self._wait_running(app_name)
            handle = serve.get_app_handle(app_name)
            described = self._first_answer(handle)
        except Exception:
            self._delete(app_name)
            raise
        if "error" in described:
            self._delete(app_name)
            raise RuntimeLoadError(described["error"])
        kind = AgentKind(**described["kind"])
        cls = RayLLMRuntime if kind.llm else RayRuntime
        log.info("Agent %s serves from Ray application %s", name, app_name)
        return cls(self, app_name, handle, kind, self.request_timeout)

    def _first_answer(self, handle: Any) -> dict[str, Any]:
        """The replica's ``describe``, waiting up to ``start_timeout`` for a first answer.

        A new handle learns of the replicas from the controller after the application reads
        RUNNING; on a loaded machine, or with the replicas on another node, that can outlast
        one request timeout (seen here when the multi-node tests ran right after another
        module's cluster went down: the agent Failed with "Timed out resolving to ObjectRef").
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            wait = max(1.0, min(self.request_timeout, deadline - time.monotonic()))
            try:
                return dict(handle.describe.remote().result(timeout_s=wait))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
                log.info("No replica answered the first call yet; asking again")

    def _wait_running(self, app_name: str) -> None:
        from ray import serve

        deadline = time.monotonic() + self.start_timeout
        message = ""
        while time.monotonic() < deadline:
            app = serve.status().applications.get(app_name)
            if app is not None:
                status = str(app.status).rsplit(".", 1)[-1]
                # Serve's deployment messages say why (unschedulable resources, crashes).
                message = "; ".join(
                    d.message for d in app.deployments.values() if d.message) or app.message
                if status == "RUNNING":
                    return
                if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                    raise RuntimeLoadError(f"Ray Serve could not deploy the agent: "
                                           f"{message or status}")
            time.sleep(0.2)
        raise RuntimeLoadError(
            f"Ray Serve replicas did not start within {self.start_timeout:g} s"
            + (f": {message}" if message else ".")
        )

    def _delete(self, app_name: str) -> None:
        if app_name not in self._apps or (self._stopping and self._started_ray):
            return
        self._apps.discard(app_name)
        try:
            from ray import serve

            serve.delete(app_name)
        except Exception:  # a cluster that is gone took the app with it
            log.warning("Could not delete Ray Serve application %s", app_name, exc_info=True)

    def _shutdown(self) -> None:
        if not self._connected:
            return
        import ray

        if not self._started_ray:
            # Someone else's cluster: take our applications off it before leaving.
            for app_name in list(self._apps):
                self._delete(app_name)
        self._apps.clear()
        if self._joined_ray:
            ray.shutdown()
        self._connected = False
