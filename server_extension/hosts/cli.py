"""The ``agents-workbench`` command: build the demo workspace, run the workbench.

``agents-workbench demo [--root DIR] [--demo minimal|full] [--workers N] [--quick]``
    Train the demo experiments into DIR (replacing them): ``full`` (the default) is every
    Classic RL family plus the Advanced Training set, ``minimal`` CartPole with DQN alone;
    ``--quick`` is the seconds-long set the tests use.
``agents-workbench run [--root DIR] [--demo minimal|full] [--port N] [--ip IP] [--no-browser]``
    Train what the demo still lacks in DIR: CartPole with DQN first, then JupyterLab starts
    (its URL printed) while the other experiments train in the background, two at a time,
    with their progress in this terminal and in the panel. A second run trains nothing.
``agents-workbench import PATH... [--env ENV] [--name NAME] [--root DIR]``
    Import checkpoints trained elsewhere as an experiment (see the README's "Bring your own
    model"); ``run --demo none`` then starts on them without training the demo.
``agents-workbench app [--root DIR] [--port N] [--token T]``
    Publish the Agents panel (notebooks/Agents.ipynb) as a Voila app over DIR, with the
    workbench's API in the same process, and print its URL (with its token).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server_extension.demos.plan import MODES
from workbench_core.store import ROOT_ENV, ExperimentStore, StoreError, default_root

REPO = Path(__file__).resolve().parents[2]
APP_TOKEN_ENV = "AGENTS_WORKBENCH_APP_TOKEN"  # noqa: S105 - a variable name, not a secret


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo experiments into ``--root``."""
    root = Path(args.root).expanduser()
    started = time.perf_counter()
    if args.quick:
        from server_extension.demos.classic import build_demo

        _progress(f"Training the quick (test) demo into {root}")
        names = build_demo(root, quick=True, progress=_progress)
    else:
        from server_extension.demos.plan import BackgroundTraining, jobs_for

        jobs = jobs_for(args.demo)
        _progress(f"Training the {args.demo} demo into {root}: {len(jobs)} jobs, "
                  f"{args.workers} at a time")
        runner = BackgroundTraining(root, jobs, workers=args.workers, say=_progress)
        runner.start()
        try:
            runner.wait()
        finally:
            runner.stop()
        if runner.failed:
            return 1
        names = [name for job in jobs for name in job.names]
    _progress(f"Demo workspace ready in {time.perf_counter() - started:.0f} s: {', '.join(names)}")
    return 0


def _seed_workspace(root: Path, mode: str, workers: int, quick: bool = False) -> Any:
    """Start training what the demo lacks; return once CartPole's DQN has a checkpoint.

    Every pending job goes to the background runner (``workers`` at a time, CartPole's DQN
    first), so the server can start as soon as there is one experiment to deploy; the rest
    keep training meanwhile. Returns the runner (``None`` when nothing was left to train).
    A workspace that already holds experiments the demo did not seed (the user's own) is
    left alone.
    """
    from server_extension.demos.plan import (
        FIRST,
        BackgroundTraining,
        is_demo_workspace,
        pending,
        remember_demo,
    )

    if ExperimentStore(root).list() and not is_demo_workspace(root):
        return None
    todo = pending(root, mode)  # type: ignore[arg-type]
    if not todo:
        return None
    remember_demo(root)
    started = time.perf_counter()
    _progress(f"Training {len(todo)} demo jobs, {workers} at a time: "
              f"{', '.join(job.name for job in todo)}")
    background = BackgroundTraining(root, todo, workers=workers, say=_progress, quick=quick)
    background.start()
    try:
        if any(job.name == FIRST for job in todo):
            while not background.job_ended(FIRST) and not _has_checkpoint(root, FIRST):
                time.sleep(0.5)
            _progress(f"{FIRST} has a checkpoint ({time.perf_counter() - started:.0f} s): "
                      "starting the server; the panel shows what is still training")
    except BaseException:  # Ctrl-C or SIGTERM before Lab started: no trainer left behind
        background.stop()
        raise
    if background.wait(0):
        return None
    return background


def _has_checkpoint(root: Path, name: str) -> bool:
    try:
        return bool(ExperimentStore(root).get(name).checkpoints())
    except StoreError:  # the trainer is replacing its placeholder folder right now
        return False


def _notebooks_dir(root: Path) -> Path:
    """Copy the shipped notebooks into the workspace once, so users edit their own copies."""
    target = root / "notebooks"
    source = REPO / "notebooks"
    if source.is_dir() and not target.exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        trust_notebooks(sorted(target.rglob("*.ipynb")))
    target.mkdir(parents=True, exist_ok=True)
    return target


def provision(root: Path) -> Path:
    """Give workspace ``root`` its own notebooks (the Agents notebook at least), copied and
    trusted once; later starts keep the user's edits. Returns the notebooks folder."""
    root.mkdir(parents=True, exist_ok=True)
    notebooks = _notebooks_dir(root)
    if not (notebooks / "Agents.ipynb").exists():
        _app_notebook(root)  # an installed wheel has no notebooks/: write the minimal one
    return notebooks


def trust_notebooks(paths: Sequence[Path]) -> None:
    """Sign notebooks the workbench wrote, so Jupyter neither warns nor hides their outputs.

    Jupyter logs "Notebook ... is not trusted" for every unsigned notebook it opens. These
    are the project's own notebooks, just copied or written; signing them records them in
    the user's signature database (the one the server reads, in the Jupyter data folder).
    A notebook that cannot be read or a database that cannot be written is left unsigned:
    Jupyter then only warns, as before.
    """
    import nbformat
    from nbformat.sign import NotebookNotary

    notary = NotebookNotary()
    for path in paths:
        try:
            notebook = nbformat.read(str(path), as_version=nbformat.NO_CONVERT)
            notary.sign(notebook)
        except Exception as exc:  # noqa: BLE001 - trust is a nicety; the copy is what matters
            _progress(f"Could not mark {path.name} as trusted ({type(exc).__name__}: {exc}); "
                      "Jupyter will log that it is not trusted, which is harmless.")


def cmd_run(args: argparse.Namespace) -> int:
    """Seed the demo workspace when empty, then run JupyterLab over it."""
    root = Path(args.root).expanduser()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM while seeding ends like Ctrl-C (main says so)

    # Lab runs in a process group of its own: Ctrl-C in the terminal reaches this process
    # alone, which stops Lab with SIGTERM. Sent to Lab's group as well, it would also reach
    # the worker templates Lab starts, which print a KeyboardInterrupt traceback mid-import.
    stopping: list[int] = []
    started: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        # SIGTERM or Ctrl-C: Lab shuts down cleanly on SIGTERM (it stops its workers and
        # releases the serving lease); this process waits for it, then stops the demo trainers.
        # A second Ctrl-C stops it at once; a closed terminal (SIGHUP) stops it too.
        if stopping and signum == signal.SIGINT and started:
            started[0].kill()
        stopping.append(signum)
        if started:
            with contextlib.suppress(ProcessLookupError):
                started[0].send_signal(signal.SIGTERM)

    # Ctrl-C and SIGTERM while seeding end it (the trainers are stopped), whatever this
    # process inherited: a script that starts run in the background (`run &`, as CI starts
    # the suite) hands it SIGINT ignored, and a SIGINT then did nothing until Lab ran.
    seeding = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        background = (None if args.demo == "none"
                      else _seed_workspace(root, args.demo, args.workers, quick=args.quick))
    finally:
        for sig, handler in seeding.items():
            signal.signal(sig, handler)
    # From here to the end the handlers forward signals: one arriving while Lab is being
    # started is passed on once it exists (ci18 saw a Lab outlive its run when the handlers
    # came after the start). Blocking the signals instead would block them in Lab as well.
    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    code = 0
    try:
        if not stopping:
            started.append(_start_lab(root, args))
            if stopping:  # a signal came while Lab was starting
                started[0].send_signal(signal.SIGTERM)
            code = started[0].wait()
    finally:
        if started and started[0].poll() is None:  # leaving on an exception: never leave Lab
            started[0].terminate()
            started[0].wait()
        if background is not None:
            background.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        _progress("Stopped JupyterLab and the demo trainers." if started
                  else "Stopped before JupyterLab started; the demo trainers are stopped.")
        return 0
    return code


def _start_lab(root: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Start JupyterLab over ``root`` (in a process group of its own, stdin closed: it never
    reads the terminal)."""
    notebooks = _notebooks_dir(root)
    command = [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={root}",
        f"--AgentsWorkbenchApp.root_dir={root}",
        f"--ServerApp.port={args.port}",
        f"--ServerApp.ip={args.ip}",
    ]
    if (notebooks / "Agents.ipynb").exists():
        command.append("--LabApp.default_url=/lab/tree/notebooks/Agents.ipynb")
    if args.no_browser:
        command.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Containers and CI machines often run as root; Jupyter refuses that unless told.
        command.append("--allow-root")
    _progress("Starting JupyterLab; open the URL it prints below (with its token).")
    return subprocess.Popen(command, env={**os.environ, ROOT_ENV: str(root)}, process_group=0,
                            stdin=subprocess.DEVNULL)


APP_NOTEBOOK_CELLS = (
    ("markdown", "# Deploy trained agents\n\nTurn a trained checkpoint into an HTTP endpoint: "
                 "create an agent from an experiment's checkpoint, **Connect** it, then call "
                 "it with the code under its row."),
    ("code", "from agents_widget import AgentsPanel\n\npanel = AgentsPanel()\npanel"),
)


def _app_notebook(root: Path) -> Path:
    """The notebook the app publishes: the shipped one, or a minimal copy in the workspace."""
    shipped = REPO / "notebooks" / "Agents.ipynb"
    if shipped.exists():
        return shipped
    import nbformat

    # An installed wheel carries no notebooks/ folder: write the two cells it needs.
    target = root / "notebooks" / "Agents.ipynb"
    if not target.exists():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown"
                    else nbformat.v4.new_code_cell(src) for kind, src in APP_NOTEBOOK_CELLS]
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(target))
        trust_notebooks([target])
    return target


def cmd_app(args: argparse.Namespace) -> int:
    """Publish the Agents panel with Voila over ``--root``, the workbench API included."""
    import secrets

    from server_extension.hosts.voila_app import main as voila_main

    root = Path(args.root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    notebook = _app_notebook(root)
    # A token always: it guards the page and the API, and the panel's kernel uses it too.
    token = args.token or os.environ.get(APP_TOKEN_ENV) or secrets.token_urlsafe(24)
    os.environ[ROOT_ENV] = str(root)
    argv = [
        str(notebook),
        f"--port={args.port}",
        f"--Voila.ip={args.ip}",
        f"--token={token}",
        f"--AgentsWorkbenchApp.root_dir={root}",
        f"--Voila.base_url={args.base_url}",
    ]
    if args.no_browser:
        argv.append("--no-browser")
    if args.preheat:
        argv += ["--preheat_kernel=True", "--pool_size=1"]
    if args.debug:
        argv.append("--debug")
    if args.allow_import:
        # Paths confined to the workspace: whoever holds the app's link may import.
        argv.append("--AgentsWorkbenchApp.import_mode=workspace")
    host = "127.0.0.1" if args.ip in ("", "0.0.0.0", "localhost") else args.ip  # noqa: S104
    base = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    _progress(f"Publishing {notebook.name} over {root}")
    _progress(f"Open http://{host}:{args.port}{base}?token={token}")
    voila_main(argv)
    return 0


def _demo_arguments(parser: argparse.ArgumentParser, *, allow_none: bool = False) -> None:
    parser.add_argument("--demo", choices=MODES + (("none",) if allow_none else ()),
                        default="full",
                        help="full: every Classic RL family and the Advanced Training set; "
                             "minimal: CartPole with DQN only"
                             + ("; none: train nothing, start at once on your own models"
                                if allow_none else "") + " (default: full)")
    parser.add_argument("--workers", type=int, default=2,
                        help="demo jobs trained at once (default 2; one core each)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agents-workbench``."""
    parser = argparse.ArgumentParser(prog="agents-workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    root_help = ("workspace folder: experiments, the agent registry and the notebooks live "
                 f"here (default: ${ROOT_ENV}, else {default_root()})")
    demo = sub.add_parser("demo", help="train the demo agents into a workspace",
                          description="Train the demo experiments into a workspace folder, "
                                      "replacing the ones already there.")
    demo.add_argument("--root", default=str(default_root()), help=root_help)
    demo.add_argument("--quick", action="store_true",
                      help="seconds-long training for tests (agents will not be good)")
    _demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run", help="seed the demo workspace if empty and start JupyterLab",
        description="Train what the demo workspace still lacks (CartPole with DQN first), then "
                    "start JupyterLab on it with the Agents notebook open; the rest trains in "
                    "the background. scripts/workbench.sh passes its arguments here.")
    run.add_argument("--root", default=str(default_root()), help=root_help)
    run.add_argument("--port", type=int, default=8888,
                     help="port JupyterLab listens on; the agents' HTTP endpoints use it too "
                          "(default 8888; Jupyter picks the next free one if it is taken)")
    run.add_argument("--ip", default="127.0.0.1",
                     help="address to listen on: 127.0.0.1 (the default) is this machine "
                          "only; 0.0.0.0 lets other machines reach the server and its agents")
    run.add_argument("--no-browser", action="store_true",
                     help="do not open a browser; open the URL printed (with its token) "
                          "yourself, e.g. on a remote machine or in a container")
    run.add_argument("--quick", action="store_true",
                     help="seed with seconds-long test runs (agents will not be good)")
    _demo_arguments(run, allow_none=True)
    run.set_defaults(func=cmd_run)

    app = sub.add_parser(
        "app", help="publish the Agents panel as a Voila app over a workspace",
        description="Publish the Agents panel as a Voila app (no notebook, no code cells) "
                    "with the workbench's API in the same process.")
    app.add_argument("--root", default=str(default_root()), help=root_help)
    app.add_argument("--port", type=int, default=8866,
                     help="port the app and the agents' endpoints listen on (default 8866)")
    app.add_argument("--ip", default="127.0.0.1",
                     help="address to listen on: 127.0.0.1 (the default) is this machine "
                          "only; 0.0.0.0 publishes the app to other machines")
    app.add_argument("--base-url", default="/",
                     help="URL prefix the app is served under, e.g. /agents/ behind a proxy "
                          "(default /)")
    app.add_argument("--token", default=None,
                     help=f"access token visitors need (default: ${APP_TOKEN_ENV}, else a "
                          "random one, printed in the URL)")
    app.add_argument("--preheat", action="store_true",
                     help="keep a kernel warm so the first visitor waits less; it calls the "
                          "API only once a visitor arrives")
    app.add_argument("--no-browser", action="store_true",
                     help="do not open a browser; open the URL printed yourself")
    app.add_argument("--debug", action="store_true",
                     help="debug logging, API calls included (and tracebacks on the page)")
    app.add_argument("--allow-import", action="store_true",
                     help="let the app's users import checkpoints from files under --root "
                          "(off by default: importing runs the file's code, and the app's "
                          "link may be shared)")
    app.set_defaults(func=cmd_app)
    from server_extension.hosts.import_cli import add_parser as add_import

    add_import(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agents-workbench`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C before Lab started (seeding): no traceback
        _progress("Interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
