"""What the main job's workspace holds, and how it is trained: first CartPole, then the rest.

The demo is a list of :class:`DemoJob`; each trains one or more experiments in its own
process (``python -m server_extension.demos.plan JOB --root DIR``), so two jobs use two cores
and a job that crashes costs only its own experiments. ``full`` is every Classic RL family
the Arena catalogue offers (DQN, Rainbow DQN, PPO, Recurrent PPO, DDPG, TD3, MADDPG, MATD3,
IPPO) plus the Advanced Training set; ``minimal`` is CartPole with DQN alone. Example::

    jobs = pending(root, "full")              # what is not trained yet (a second run: none)
    runner = BackgroundTraining(root, jobs, workers=2, say=print)
    runner.start()                            # marks them queued, returns at once
    runner.wait()

While a job runs, its experiments carry a mark (:mod:`workbench_core.training_marks`) that
the experiments listing reports under ``training``, so the panel can show what is still on
its way; the job's own process removes the mark once it has trained and scored everything
(so a job that finished stays finished whatever happens to the run that started it). A job
is done when each of its experiments exists, has checkpoints and has no mark; anything else
(never started, failed, cut off by Ctrl-C) is trained again by the next run.

Threads: :class:`BackgroundTraining` runs one thread per worker, each starting job processes
one after another and forwarding their output, line by line, through ``say``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from server_extension.demos.data import CHAT_DATASET_NAME, IRIS_DATASET_NAME
from workbench_core import training_marks
from workbench_core.store import ExperimentStore, ExperimentWriter, StoreError

Mode = Literal["minimal", "full"]
MODES: tuple[Mode, ...] = ("minimal", "full")
ProgressFn = Callable[[str], None]
RUN_PID_ENV = "AGENTS_WORKBENCH_DEMO_RUN_PID"  # the process that started a job (main())


@dataclass(frozen=True)
class Placeholder:
    """What the panel shows for an experiment before its trainer has written it."""

    name: str
    project_type: Literal["classic", "advanced"]
    algorithm: str
    framework: str
    environment: str | None = None
    dataset: str | None = None
    multi_agent: bool = False
    recurrent: bool = False


@dataclass(frozen=True)
class DemoJob:
    """One training process: the experiments it writes, in the order it writes them."""

    name: str
    experiments: tuple[Placeholder, ...]
    minimal: bool = False

    @property
    def names(self) -> list[str]:
        """The experiment names this job writes."""
        return [p.name for p in self.experiments]


def _classic(name: str, algorithm: str, environment: str, *, multi_agent: bool = False,
             recurrent: bool = False) -> Placeholder:
    return Placeholder(name, "classic", algorithm, "agilerl", environment=environment,
                       multi_agent=multi_agent, recurrent=recurrent)


# Longest first, so the last job to finish is a short one (a greedy schedule over 2 workers).
# cartpole-dqn comes first and alone: the server starts as soon as it is trained.
JOBS: tuple[DemoJob, ...] = (
    DemoJob("cartpole-dqn", (_classic("cartpole-dqn", "DQN", "CartPole-v1"),), minimal=True),
    DemoJob("tiny-chat", (
        Placeholder("tiny-chat-sft", "advanced", "SFT", "transformers",
                    dataset=CHAT_DATASET_NAME),
        Placeholder("tiny-chat-lora", "advanced", "SFT", "transformers",
                    dataset=CHAT_DATASET_NAME))),
    DemoJob("spread-maddpg", (_classic("spread-maddpg", "MADDPG", "simple_spread_v3",
                                       multi_agent=True),)),
    DemoJob("cartpole-memory-ppo", (_classic("cartpole-memory-ppo", "PPO", "CartPole-v1",
                                             recurrent=True),)),
    DemoJob("pendulum-td3", (_classic("pendulum-td3", "TD3", "Pendulum-v1"),)),
    DemoJob("speaker-listener-matd3", (_classic(
        "speaker-listener-matd3", "MATD3", "simple_speaker_listener_v4", multi_agent=True),)),
    DemoJob("cartpole-rainbow", (_classic("cartpole-rainbow", "RainbowDQN", "CartPole-v1"),)),
    DemoJob("cartpole-ppo", (_classic("cartpole-ppo", "PPO", "CartPole-v1"),)),
    DemoJob("tictactoe-ippo", (_classic("tictactoe-ippo", "IPPO", "tictactoe_v3",
                                        multi_agent=True),)),
    DemoJob("pendulum-ddpg", (_classic("pendulum-ddpg", "DDPG", "Pendulum-v1"),)),
    DemoJob("iris", (
        Placeholder("iris-classifier", "advanced", "MLPClassifier", "torch",
                    dataset=IRIS_DATASET_NAME),
        Placeholder("iris-latent-ppo", "advanced", "LatentPPO", "latent_ppo",
                    dataset=IRIS_DATASET_NAME))),
)
FIRST = "cartpole-dqn"


def jobs_for(mode: Mode) -> list[DemoJob]:
    """The jobs of a mode, in training order."""
    if mode not in MODES:
        raise ValueError(f"Unknown demo mode {mode!r}; use one of {', '.join(MODES)}.")
    return [job for job in JOBS if mode == "full" or job.minimal]


def job_done(root: Path, job: DemoJob) -> bool:
    """Whether every experiment of ``job`` is trained: present, with checkpoints, unmarked."""
    store = ExperimentStore(root)
    for name in job.names:
        if training_marks.read(root, name) is not None:
            return False
        try:
            if not store.get(name).checkpoints():
                return False
        except StoreError:
            return False
    return True


def finish_job(root: Path, name: str) -> None:
    """Record job ``name`` as trained: its experiments' marks go (see :func:`job_done`)."""
    job = next(job for job in JOBS if job.name == name)
    for experiment in job.names:
        training_marks.clear(root, experiment)


def pending(root: Path, mode: Mode) -> list[DemoJob]:
    """The jobs of ``mode`` not done in ``root`` (none on a second run)."""
    return [job for job in jobs_for(mode) if not job_done(Path(root), job)]


def _demo_record(root: Path) -> Path:
    return Path(root).expanduser() / "experiments" / training_marks.MARKS_DIR / "demo-seeded"


def remember_demo(root: Path) -> None:
    """Note that the demo seeds this workspace, so later runs may finish what it lacks."""
    record = _demo_record(root)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.touch()


def is_demo_workspace(root: Path) -> bool:
    """Whether the demo seeded this workspace (else its experiments are the user's own)."""
    return _demo_record(root).exists()


def queue_jobs(root: Path, jobs: Sequence[DemoJob], owner: int | None = None) -> None:
    """Mark the jobs' experiments queued; write a placeholder for any not on disk yet."""
    store = ExperimentStore(root)
    for job in jobs:
        for item in job.experiments:
            try:
                store.get(item.name)
            except StoreError:
                ExperimentWriter.create(
                    root, item.name, project_type=item.project_type, algorithm=item.algorithm,
                    framework=item.framework, environment=item.environment,
                    dataset=item.dataset, multi_agent=item.multi_agent,
                    recurrent=item.recurrent,
                    extra={"description": "Queued: the demo is training it in the background."})
            training_marks.mark(root, item.name, "queued", owner=owner)


# -- training one job (in its own process) ----------------------------------------------------


def train_job(root: Path, name: str, say: ProgressFn, *, quick: bool = False) -> list[str]:
    """Train job ``name`` into ``root`` (replacing its experiments); return their names.

    ``quick``: the seconds-long test versions of the same runs (scores meaningless).
    """
    from server_extension.demos import classic as demo
    from server_extension.demos import classic_multi_recurrent as demo_classic

    root = Path(root).expanduser()
    runs = {run.name: run for run in (demo.QUICK_RUNS if quick
                                      else demo.FULL_RUNS + demo.MORE_RUNS)}
    started = time.perf_counter()
    if name in runs:
        with demo.isolated_torch():
            demo.train_run(root, runs[name], quick=quick, say=say)
            report = demo.verify_best(root, name)
        names = [name]
        say(f"{name}: best checkpoint (step {report['step']}) scores "
            f"{report['fresh_seeds_mean']:.1f} over {demo.VERIFY_EPISODES} fresh episodes")
    elif name in demo_classic.FULL_PLANS:
        names = demo_classic.build_classic_demo(root, quick=quick, progress=say, only=[name])
    elif name == "tiny-chat":
        from server_extension.demos.llm import build_llm_demo

        names = build_llm_demo(root, quick=quick, progress=say)
    elif name == "iris":
        from server_extension.demos.latent import build_latent_demo
        from server_extension.demos.supervised import build_supervised_demo

        names = build_supervised_demo(root, quick=quick, progress=say)
        names += [n for n in build_latent_demo(root, quick=quick, progress=say)
                  if n not in names]
    else:
        known = ", ".join(job.name for job in JOBS)
        raise ValueError(f"No demo job named {name!r}; known: {known}.")
    seconds = round(time.perf_counter() - started, 1)
    _record_seconds(root, names, seconds)
    return names


def _record_seconds(root: Path, names: list[str], seconds: float) -> None:
    from workbench_core.tracking import resume_experiment

    for name in names:
        writer = resume_experiment(name, root=root)
        writer.update_info(extra={**writer.info.extra, "demo_job_seconds": seconds})


# -- running jobs in child processes ----------------------------------------------------------


class BackgroundTraining:
    """Trains jobs in child processes, ``workers`` at a time, marking their experiments.

    Output of each child reaches ``say`` prefixed with the job's name; a summary line says
    when each job is done and how many remain. :meth:`stop` ends the children it started.
    """

    def __init__(self, root: Path, jobs: Sequence[DemoJob], *, workers: int = 2,
                 say: ProgressFn = print, quick: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.quick = quick
        self.jobs = list(jobs)
        self.workers = max(1, workers)
        self.say = say
        self.failed: list[str] = []
        self.seconds: dict[str, float] = {}
        self.started_at = 0.0
        self.finished_at: float | None = None
        self._todo: queue.Queue[DemoJob] = queue.Queue()
        self._children: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._active = 0

    def start(self) -> None:
        """Mark every job queued and start the workers; returns at once."""
        self.started_at = time.perf_counter()
        queue_jobs(self.root, self.jobs)
        for job in self.jobs:
            self._todo.put(job)
        self._active = min(self.workers, len(self.jobs))
        for i in range(self._active):
            thread = threading.Thread(target=self._work, name=f"demo-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.jobs:
            self.finished_at = self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every job has ended; ``True`` when all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def job_ended(self, name: str) -> bool:
        """Whether job ``name`` has finished (trained or failed)."""
        return name in self.seconds

    def stop(self) -> None:
        """End the running children (their experiments stay marked, so they retrain later)."""
        with self._lock:
            self._stopping = True
            children = list(self._children)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)  # the job and whatever it started
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()

    def _work(self) -> None:
        while not self._stopping:
            try:
                job = self._todo.get_nowait()
            except queue.Empty:
                break
            self._run(job)
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self.finished_at = time.perf_counter()
                if not self._stopping:
                    self._summary()

    def _run(self, job: DemoJob) -> None:
        for name in job.names:
            training_marks.mark(self.root, name, "training")
        command = [sys.executable, "-m", "server_extension.demos.plan", job.name,
                   "--root", str(self.root), *(["--quick"] if self.quick else [])]
        # One torch thread per child: two children share the two cores.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               RUN_PID_ENV: str(os.getpid())}
        begun = time.perf_counter()
        with self._lock:
            if self._stopping:
                return
            # A process group of its own: Ctrl-C in the terminal reaches the run alone, which
            # stops its jobs (stop()), so no job prints a KeyboardInterrupt traceback.
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, process_group=0)
            self._children.add(child)
        assert child.stdout is not None
        tail: list[str] = []
        with child.stdout:
            for raw in child.stdout:
                line = raw.rstrip()
                tail = [*tail[-4:], line]
                self.say(f"[{job.name}] {line}")
        code = child.wait()
        if code != 0 and job_done(self.root, job):
            code = 0  # it finished (and recorded so) before a signal cut its exit short
        with self._lock:
            self._children.discard(child)
            if self._stopping:
                return
        self.seconds[job.name] = round(time.perf_counter() - begun, 1)
        if code != 0:
            self.failed.append(job.name)
            reason = next((t for t in reversed(tail) if t.strip()), f"exit code {code}")
            for name in job.names:
                training_marks.mark(self.root, name, "failed", error=reason)
        done = sum(1 for j in self.jobs if j.name in self.seconds)
        verdict = "trained" if code == 0 else f"FAILED ({code})"
        self.say(f"{job.name} {verdict} in {self.seconds[job.name]:.0f} s; "
                 f"{done}/{len(self.jobs)} background jobs done, "
                 f"{time.perf_counter() - self.started_at:.0f} s since they started")

    def _summary(self) -> None:
        elapsed = time.perf_counter() - self.started_at
        if self.failed:
            self.say(f"Background training ended after {elapsed:.0f} s; failed: "
                     f"{', '.join(self.failed)} (the next run trains them again)")
        else:
            self.say(f"Every demo experiment is trained ({elapsed:.0f} s in the background)")


def main(argv: Sequence[str] | None = None) -> int:
    """Train one job: ``python -m server_extension.demos.plan JOB --root DIR``."""
    run = int(os.environ.get(RUN_PID_ENV) or 0)
    if run:
        # The run that started this job ends it with SIGTERM when it stops; a run that dies
        # any other way (SIGKILL, a closed terminal) takes the job with it.
        from server_extension.serving.worker.tree import parent_death_signal

        parent_death_signal(signal.SIGTERM, run)
    parser = argparse.ArgumentParser(prog="python -m server_extension.demos.plan")
    parser.add_argument("job", choices=[job.name for job in JOBS])
    parser.add_argument("--root", required=True)
    parser.add_argument("--quick", action="store_true", help="the seconds-long test runs")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, flush=True)

    names = train_job(Path(args.root), args.job, say, quick=args.quick)
    # Done is recorded here, by the job itself, before it exits: the run that started it may
    # be gone by now (Ctrl-C, SIGTERM, a crash), and a finished job must never train again.
    finish_job(Path(args.root), args.job)
    say(f"wrote {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
