"""The server side of worker processes: start them warm, relay calls, notice deaths.

Every worker is forked from the template of its framework's family (``families.py``): a
fork server that has already imported that family's libraries (numpy, torch and AgileRL for
Classic RL; transformers and PEFT as well for LLMs). A fork takes tens of milliseconds where a
fresh interpreter would spend seconds importing. The templates the workspace's experiments
need start in the background as the extension loads (:func:`warm_templates`), Classic first
and each after the one before has finished importing, so a Classic Connect never waits for
the LLM stack.

A :class:`WorkerProcess` owns one child and everything it starts (``tree.py``): a socket to
it (an asyncio protocol, so relaying a call costs the event loop a write and a callback), a
pidfd the worker sent at start, the calls in flight, and the reason it died. Deaths are read
from the pidfd (a child of the checkpoint holding the socket cannot hide one); the exit status
comes from the fork server. Every signal goes through a pidfd, never to a bare pid. Calls past
their deadline, and workers past their memory limit, are killed by a sweep that runs a few
times a second; a stopped or dead worker's session is killed with it.

Threading: everything here runs on the event loop except :func:`warm_templates` and the
blocking part of :meth:`WorkerProcess.start`, which run on a thread.

Example::

    worker = WorkerProcess("cartpole", settings, log_dir, on_exit=print)
    await worker.start()
    header, _ = await worker.call({"op": "load"}, timeout=120)
    header, body = await worker.call({"op": "relay", "route": "get_action"}, request_body)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import context, forkserver, popen_forkserver, reduction, spawn, util
from pathlib import Path
from typing import Any

from server_extension.serving.worker import child, families, protocol, tree
from server_extension.serving.worker.protocol import ProtocolError

log = logging.getLogger("agents_workbench.workers")

WORKER_NAME = "agents-workbench worker"
_PREPARATION = spawn.get_preparation_data


def _worker_preparation(name: str) -> dict[str, Any]:
    # multiprocessing re-imports the parent's __main__ in every child it starts, by module
    # name or file path. For a worker that would be whatever launched the server (a console
    # script, a user's own script without a __main__ guard, which would start a second server
    # in every worker); workers need nothing from it, so they get none.
    data = _PREPARATION(name)
    if name.startswith(WORKER_NAME):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


spawn.get_preparation_data = _worker_preparation
_TEMPLATE_LOCK = threading.Lock()
PRELOAD_ENV = "AGENTS_WORKBENCH_PRELOAD"
READY_ENV = "AGENTS_WORKBENCH_TEMPLATE_READY"
SERVER_PID_ENV = "AGENTS_WORKBENCH_SERVER_PID"
# A template's parent-death signal fires when the *thread* that started it ends, so every
# template is started from this one thread, which lives as long as the server.
_KEEPER = ThreadPoolExecutor(1, thread_name_prefix="agents-template")
HELLO_TIMEOUT = 60.0
READY_TIMEOUT = 300.0  # a template still importing after this lets the next family start
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}"


class WorkerDied(RuntimeError):
    """The worker process is gone; the message says why (exit code, signal, last output)."""


class WorkerTimeout(TimeoutError):
    """A call ran past its deadline; the worker was stopped."""


class WorkerBusy(RuntimeError):
    """The worker already holds as many calls as it may."""


class WorkerCallError(RuntimeError):
    """The worker answered a call with an error: ``kind`` is request, load, memory or
    internal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _ForkServer(forkserver.ForkServer):
    """A fork server that is only ever (re)started through its :class:`Template` on the
    keeper thread, with the template's environment (multiprocessing would otherwise restart
    a dead one from whichever thread starts the next worker)."""

    def __init__(self, template: Template) -> None:
        super().__init__()
        self.template = template

    def ensure_running(self) -> None:
        _KEEPER.submit(self.template.ensure_running).result()


class Template:
    """One warm template: a fork server that imported one family's libraries
    (``families.py``). Workers of that family fork from it."""

    def __init__(self, family: str, ready_path: Path) -> None:
        self.family = family
        self.ready_path = ready_path
        self.server = _ForkServer(self)
        self.server.set_forkserver_preload([f"{__package__}.template"])
        self.started_at: float | None = None  # time.time() of its (last) start

    @property
    def pid(self) -> int:
        """The template's pid (0 before it started)."""
        return int(getattr(self.server, "_forkserver_pid", None) or 0)

    @property
    def ready(self) -> bool:
        """Its imports are done: a worker forked now starts in tens of milliseconds."""
        pid = self.pid
        return bool(pid) and Path(f"{self.ready_path}.{pid}").exists()

    def ensure_running(self) -> None:
        """Start the template unless it runs (on the keeper thread only)."""
        before = self.pid
        # The template reads these at start; set only while it is spawned (on this one thread).
        os.environ[PRELOAD_ENV] = self.family
        os.environ[READY_ENV] = str(self.ready_path)
        os.environ[SERVER_PID_ENV] = str(os.getpid())
        try:
            forkserver.ForkServer.ensure_running(self.server)  # starts it again if it died
        finally:
            os.environ.pop(PRELOAD_ENV, None)
            os.environ.pop(READY_ENV, None)
        if self.pid != before:
            self.started_at = time.time()

    def gone(self) -> bool:
        """The template process has exited (or never started)."""
        try:
            raw = Path(f"/proc/{self.pid}/stat").read_bytes() if self.pid else b""
        except OSError:
            return True
        # "pid (comm) state ...": a zombie (Z) or dead (X) template has exited.
        return not raw or raw[raw.rfind(b")") + 2:][:1] in (b"Z", b"X")

    def wait_gone(self, timeout: float) -> bool:
        """Block until the template has exited (False: it still runs after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.gone():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Block until the template's imports are done (False: timeout, or it died)."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() > deadline or self.gone():
                return False
            time.sleep(0.05)
        return True


_TEMPLATES: dict[str, Template] = {}
_QUEUED: set[str] = set()  # families a warm-up sequence has taken on
_READY_DIR: list[Path] = []
_LAUNCH = threading.local()  # the template a Process.start() on this thread forks from


def _template(family: str) -> Template:
    with _TEMPLATE_LOCK:
        template = _TEMPLATES.get(family)
        if template is None:
            if not _READY_DIR:
                _READY_DIR.append(Path(tempfile.mkdtemp(prefix="agents-workbench-templates-")))
                # Every process that forks workers (a server, the CLI's import) has one.
                atexit.register(shutil.rmtree, _READY_DIR[0], ignore_errors=True)
            template = _TEMPLATES[family] = Template(family, _READY_DIR[0] / family)
        return template


def start_template(family: str) -> Template:
    """Start ``family``'s template now unless it runs (returns once it is spawned, without
    waiting for its imports)."""
    template = _template(family)
    _KEEPER.submit(template.ensure_running).result()
    return template


def warm_templates(frameworks: list[str] | set[str]) -> threading.Thread | None:
    """Start the templates ``frameworks`` need, in :data:`families.ORDER`, each once the one
    before has finished importing (two importing at once would share the CPUs, and Classic
    RL would wait for transformers). Runs on a thread of its own; returns it (``None`` when
    nothing was left to start)."""
    with _TEMPLATE_LOCK:
        todo = [f for f in families.families_for(frameworks) if f not in _QUEUED]
        _QUEUED.update(todo)
    if not todo:
        return None

    def sequence() -> None:
        for family in todo:
            try:
                start_template(family).wait_ready(READY_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - a worker of the family reports it
                log.warning("The %s template did not start: %s", family, exc)

    thread = threading.Thread(target=sequence, name="agents-template-warm", daemon=True)
    thread.start()
    return thread


def warm_template(frameworks: list[str]) -> None:
    """Start the templates ``frameworks`` need (in the background, in order)."""
    warm_templates(frameworks)


def template_for(framework: str) -> Template | None:
    """The template of ``framework``'s family, or ``None`` before it was asked for."""
    return _TEMPLATES.get(families.family_of(framework))


def templates() -> dict[str, Template]:
    """Every template asked for so far, by family."""
    return dict(_TEMPLATES)


class _TemplatePopen(popen_forkserver.Popen):
    """multiprocessing's fork-server start, from the template chosen for this start (the
    standard one knows a single fork server)."""

    def _launch(self, process_obj: Any) -> None:
        server: forkserver.ForkServer = _LAUNCH.server
        prep_data = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        context.set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            context.set_spawning_popen(None)
        self.sentinel, w = server.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds,  # type: ignore[attr-defined]
                                       (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as fh:
            fh.write(buf.getbuffer())
        # Blocks until the template accepts: only a template still importing makes it wait.
        self.pid = forkserver.read_signed(self.sentinel)


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _TemplatePopen(process_obj)


def worker_process(target: Callable[..., None], args: tuple[Any, ...],
                   name: str) -> multiprocessing.process.BaseProcess:
    """A process to start with :func:`fork_from` that runs ``target(*args)``; its title names
    it as a workbench worker (``name``: the agent, or what a one-shot run does)."""
    return _WorkerProcess(target=target, args=args, name=f"{WORKER_NAME} {name}",
                          daemon=False)


def fork_from(template: Template, proc: multiprocessing.process.BaseProcess,
              parent: socket.socket, sock: socket.socket, *,
              describe: Callable[[], str]) -> int:
    """Start ``proc`` (from :func:`worker_process`, its target :func:`child.main` or
    :func:`child.run_once`) as a fork of ``template``; the pidfd it sent itself.

    ``describe`` says why the process is gone when it died before introducing itself.
    """
    _LAUNCH.server = template.server
    try:
        proc.start()
    except (OSError, EOFError) as exc:  # refused, or accepted and then dropped
        # Code a template forked runs as the user and can kill the template; one that is
        # exiting refuses the start before it can be reaped and started again.
        raise WorkerDied(f"the {template.family} worker template did not take the start "
                         f"({exc or type(exc).__name__}): it refuses starts while it dies") from exc
    finally:
        del _LAUNCH.server
    # multiprocessing polls every child it knows at each start() (from whatever thread
    # calls it) and joins them at exit. This one is polled by its owner only, and the
    # server must not wait for workers when it exits.
    multiprocessing.process._children.discard(proc)  # type: ignore[attr-defined]
    sock.close()
    # The worker's first words: its pid and a pidfd it opened on itself, before any
    # checkpoint code ran there.
    parent.settimeout(HELLO_TIMEOUT)
    try:
        message, fds, _, _ = socket.recv_fds(parent, 256, 1)
    except OSError as exc:
        raise WorkerDied(f"the worker did not start ({exc})") from exc
    finally:
        parent.settimeout(None)
    try:
        hello = json.loads(message) if message else {}
    except ValueError:
        hello = {}
    if len(fds) != 1 or hello.get("hello") != proc.pid:
        for fd in fds:
            tree.close_quietly(fd)
        raise WorkerDied(describe() if not message else "the worker did not introduce itself")
    return int(fds[0])


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _tail(path: Path, lines: int = 6, chars: int = 800) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    out = " | ".join(kept)
    return out[-chars:]


class _Connection(asyncio.Protocol):
    """Parses frames from the worker and hands them to its :class:`WorkerProcess`."""

    def __init__(self, owner: WorkerProcess) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        try:
            while len(buf) >= 8:
                header_len, body_len = protocol.parse_prefix(bytes(buf[:8]),
                                                             self.owner.frame_cap)
                end = 8 + header_len + body_len
                if len(buf) < end:
                    break
                header = protocol.parse_header(bytes(buf[8:8 + header_len]))
                body = bytes(buf[8 + header_len:end])
                del buf[:end]
                self.owner._on_frame(header, body)
        except (ProtocolError, KeyError, ValueError, TypeError) as exc:
            # A worker that sends garbage is not trusted further.
            self.owner.kill(f"the worker broke the protocol ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_closed()


class WorkerProcess:
    """One worker process and the calls in flight to it."""

    _ids = itertools.count(1)

    def __init__(self, name: str, settings: dict[str, Any], log_dir: Path, *,
                 on_exit: Callable[[WorkerProcess], None], max_calls: int = 64,
                 memory_mb: float = 0.0, frame_cap: int = protocol.MAX_BODY) -> None:
        self.name = name
        # The largest frame body either side sends: a caller's input past it is refused
        # here, a worker's answer past it in the worker; nothing larger is ever buffered.
        self.frame_cap = frame_cap
        self.settings = {**settings, "frame_cap": frame_cap}
        self.log_path = log_dir / f"{name}.{next(self._ids)}.log"
        self.on_exit = on_exit
        self.max_calls = max(1, max_calls)
        self.memory_bytes = int(memory_mb * 1024 * 1024)
        self.proc: Any = None
        self.started_at = 0.0
        self.reason: str | None = None  # why it died, once it has
        self.peak_rss = 0
        self._kill_reason: str | None = None
        self._conn: _Connection | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # call id -> [deadline (monotonic), timeout]; streams have an entry here too.
        self._deadlines: dict[int, tuple[float, float, str]] = {}
        self._streams: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._exited = asyncio.Event()
        self._reaper: asyncio.Future[None] | None = None
        self._pidfd: int | None = None  # names the worker itself, never a recycled pid
        self._gone = False  # the process has exited (its pidfd said so)
        self._cpu_sample: tuple[float, float] | None = None  # (monotonic, CPU seconds)
        self._cpu_percent: float | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id once started."""
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """Started and not known to be gone."""
        return self.proc is not None and self.reason is None

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._deadlines)

    async def start(self) -> None:
        """Fork the worker from the template, take its pidfd and connect to it."""
        parent, sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.log_path.touch(mode=0o600)
        framework = str(self.settings.get("framework", ""))
        try:
            try:
                await asyncio.to_thread(self._start_blocking, framework, parent, sock)
            finally:
                sock.close()
        except BaseException:
            parent.close()
            raise
        self.started_at = time.time()
        loop = asyncio.get_running_loop()
        parent.setblocking(False)
        _, conn = await loop.create_unix_connection(lambda: _Connection(self), sock=parent)
        self._conn = conn
        assert self._pidfd is not None
        loop.add_reader(self._pidfd, self._on_process_exit)

    def _start_blocking(self, framework: str, parent: socket.socket,
                        sock: socket.socket) -> None:
        family = str(self.settings.get("family") or families.family_of(framework))
        template = start_template(family)
        self.proc = worker_process(
            child.main,
            (sock, str(self.log_path), {**self.settings, "template_pid": template.pid}),
            self.name)
        self._pidfd = fork_from(template, self.proc, parent, sock,
                                describe=lambda: self._describe_exit(self.proc.exitcode))

    # -- calls ----------------------------------------------------------------------------

    def _send(self, header: dict[str, Any], body: bytes = b"") -> None:
        if "args" in header:  # arguments travel in the body, as UTF-8 JSON
            body = protocol.dump_json(header["args"])
            header = {**{k: v for k, v in header.items() if k != "args"}, "args_in_body": True}
        if len(body) > self.frame_cap:
            # Refused here, before a byte is sent: the worker never sees (or dies of) it.
            raise WorkerCallError("request", (
                f"The call's input is {_mib(len(body))} MiB; an agent takes at most "
                f"{_mib(self.frame_cap)} MiB per call (AgentsWorkbenchApp.max_array_mb sets "
                "it). Send less, or split it into several calls."))
        if self._conn is None or self._conn.transport is None or self.reason is not None:
            raise WorkerDied(self.reason or "the worker is not running")
        self._conn.transport.write(protocol.pack(header, body))

    def _begin(self, timeout: float, late: str | None) -> int:
        if len(self._deadlines) >= self.max_calls:
            raise WorkerBusy(f"{self.max_calls} calls are in flight already")
        call_id = next(self._ids)
        late = late or (f"the worker did not answer a call within {timeout:g} s and was "
                        "stopped (AgentsWorkbenchApp.request_timeout)")
        self._deadlines[call_id] = (time.monotonic() + timeout, timeout, late)
        return call_id

    def _raise_error(self, answer: dict[str, Any]) -> None:
        error = answer.get("error") or {}
        kind = str(error.get("type", "internal"))
        message = str(error.get("message", "the worker gave no reason"))
        if kind == "died":
            raise WorkerDied(message)
        raise WorkerCallError(kind, message)

    async def call(self, header: dict[str, Any], body: bytes = b"", *,
                   timeout: float = 60.0, late: str | None = None,
                   ) -> tuple[dict[str, Any], bytes]:
        """Send one call and wait for its answer frame.

        :class:`WorkerTimeout` past ``timeout`` (the worker is killed: a call that does not
        return holds the model for good), :class:`WorkerDied` if the worker dies first,
        :class:`WorkerCallError` when the worker answers with an error, :class:`WorkerBusy`
        when ``max_calls`` are in flight already.
        """
        call_id = self._begin(timeout, late)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        deadline = self._deadlines[call_id][0]
        try:
            self._send({**header, "id": call_id}, body)
            answer, payload = await future
        except WorkerDied as exc:
            if time.monotonic() >= deadline:
                raise WorkerTimeout(str(exc)) from exc
            raise
        finally:
            self._pending.pop(call_id, None)
            self._deadlines.pop(call_id, None)
        if not answer.get("ok"):
            self._raise_error(answer)
        if answer.get("result_in_body"):
            answer = {**answer, "result": protocol.load_json(payload)}
            payload = b""
        return answer, payload

    async def stream(self, header: dict[str, Any], *, timeout: float,
                     ) -> AsyncGenerator[str, None]:
        """Send a streaming call; yield its text pieces. Closing the iterator cancels it.

        ``timeout`` bounds the wait for each piece, not the whole stream.
        """
        call_id = self._begin(timeout, None)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._streams[call_id] = queue
        finished = False
        try:
            self._send({**header, "id": call_id, "op": "stream"})
            while True:
                item = await queue.get()
                if "chunk" in item:
                    yield str(item["chunk"])
                    continue
                finished = True
                if not item.get("ok"):
                    self._raise_error(item)
                return
        finally:
            self._streams.pop(call_id, None)
            self._deadlines.pop(call_id, None)
            if not finished and self.alive:
                with contextlib.suppress(WorkerDied):
                    self._send({"op": "cancel", "id": 0, "target": call_id})

    def _on_frame(self, header: dict[str, Any], body: bytes) -> None:
        call_id = int(header["id"])
        queue = self._streams.get(call_id)
        if queue is not None:
            queue.put_nowait(header)
            entry = self._deadlines.get(call_id)
            if entry is not None:  # a piece arrived: the next one has the whole timeout
                self._deadlines[call_id] = (time.monotonic() + entry[1], entry[1], entry[2])
            return
        future = self._pending.get(call_id)
        if future is not None and not future.done():
            future.set_result((header, body))

    # -- supervision ------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Kill the worker if a call is past its deadline or its memory is past the limit."""
        if not self.alive or self._gone:
            return
        for deadline, _, late in list(self._deadlines.values()):
            if now > deadline:
                self.kill(late)
                return
        # Only read while the pidfd says the worker lives: its pid is still its own then.
        rss = rss_bytes(self.proc.pid)
        self.peak_rss = max(self.peak_rss, rss)
        if self.memory_bytes and rss > self.memory_bytes:
            self.kill(f"the worker used more than {self.memory_bytes // (1024 * 1024)} MiB "
                      f"({rss // (1024 * 1024)} MiB resident; "
                      "AgentsWorkbenchApp.worker_memory_mb raises the limit)")

    def cpu_use(self) -> dict[str, Any]:
        """CPU time of the worker and the processes it started (``cpu_seconds``), and its
        share of one core since the last time this was asked (``cpu_percent``; ``None`` the
        first time). Scans /proc, so it runs when the traffic view asks, not in the sweep."""
        if not self.alive or self._gone or self.pid is None:
            return {}
        now, total = time.monotonic(), tree.worker_cpu_seconds(self.pid)
        previous = self._cpu_sample
        if previous is None or now - previous[0] >= 1.0:  # a share over a second at least
            self._cpu_sample = (now, total)
            if previous is not None:
                self._cpu_percent = round(
                    max(0.0, total - previous[1]) * 100 / (now - previous[0]), 1)
        return {"cpu_seconds": round(total, 2), "cpu_percent": self._cpu_percent}

    def kill(self, reason: str) -> None:
        """Stop the worker and its session now (SIGKILL); ``reason`` becomes why it died.

        Signals go through the worker's pidfd and verified pidfds of its session's members:
        never to a pid that may have been given to another process.
        """
        if self._kill_reason is None:
            self._kill_reason = reason
        if self._pidfd is not None and not self._gone:
            tree.signal_pidfd(self._pidfd, signal.SIGKILL)
        self._kill_session()

    def _kill_session(self) -> int:
        pid = self.pid
        if pid is None or self._pidfd is None:
            return 0
        return tree.kill_session(pid)

    def close(self) -> None:
        """Stop the worker because it is no longer wanted (Disconnect, Delete, shutdown)."""
        if self.reason is not None:
            return
        self._kill_reason = self._kill_reason or "stopped by the server"
        self.kill(self._kill_reason)
        self._finish(self._kill_reason)

    def _on_closed(self) -> None:
        # Its socket closed. Death itself is read from the pidfd (an exiting process closes
        # its descriptors a moment before its pidfd says so); a worker that closed its socket
        # but lives on cannot be talked to, so it is stopped.
        if self.reason is None and not self._gone:
            asyncio.get_running_loop().call_later(1.0, self._closed_but_alive)

    def _closed_but_alive(self) -> None:
        if self.reason is None and not self._gone:
            self.kill(self._kill_reason or "the worker closed its connection")

    def _on_process_exit(self) -> None:
        # The pidfd is readable: the worker process has exited (children may live on).
        self._gone = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self._pidfd)  # type: ignore[arg-type]
        self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        proc = self.proc
        code = None
        # What the checkpoint started dies with the worker (it may hold the socket open).
        self._kill_session()
        if proc is not None:
            # The fork server reports the status a moment after the exit.
            for _ in range(80):
                code = proc.exitcode
                if code is not None:
                    break
                await asyncio.sleep(0.025)
        # Members forked while the first sweep ran: sweep until none is left.
        for _ in range(100):
            if not self._kill_session():
                break
            await asyncio.sleep(0.05)
        tree.close_quietly(self._pidfd)
        self._pidfd = None
        if self.reason is not None:
            return  # closed by the server meanwhile
        self._finish(self._describe_exit(code))
        try:
            self.on_exit(self)
        finally:
            self.log_path.unlink(missing_ok=True)

    def _finish(self, reason: str) -> None:
        self.reason = reason
        if self._conn is not None and self._conn.transport is not None:
            # A child of the checkpoint may still hold the other end; nothing more is read.
            self._conn.transport.close()
        died = WorkerDied(reason)
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(died)
        self._pending.clear()
        for queue in self._streams.values():
            queue.put_nowait({"ok": False, "error": {"type": "died", "message": reason}})
        self._exited.set()
        if self._kill_reason == "stopped by the server":
            self.log_path.unlink(missing_ok=True)

    async def wait(self) -> str:
        """Wait until the worker is gone; why it went."""
        await self._exited.wait()
        return self.reason or ""

    def _describe_exit(self, code: int | None) -> str:
        if self._kill_reason is not None:
            base = self._kill_reason
        elif code is None:
            base = "the worker stopped answering"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            base = f"the worker was killed by {name}"
            if -code == signal.SIGKILL:
                base += " (from outside the server: the system's out-of-memory killer, or a user)"
            elif -code in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL):
                base = f"the worker crashed ({name})"
        else:
            base = f"the worker exited with code {code}"
        tail = _tail(self.log_path)
        return f"{base}; its last output: {tail}" if tail else base
