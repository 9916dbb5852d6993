"""The worker process: loads one agent's checkpoint and answers the server's frames.

Runs in a child forked from the warm template (``supervisor.py``), never in the Jupyter
server. A reader thread takes frames off the socket and hands each call to a small pool, so
concurrent calls can meet in the batchers; answers go back under one lock as they finish. When
the server goes away (end of file on the socket) the worker exits: it never outlives it.

What the checkpoint's code prints, and Python's last words on a crash (``faulthandler``),
land in the worker's log file, whose tail the server quotes when the worker dies.
"""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server_extension.serving.worker import families, protocol, serving, tree
from server_extension.serving.worker.protocol import ProtocolError


def preload(family: str) -> None:
    """Import what workers of ``family`` need (``families.py``), in its template, before any
    fork.

    Only imports: running a torch op here would start its thread pools, which do not survive
    a fork. A module that fails to import is skipped; a worker that needs it imports it
    itself and reports why.
    """
    from server_extension.serving.runtimes import base  # noqa: F401

    for entry in families.FAMILIES.get(family, families.FAMILIES[families.FULL]):
        module, _, function = entry.partition(":")
        with contextlib.suppress(Exception):
            imported = importlib.import_module(module)
            if function:
                getattr(imported, function)()


class Worker:
    """One agent's runtime behind a socket."""

    def __init__(self, sock: socket.socket, settings: dict[str, Any]) -> None:
        self.sock = sock
        self.settings = settings
        self.limits = serving.Limits(max_rows=int(settings["max_rows"]),
                                     max_array_bytes=int(settings["max_array_bytes"]))
        self.frame_cap = int(settings.get("frame_cap") or protocol.MAX_BODY)
        self.runtime: Any = None
        self._send_lock = threading.Lock()
        self._cancel: dict[int, threading.Event] = {}
        self._pool = ThreadPoolExecutor(max(1, int(settings["threads"])),
                                        thread_name_prefix="agent-call")

    # -- frames ---------------------------------------------------------------------------

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        frame = protocol.pack(header, body)
        with self._send_lock:
            self.sock.sendall(frame)

    def _recv_exact(self, count: int) -> bytes:
        chunks = []
        while count:
            chunk = self.sock.recv(min(count, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def serve(self) -> None:
        """Answer frames until the server closes the socket; then exit."""
        try:
            while True:
                header_len, body_len = protocol.parse_prefix(self._recv_exact(8),
                                                             self.frame_cap)
                header = protocol.parse_header(self._recv_exact(header_len))
                body = self._recv_exact(body_len) if body_len else b""
                self.dispatch(header, body)
        except (EOFError, ConnectionError, ProtocolError):
            pass
        # The server is gone (or stopped listening): so is everything this worker started.
        _kill_own_group()
        os._exit(0)

    def dispatch(self, header: dict[str, Any], body: bytes) -> None:
        op = header.get("op")
        if op == "cancel":
            event = self._cancel.get(int(header.get("target", -1)))
            if event is not None:
                event.set()
            return
        if op == "stream":
            self._cancel[int(header["id"])] = threading.Event()
        self._pool.submit(self._answer, header, body)

    def _answer(self, header: dict[str, Any], body: bytes) -> None:
        call_id = int(header["id"])
        op = header.get("op")
        try:
            if op == "load":
                self.send({"id": call_id, "ok": True, "result": self.load()})
            elif op == "relay":
                status, answer, rows = serving.relay(self._loaded(), str(header["route"]),
                                                     body, self.limits)
                if len(answer) > self.frame_cap:
                    status, rows, answer = 500, 0, json.dumps({
                        "success": False, "error": self._too_large(len(answer))}).encode()
                self.send({"id": call_id, "ok": True, "status": status, "rows": rows}, answer)
            elif op == "invoke":
                fn = serving.resolve(self._loaded(), str(header["name"]))
                result = protocol.dump_json(serving.jsonable(fn(*self._args(header, body))))
                if len(result) > self.frame_cap:
                    raise AnswerTooLarge(self._too_large(len(result)))
                self.send({"id": call_id, "ok": True, "result_in_body": True}, result)
            elif op == "stream":
                self._stream(call_id, header, body)
            else:
                raise ValueError(f"unknown worker operation {op!r}")
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            self.send({"id": call_id, "ok": False, "error": _error(exc)})

    @staticmethod
    def _args(header: dict[str, Any], body: bytes) -> list[Any]:
        args = protocol.load_json(body) if header.get("args_in_body") else header.get("args")
        return list(args or [])

    def _too_large(self, size: int) -> str:
        return (f"The model's answer is {size / 2**20:.1f} MiB, over the "
                f"{self.frame_cap / 2**20:.1f} MiB an agent may answer per call "
                "(AgentsWorkbenchApp.max_array_mb sets it); ask for fewer rows or tokens.")

    def _stream(self, call_id: int, header: dict[str, Any], body: bytes) -> None:
        cancelled = self._cancel[call_id]
        try:
            fn = serving.resolve(self._loaded(), str(header["name"]))
            for piece in fn(*self._args(header, body), cancelled):
                if cancelled.is_set():
                    break
                self.send({"id": call_id, "chunk": str(piece)})
            self.send({"id": call_id, "ok": True, "result": None})
        finally:
            self._cancel.pop(call_id, None)

    # -- the runtime ----------------------------------------------------------------------

    def _loaded(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("the worker has not loaded its checkpoint")
        return self.runtime

    def load(self) -> dict[str, Any]:
        """Load, probe and wrap the checkpoint; the agent's kind for the server."""
        from server_extension.serving import batching
        from server_extension.serving.runtimes import RuntimeLoadError, load_runtime
        from workbench_core.store import ExperimentStore

        s = self.settings
        started = time.perf_counter()
        phases: dict[str, float] = {}
        experiment = ExperimentStore(s["root"]).get(s["experiment"])
        checkpoint = experiment.checkpoint(int(s["step"]))
        phases["store"] = time.perf_counter() - started
        try:
            if s.get("family") == families.NUMPY:
                from server_extension.serving.runtimes import numpy_policy

                runtime = numpy_policy.load(experiment, checkpoint)  # probe set checked there
            else:
                runtime = load_runtime(experiment, checkpoint, device=s["device"],
                                       options=s["options"])
                if s.get("export_sidecar"):
                    _export_later(experiment, checkpoint)
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
            raise RuntimeLoadError(
                f"Loading the checkpoint needed more than the worker's "
                f"{s['memory_mb']:g} MiB (AgentsWorkbenchApp.worker_memory_mb raises the "
                "limit).") from exc
        phases["load"] = time.perf_counter() - started
        try:
            runtime.probe()
        except Exception as exc:
            raise RuntimeLoadError(
                "The checkpoint loaded but failed its first health probe: "
                f"{_describe(exc)}") from exc
        phases["probe"] = time.perf_counter() - started
        self.runtime = batching.wrap(runtime, s["batching"])
        phases["batching"] = time.perf_counter() - started
        return {"kind": runtime.kind.to_json(),
                "load_s": round(time.perf_counter() - started, 4),
                "phases": {k: round(v, 4) for k, v in phases.items()}}


def _export_later(experiment: Any, checkpoint: Any) -> None:
    """Write the checkpoint's numpy form in the background (it had none: an older workspace,
    an import), so the next fresh server serves it without torch. Never fails the load."""
    def export() -> None:
        with contextlib.suppress(Exception):
            from server_extension.serving.runtimes.numpy_export import try_export

            try_export(experiment, checkpoint)

    threading.Thread(target=export, name="policy-sidecar", daemon=True).start()


class AnswerTooLarge(RuntimeError):
    """The model's answer is larger than a frame may carry (the server's cap)."""


def _out_of_memory(exc: BaseException | None) -> bool:
    # Loaders wrap what went wrong in their own error; the memory limit may sit below it.
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"


def _error(exc: BaseException) -> dict[str, Any]:
    from server_extension.serving.runtimes.base import RequestError, RuntimeLoadError
    from workbench_core.store import StoreError

    if isinstance(exc, RequestError):
        return {"type": "request", "message": str(exc)}
    if isinstance(exc, (RuntimeLoadError, StoreError)):
        return {"type": "load", "message": str(exc).strip() or type(exc).__name__}
    if isinstance(exc, AnswerTooLarge):
        return {"type": "too_large", "message": str(exc)}
    if isinstance(exc, MemoryError):
        return {"type": "memory", "message": "the call needed more memory than the worker may "
                "use (AgentsWorkbenchApp.worker_memory_mb)"}
    # The traceback goes to the worker's log; the caller gets the one line.
    traceback.print_exc(file=sys.stderr)
    return {"type": "internal", "message": f"{type(exc).__name__}: {exc}"[:1000]}


def _limit_memory(megabytes: float) -> None:
    # RLIMIT_DATA counts the heap and private writable mappings (Linux 4.7+): an allocation
    # past it fails at once with MemoryError instead of taking the machine's memory. The
    # supervisor also watches the worker's RSS, for what this cannot see.
    if megabytes <= 0:
        return
    limit = int(megabytes * 1024 * 1024)
    with contextlib.suppress(ValueError, OSError):  # a stricter limit set by the user stays
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _yield_cpu(level: int) -> None:
    # CPU: cgroup v2's cpu.max would cap a worker, but it needs a cgroup delegated to the
    # server (none on cgroup v1 machines, nor in most containers), so every worker runs at a
    # nice level instead (AgentsWorkbenchApp.worker_nice): a spinning checkpoint then yields
    # to the server's event loop. The traffic view shows each worker's CPU use. Set before
    # any thread starts: Linux keeps a nice level per thread, and new threads inherit it.
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if level > current:  # lowering it again would need privileges
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, min(level, 19))


def _kill_own_group() -> None:
    # Only a group this worker leads: never the server's, should setsid have failed.
    if os.getpgid(0) == os.getpid():
        with contextlib.suppress(OSError):
            os.killpg(0, signal.SIGKILL)  # the worker and everything it started
    os._exit(1)


def _own_the_tree(sock: socket.socket, template_pid: int) -> None:
    # A session of its own: whatever the checkpoint starts stays in it and goes with it.
    with contextlib.suppress(OSError):
        os.setsid()
    me = os.getpid()

    def parent_died(signum: int, frame: Any) -> None:
        if os.getpid() != me:  # a child forked by the checkpoint inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _kill_own_group()

    # The template (our parent) dies with the server; the worker then takes its session down.
    signal.signal(signal.SIGTERM, parent_died)
    if template_pid:
        tree.parent_death_signal(signal.SIGTERM, template_pid)
    # The server watches and signals this process through a pidfd it cannot mistake for a
    # recycled pid; only this process can open one on itself before anything else runs here.
    pidfd = os.pidfd_open(me)
    try:
        socket.send_fds(sock, [json.dumps({"hello": me}).encode()], [pidfd])
    finally:
        os.close(pidfd)


def main(sock: socket.socket, log_path: str, settings: dict[str, Any]) -> None:
    """Entry point of a worker process (``multiprocessing`` target)."""
    sock.setblocking(True)
    _own_the_tree(sock, int(settings.get("template_pid") or 0))
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()
    _yield_cpu(int(settings.get("nice") or 0))
    # Ctrl-C in the server's terminal reaches the whole process group; the worker leaves
    # with the server (end of file on its socket), not on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Half the cores by default: one busy agent then leaves the rest to the server's event
    # loop and the other agents (torch would otherwise take every core in every worker).
    threads = int(settings.get("torch_threads") or 0) or max(1, (os.cpu_count() or 2) // 2)
    if settings.get("family") != families.NUMPY:  # a numpy worker never imports torch
        import torch

        torch.set_num_threads(threads)
    _limit_memory(float(settings.get("memory_mb") or 0))
    Worker(sock, settings).serve()


def run_once(sock: socket.socket, template_pid: int, log_path: str, entry: str,
             argv: list[str]) -> None:
    """Entry point of a one-shot worker (``oneshot.py``): an import's check or an
    evaluation, forked warm from a template. Calls ``entry`` (``"module:function"``, a
    ``main(argv)``) in a session of its own, its output in ``log_path``, and exits with what
    it returns."""
    _own_the_tree(sock, template_pid)
    sock.close()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.enable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller stops it, not a Ctrl-C
    module, _, function = entry.partition(":")
    code = getattr(importlib.import_module(module), function)(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Not multiprocessing's own exit: it would wait for threads the checkpoint left running.
    os._exit(int(code or 0))
