"""An interrupted ``agents-workbench run``: finished demo jobs stay finished, and an interrupt
while seeding stops the trainers and exits without a traceback.

Real ``run`` processes over an empty workspace, training the quick (seconds-long) CartPole
DQN job in a real child process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from server_extension.demos.plan import pending
from tests.servers import free_port, wait_until
from workbench_core import training_marks
from workbench_core.store import ExperimentStore


def _job_child(run_pid: int) -> int | None:
    """The pid of the demo job process ``run`` started, once it runs."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                command = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        if parent == run_pid and b"server_extension.demos.plan" in command:
            return int(entry)
    return None


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped (its parent is stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _start_run(root: Path, log: Path) -> subprocess.Popen[bytes]:
    # Started with SIGINT ignored, as a script's background job (`run &`) is, and as CI
    # starts the suite: run must still stop on SIGINT while seeding (ci18 and ci22 lost it).
    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with log.open("wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "server_extension.hosts.cli", "run", "--root",
                 str(root), "--demo", "minimal", "--quick", "--no-browser", "--port",
                 str(free_port())],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.slow
def test_a_job_that_finished_is_not_retrained_after_the_run_died(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    run = _start_run(root, tmp_path / "run.log")
    try:
        job = wait_until(lambda: _job_child(run.pid), 120, "the demo job to start")
        # From here the run records nothing (it cannot even reap the job); then it dies
        # without a word, as a run killed or cut off at the wrong moment does.
        os.kill(run.pid, signal.SIGSTOP)
        wait_until(lambda: _exited(job), 300, "the demo job to finish")
        os.kill(run.pid, signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert ExperimentStore(root).get("cartpole-dqn").checkpoints()
    assert training_marks.read(root, "cartpole-dqn") is None
    assert pending(root, "minimal") == []  # what the next run would train: nothing


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, False), (signal.SIGTERM, False),
                                            (signal.SIGINT, True)])
def test_an_interrupt_while_seeding_stops_the_trainers_cleanly(
        tmp_path: Path, sig: signal.Signals, group: bool) -> None:
    root = tmp_path / "ws"
    log = tmp_path / "run.log"
    run = _start_run(root, log)
    try:
        job = wait_until(lambda: _job_child(run.pid), 120, "the demo job to start")
        wait_until(lambda: b"server_extension.demos.plan" in Path(
            f"/proc/{job}/cmdline").read_bytes(), 30, "the job to start")
        if group:  # Ctrl-C in a terminal: every process of the group gets it
            os.killpg(run.pid, sig)
        else:  # `kill`: run alone
            run.send_signal(sig)
        try:
            code = run.wait(120)
        except subprocess.TimeoutExpired:  # say why, with what run left running
            tree = [f"{p.pid} {p.status()} {' '.join(p.cmdline())[:120]}"
                    for p in psutil.Process(run.pid).children(recursive=True)]
            pytest.fail(f"run still up 120 s after {sig.name}; its processes: {tree}\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
    finally:
        if run.poll() is None:
            # JupyterLab has a process group of its own: a failed case must not leave it.
            left = psutil.Process(run.pid).children(recursive=True)
            os.killpg(run.pid, signal.SIGKILL)
            for child in left:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            run.wait()
    text = log.read_text(errors="replace")
    assert code == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "Interrupted." in text
    assert _exited(job), "the demo job outlived run"
    assert pending(root, "minimal")  # cut off: the next run trains it
