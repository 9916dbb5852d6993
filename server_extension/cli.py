"""The ``agents-workbench`` command: build the demo workspace, run the workbench.

``agents-workbench demo [--root DIR] [--quick]``
    Train the demo agents with AgileRL (a few minutes on 2 CPU cores) into DIR.
``agents-workbench run [--root DIR] [--port N] [--no-browser]``
    Seed the demo workspace if DIR has no experiments, then start JupyterLab with the
    workbench and print its URL.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .store import ROOT_ENV, ExperimentStore, default_root

REPO = Path(__file__).resolve().parent.parent


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo experiments into ``--root``."""
    from .demo import build_demo

    root = Path(args.root).expanduser()
    started = time.perf_counter()
    _progress(f"Training demo agents into {root} (quick={args.quick})")
    names = build_demo(root, quick=args.quick, progress=_progress)
    _progress(f"Demo workspace ready in {time.perf_counter() - started:.0f} s: {', '.join(names)}")
    return 0


def _notebooks_dir(root: Path) -> Path:
    """Copy the shipped notebooks into the workspace once, so users edit their own copies."""
    target = root / "notebooks"
    source = REPO / "notebooks"
    if source.is_dir() and not target.exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    target.mkdir(parents=True, exist_ok=True)
    return target


def cmd_run(args: argparse.Namespace) -> int:
    """Seed the demo workspace when empty, then run JupyterLab over it."""
    root = Path(args.root).expanduser()
    if not ExperimentStore(root).list():
        _progress(f"{root} has no experiments yet: training the demo workspace first")
        cmd_demo(argparse.Namespace(root=str(root), quick=False))
    notebooks = _notebooks_dir(root)
    env = {**os.environ, ROOT_ENV: str(root)}
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
    return subprocess.call(command, env=env)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``agents-workbench``."""
    parser = argparse.ArgumentParser(prog="agents-workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the demo agents into a workspace")
    demo.add_argument("--root", default=str(default_root()), help="workspace folder")
    demo.add_argument("--quick", action="store_true",
                      help="seconds-long training for tests (agents will not be good)")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="seed the demo workspace if empty and start JupyterLab")
    run.add_argument("--root", default=str(default_root()), help="workspace folder")
    run.add_argument("--port", type=int, default=8888)
    run.add_argument("--ip", default="127.0.0.1")
    run.add_argument("--no-browser", action="store_true")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agents-workbench`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
