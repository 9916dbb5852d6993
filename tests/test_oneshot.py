"""One-shot workers (``server_extension/serving/worker/oneshot.py``): an import's check and
an evaluation run once in a process forked from the family's warm template, as an agent's
worker is, and stop as a whole session.

Real forks of a real template (the numpy family's: it imports in well under a second).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from server_extension.serving.worker.oneshot import ForkedRun, how_it_ended
from server_extension.serving.worker.supervisor import template_for
from tests.servers import wait_until

FRAMEWORK = "numpy"  # the lightest family; every family's template forks the same way


def _gone(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return raw[raw.rfind(b")") + 2:][:1] in (b"Z", b"X")


def test_a_run_forks_from_the_template_in_its_own_session(tmp_path: Path) -> None:
    facts, log = tmp_path / "facts.txt", tmp_path / "run.log"
    run = ForkedRun(FRAMEWORK, "tests.oneshot_targets:report", ["x", str(facts), "7"], log)
    assert run.wait(60) == 7
    parent, session, pid = (int(v) for v in facts.read_text().split())
    template = template_for(FRAMEWORK)
    assert template is not None
    assert parent == template.pid  # a fork of the template, not a new interpreter
    assert session == pid == run.pid != os.getsid(0)  # it leads a session of its own
    assert "one-shot says hello" in log.read_text()  # its output goes to its log
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    # Both are safe once it has ended, and keep saying how it ended.
    assert run.poll() == 7
    assert run.kill() == 7


def test_what_a_run_starts_dies_with_it(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    run = ForkedRun(FRAMEWORK, "tests.oneshot_targets:leave_a_child", ["x", str(child)],
                    tmp_path / "run.log")
    assert run.wait(60) == 0
    orphan = int(child.read_text())
    assert wait_until(lambda: _gone(orphan), timeout=10), "the run's child outlived it"


def test_a_hanging_run_is_killed_with_its_session(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    run = ForkedRun(FRAMEWORK, "tests.oneshot_targets:hang", ["x"], log)
    assert run.wait(0.5) is None
    assert run.poll() is None
    assert run.kill() == -signal.SIGKILL
    assert _gone(run.pid)
    assert "hanging" in log.read_text()


def test_a_run_whose_entry_raises_exits_non_zero_with_the_traceback_in_its_log(
        tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    run = ForkedRun(FRAMEWORK, "tests.oneshot_targets:no_such_function", ["x"], log)
    assert run.wait(60) == 1
    assert "no_such_function" in log.read_text()


def test_how_a_run_ended_is_said_in_words() -> None:
    assert how_it_ended(3) == "exited with status 3"
    assert how_it_ended(-signal.SIGKILL) == "was killed by signal SIGKILL"
    assert how_it_ended(-40) == "was killed by signal 40"  # a real-time signal has no name
    assert how_it_ended(None) == "was stopped"


def test_a_run_that_kills_its_template_costs_only_itself(tmp_path: Path) -> None:
    # The next run starts while the template is dying: it refuses connections before it can
    # be reaped, and the start must wait for that and start a new template, not fail.
    for round_ in range(3):
        signalled = tmp_path / f"signalled{round_}"
        killer = ForkedRun(FRAMEWORK, "tests.oneshot_targets:kill_the_template",
                           ["x", str(signalled)], tmp_path / f"killer{round_}.log")
        before = template_for(FRAMEWORK)
        assert before is not None
        old = before.pid
        wait_until(signalled.exists, timeout=30)
        facts = tmp_path / f"facts{round_}.txt"
        run = ForkedRun(FRAMEWORK, "tests.oneshot_targets:report", ["x", str(facts), "0"],
                        tmp_path / f"run{round_}.log")
        assert run.wait(60) == 0
        assert killer.wait(60) is not None
        parent = int(facts.read_text().split()[0])
        assert parent != old  # forked from a new template
        assert parent == before.pid  # the same Template object, started again
