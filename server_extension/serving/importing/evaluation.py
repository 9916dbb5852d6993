"""Scores that mean something: the workbench's own evaluation of imported checkpoints.

An import with no scores and a known environment leaves ``evaluation.json`` in the experiment
(:mod:`workbench_core.evaluation_marks`). :class:`BackgroundEvaluator`, started by the
server, finds such experiments and scores their checkpoints one worker process at a time
(:mod:`.evaluation_worker`: a checkpoint is a pickle, so never in the server), writing each
score into ``metrics.csv`` as it lands, so "Best" becomes the best. A checkpoint that fails
(raises, crashes its worker, runs past the deadline) is marked failed with the reason and the
rest go on. A lock file per experiment keeps two servers (or a server and the CLI's
``--evaluate``) from scoring one experiment twice; a server stopped mid-way leaves the plan
on disk, and the next one resumes with the steps still unscored.

Example::

    evaluate_experiment(root / "experiments" / "dqn")  # blocks; returns the final plan
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server_extension.serving.worker.oneshot import ForkedRun, how_it_ended
from server_extension.serving.worker.supervisor import WorkerDied
from workbench_core import evaluation_marks as marks
from workbench_core.store import ExperimentStore, ExperimentWriter, StoreError

log = logging.getLogger("agents_workbench.evaluation")

EPISODES = 10
# The demo trainers' evaluation seeds (server_extension/training/agilerl.py's EVAL_SEED), so
# an imported checkpoint is scored on the same episodes as a trained one.
SEED = 1000
STEP_TIMEOUT_S = 600.0
MEMORY_MB = 4096.0
SCAN_INTERVAL_S = 10.0
LOCK = ".evaluation.lock"
WORKER_ENTRY = "server_extension.serving.importing.evaluation_worker:main"

Progress = Callable[[dict[str, Any]], None]


def plan(folder: Path, steps: list[int], *, episodes: int = EPISODES, seed: int = SEED
         ) -> dict[str, Any]:
    """Ask for the evaluation of ``steps`` (written by the import, before its rename)."""
    return marks.request(folder, steps=steps, episodes=episodes, seed=seed)


def describe(episodes: int, seed: int) -> str:
    """What the evaluation score means, for ``experiment.json`` and the wizard."""
    return (f"workbench evaluation: mean return of {episodes} greedy episodes on env seeds "
            f"{seed} to {seed + episodes - 1} (turn-based games: the win rate against random "
            "moves, each seed once per side)")


class _Run:
    """One worker over some steps: start it, read its lines as they come."""

    def __init__(self, folder: Path, body: dict[str, Any], steps: list[int],
                 memory_mb: float, *, nice: int, framework: str) -> None:
        work = folder / ".evaluation"
        work.mkdir(exist_ok=True)
        self.request = work / "request.json"
        self.out = work / "results.jsonl"
        self.out.write_text("", "utf-8")
        self.request.write_text(json.dumps({
            "folder": str(folder), "steps": steps, "episodes": body["episodes"],
            "seed": body["seed"], "memory_mb": memory_mb, "nice": nice}), "utf-8")
        self._offset = 0
        # Forked from the framework's warm template, as an agent's worker is.
        self.process = ForkedRun(framework, WORKER_ENTRY,
                                 ["evaluation-worker", str(self.request), str(self.out)],
                                 work / "worker.log", name="evaluation")

    def lines(self) -> list[dict[str, Any]]:
        """Complete lines written since the last call."""
        with self.out.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out = []
        for raw in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out


def evaluate_experiment(folder: Path, *, memory_mb: float = MEMORY_MB,
                        step_timeout_s: float = STEP_TIMEOUT_S, nice: int = 0,
                        stop: threading.Event | None = None,
                        progress: Progress | None = None) -> dict[str, Any] | None:
    """Score what is left of ``folder``'s evaluation plan; the plan after, or ``None`` when
    another process holds the experiment's lock (it is evaluating it already)."""
    folder = Path(folder)
    with (folder / LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        body = marks.load(folder)
        if body is None or body["state"] == "done":
            return body
        try:
            info = ExperimentStore(folder.parent.parent).get(folder.name).info
        except StoreError as exc:
            log.warning("Cannot evaluate %s: %s", folder.name, exc)
            return body
        writer = ExperimentWriter(folder, info)
        body["state"] = "evaluating"
        marks.save(folder, body)
        while todo := marks.remaining(body):
            if stop is not None and stop.is_set():
                return body  # resumed by the next server
            _work(folder, body, todo, writer, info.framework, memory_mb=memory_mb, nice=nice,
                  step_timeout_s=step_timeout_s, stop=stop, progress=progress)
        body["state"] = "done"
        marks.save(folder, body)
        if progress is not None:
            progress(body)
        return body


def _start(folder: Path, body: dict[str, Any], todo: list[int], framework: str, *,
           memory_mb: float, nice: int, progress: Progress | None) -> _Run | None:
    try:
        return _Run(folder, body, todo, memory_mb, nice=nice, framework=framework)
    except WorkerDied as exc:
        # No worker at all (its template cannot start): say so on every step, not retry.
        for step in todo:
            body["failed"][str(step)] = f"the evaluation worker did not start: {exc}"
        marks.save(folder, body)
        if progress is not None:
            progress(body)
        return None


def _work(folder: Path, body: dict[str, Any], todo: list[int], writer: ExperimentWriter,
          framework: str, *, memory_mb: float, nice: int, step_timeout_s: float,
          stop: threading.Event | None, progress: Progress | None) -> None:
    run = _start(folder, body, todo, framework, memory_mb=memory_mb, nice=nice,
                 progress=progress)
    if run is None:
        return
    current: int | None = None
    last = time.monotonic()
    try:
        while True:
            ended = run.process.poll() is not None
            for line in run.lines():
                last = time.monotonic()
                current = _settle(folder, body, line, writer, progress)
            if ended:
                break
            if stop is not None and stop.is_set():
                return
            if time.monotonic() - last > step_timeout_s:
                run.process.kill()
                if current is not None:
                    body["failed"][str(current)] = (f"evaluation took longer than "
                                                    f"{step_timeout_s:.0f} s; stopped")
                    current = None
                break
            time.sleep(0.2)
        how = how_it_ended(run.process.poll())
        if str(current) not in body["scores"] and current is not None:
            body["failed"][str(current)] = (f"the worker evaluating it {how}"
                                            " (the checkpoint crashes or exhausts memory)")
        elif current is None and marks.remaining(body) == todo:
            # The worker died before starting any step (a broken install, say): mark them all
            # rather than retry for ever.
            for step in todo:
                body["failed"][str(step)] = (f"the evaluation worker {how}"
                                             f" before scoring it; see {run.out.parent}")
        marks.save(folder, body)
        if progress is not None:
            progress(body)
    finally:
        run.process.kill()


def _settle(folder: Path, body: dict[str, Any], line: dict[str, Any], writer: ExperimentWriter,
            progress: Progress | None) -> int | None:
    """Apply one worker line; the step now in progress (``None`` once it is settled)."""
    step = int(line["step"])
    if line.get("started"):
        return step
    if "score" in line:
        writer.log(step, evaluation_score=float(line["score"]))
        body["scores"][str(step)] = float(line["score"])
    else:
        body["failed"][str(step)] = str(line.get("error") or "failed")
    marks.save(folder, body)
    if progress is not None:
        progress(body)
    return None


class BackgroundEvaluator:
    """The server's evaluator: one thread, one worker at a time, over every experiment with
    an unfinished evaluation plan; :meth:`poke` after an import to start at once."""

    def __init__(self, root: Path, *, memory_mb: float = MEMORY_MB,
                 step_timeout_s: float = STEP_TIMEOUT_S,
                 interval_s: float = SCAN_INTERVAL_S, nice: int = 10) -> None:
        self.root = Path(root)
        self.nice = nice
        self.memory_mb = memory_mb
        self.step_timeout_s = step_timeout_s
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; it scans at once (resuming what a stopped server left)."""
        self._thread = threading.Thread(target=self._loop, name="awb-evaluator", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Look for work now rather than at the next scan."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and its worker; unfinished plans stay for the next server."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> list[Path]:
        """Experiment folders whose evaluation is not done."""
        folders = []
        with contextlib.suppress(OSError), os.scandir(self.root / "experiments") as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                body = marks.load(entry.path)
                if body is not None and body["state"] != "done":
                    folders.append(Path(entry.path))
        return sorted(folders)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            for folder in self.pending():
                if self._stop.is_set():
                    return
                try:
                    evaluate_experiment(folder, memory_mb=self.memory_mb, nice=self.nice,
                                        step_timeout_s=self.step_timeout_s, stop=self._stop)
                except Exception:
                    log.exception("Evaluating %s failed", folder.name)
            self._wake.wait(self.interval_s)


__all__ = ["EPISODES", "SEED", "BackgroundEvaluator", "describe", "evaluate_experiment",
           "plan"]
