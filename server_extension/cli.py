"""The ``agents-workbench`` command: build the demo workspace, run the workbench.

``agents-workbench demo [--root DIR] [--quick]``
    Train the demo agents with AgileRL (a few minutes on 2 CPU cores) into DIR.
``agents-workbench run [--root DIR] [--port N] [--no-browser]``
    Seed the demo workspace if DIR has no experiments, then start JupyterLab with the
    workbench and print its URL.
``agents-workbench app [--root DIR] [--port N] [--token T]``
    Publish the Agents panel (notebooks/Agents.ipynb) as a Voila app over DIR, with the
    workbench's API in the same process, and print its URL (with its token).
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
APP_TOKEN_ENV = "AGENTS_WORKBENCH_APP_TOKEN"  # noqa: S105 - a variable name, not a secret


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
    return target


def cmd_app(args: argparse.Namespace) -> int:
    """Publish the Agents panel with Voila over ``--root``, the workbench API included."""
    import secrets

    from .voila_app import main as voila_main

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
    host = "127.0.0.1" if args.ip in ("", "0.0.0.0", "localhost") else args.ip  # noqa: S104
    base = args.base_url if args.base_url.endswith("/") else args.base_url + "/"
    _progress(f"Publishing {notebook.name} over {root}")
    _progress(f"Open http://{host}:{args.port}{base}?token={token}")
    voila_main(argv)
    return 0


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

    app = sub.add_parser("app", help="publish the Agents panel as a Voila app over a workspace")
    app.add_argument("--root", default=str(default_root()), help="workspace folder")
    app.add_argument("--port", type=int, default=8866)
    app.add_argument("--ip", default="127.0.0.1")
    app.add_argument("--base-url", default="/", help="URL prefix, e.g. behind a proxy")
    app.add_argument("--token", default=None,
                     help=f"access token (default: ${APP_TOKEN_ENV}, else a random one)")
    app.add_argument("--preheat", action="store_true",
                     help="keep a kernel warm; it waits for a visitor before calling the API")
    app.add_argument("--no-browser", action="store_true")
    app.add_argument("--debug", action="store_true",
                     help="debug logging, API calls included (and tracebacks on the page)")
    app.set_defaults(func=cmd_app)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agents-workbench`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
