"""A worker's whole process tree: its session, parent-death signals, signals through pidfds.

A checkpoint's code may start processes of its own (``os.fork``, a ``multiprocessing`` pool,
``subprocess``), and they inherit the worker's descriptors. So the worker is watched and
stopped as a tree, never through its pid alone:

- each worker leads a **session of its own** (``setsid``); everything it starts stays in it
  unless it leaves on purpose, and the session is killed with the worker;
- the server signals the worker only through a **pidfd** the worker sent it at start (a pidfd
  names one process, never a recycled pid), and its death is read from that pidfd, not from
  the socket (which a child holding the descriptor keeps open);
- a session member is signalled through a pidfd opened on it and only after its session id
  was read again from that process, so a pid given to an unrelated process in between is
  never signalled;
- ``PR_SET_PDEATHSIG`` ties the template to the server and each worker to the template; a
  worker whose parent dies kills its own session on the way out, so nothing of it outlives
  the server, even a ``SIGKILL``\\ed one.

Linux only (pidfds: 5.3+). Functions here never raise for a process that is already gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PROC = Path("/proc")


def parent_death_signal(sig: int, expected_parent: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies.

    ``expected_parent`` closes the race with a parent that died before the call: the process
    exits at once when its parent is no longer that one.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(1)


def _stat_fields(pid: int) -> list[str] | None:
    # /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces and
    # parentheses, so the fields are counted from the last ")".
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    end = raw.rfind(b")")
    if end < 0:
        return None
    return raw[end + 2:].decode("ascii", "replace").split()


def session_of(pid: int) -> int | None:
    """The session id of process ``pid`` (``None`` when it is gone)."""
    fields = _stat_fields(pid)
    try:
        return int(fields[3]) if fields else None
    except (IndexError, ValueError):
        return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far (0 when it is gone)."""
    fields = _stat_fields(pid)
    try:
        ticks = int(fields[11]) + int(fields[12]) if fields else 0
    except (IndexError, ValueError):
        return 0.0
    return ticks / os.sysconf("SC_CLK_TCK")


def session_members(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` right now (a snapshot: verify before signalling)."""
    members = []
    for entry in os.scandir(_PROC):
        if entry.name.isdigit() and session_of(int(entry.name)) == sid:
            members.append(int(entry.name))
    return members


def signal_pidfd(pidfd: int, sig: int) -> bool:
    """Send ``sig`` through ``pidfd``; ``False`` when its process has already exited."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, OSError):
        return False
    return True


def kill_session(sid: int, *, spare: int | None = None) -> int:
    """SIGKILL every process still in session ``sid`` except ``spare``; how many were signalled.

    Each member is opened as a pidfd first, then its session id is read again: if the pid was
    reused between the listing and the open, the new process either is in another session
    (left alone) or the pidfd names the dead one (the signal goes nowhere).
    """
    count = 0
    for pid in session_members(sid):
        if pid == spare or pid == os.getpid():
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone meanwhile
        try:
            if session_of(pid) == sid and signal_pidfd(pidfd, signal.SIGKILL):
                count += 1
        finally:
            os.close(pidfd)
    return count


def worker_cpu_seconds(sid: int) -> float:
    """CPU time used so far by the live processes of session ``sid`` (a worker and its
    children)."""
    return sum(cpu_seconds(pid) for pid in session_members(sid))


def close_quietly(fd: int | None) -> None:
    """Close ``fd`` unless it is ``None`` or closed already."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
