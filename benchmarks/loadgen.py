"""Load generation with wrk (C, epoll), so the client is not what limits a Python server.

Every run reports throughput, latency percentiles, errors and the CPU the load generator itself
used, so a result can be checked for "was the client the bottleneck?".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {{\\"requests\\": %d, \\"duration_us\\": %d, \\"socket_errors\\": %d, "
    .. "\\"non_2xx\\": %d, \\"p50_us\\": %.1f, \\"p99_us\\": %.1f, \\"mean_us\\": %.1f}}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


@dataclass
class LoadResult:
    """One wrk run."""

    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    errors: int
    client_cpu: float  # cores the load generator used on average (1.0 = one core busy)

    def to_json(self) -> dict[str, float | int]:
        """Plain dict for the results file."""
        return asdict(self)


def have_wrk() -> bool:
    """Whether the wrk binary is on PATH (Debian package ``wrk``)."""
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII


def _rotate(targets: list[tuple[str, str]]) -> str:
    """Lua that sends each request to the next (path, key) in turn: one client, many agents."""
    rows = ", ".join(f"{{{_lua_string(path)}, {_lua_string('Bearer ' + key)}}}"
                     for path, key in targets)
    return (f"local targets = {{{rows}}}\nlocal turn = 0\n"
            "request = function()\n  turn = turn % #targets + 1\n"
            '  wrk.headers["Authorization"] = targets[turn][2]\n'
            '  return wrk.format("POST", targets[turn][1], nil, wrk.body)\nend\n')


def run_wrk(url: str, body: str, *, key: str | None, connections: int, seconds: float,
            threads: int = 1, targets: list[tuple[str, str]] | None = None) -> LoadResult:
    """POST ``body`` to ``url`` from ``connections`` keep-alive connections for ``seconds``.

    With ``targets`` (URL paths and their keys) requests go round them in turn instead.
    """
    auth = f'wrk.headers["Authorization"] = {_lua_string("Bearer " + key)}' if key else ""
    if targets:
        auth = _rotate(targets)
    fd, script = tempfile.mkstemp(suffix=".lua", prefix="awb-bench-")
    try:
        with os.fdopen(fd, "w") as fh:  # 0600 by mkstemp: the key is in it
            fh.write(_LUA.format(body=_lua_string(body), auth=auth))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(
            ["wrk", "-t", str(min(threads, connections)), "-c", str(connections),
             # wrk takes whole seconds only
             "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", script, url],
            capture_output=True, text=True, check=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        Path(script).unlink(missing_ok=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    data = json.loads(line[len("RESULT "):])
    wall = data["duration_us"] / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LoadResult(
        connections=connections,
        requests=data["requests"],
        seconds=round(wall, 3),
        rps=round(data["requests"] / wall, 1) if wall else 0.0,
        p50_ms=round(data["p50_us"] / 1000, 3),
        p99_ms=round(data["p99_us"] / 1000, 3),
        mean_ms=round(data["mean_us"] / 1000, 3),
        errors=data["socket_errors"] + data["non_2xx"],
        client_cpu=round(cpu / wall, 3) if wall else 0.0,
    )
