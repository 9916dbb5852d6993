"""``agents-workbench import``: the terminal's door to the one import.

``agents-workbench import PATH [PATH...] [--name NAME] [--env ENV] [--env-kwargs JSON]
[--base-model PATH] [--scores CSV] [--link|--copy] [--root DIR]``

Runs :func:`server_extension.serving.importing.orchestrator.import_experiment` in this
process (the files are loaded in its worker process, as in the server). A server running on
the same ``--root`` lists the experiment at once: the workspace is just folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from workbench_core.store import ROOT_ENV, default_root


def add_parser(sub: Any) -> None:
    """Register ``import`` on the ``agents-workbench`` subcommand parser ``sub``."""
    parser = sub.add_parser(
        "import", help="import checkpoints you trained elsewhere as an experiment",
        description="Detect what the files are (AgileRL checkpoints from save_checkpoint or "
                    "the training helpers, Hugging Face save_pretrained folders, PEFT LoRA "
                    "adapters), load and probe them in a worker process, and write them as "
                    "one experiment of the workspace. Nothing is written unless every check "
                    "passes.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a checkpoint file, a folder of checkpoints, a glob (quote it), or "
                             "a model folder; several files are steps in the order given "
                             "unless their names hold steps")
    parser.add_argument("--name", help="experiment name (default: from the file names)")
    parser.add_argument("--env", help="the environment it was trained on: a Gymnasium id "
                                      "(CartPole-v1) or a PettingZoo module "
                                      "(mpe2.simple_spread_v3, pettingzoo.classic.tictactoe_v3)")
    parser.add_argument("--env-kwargs", default="{}", metavar="JSON",
                        help='the environment\'s arguments as JSON, e.g. \'{"N": 3}\'')
    parser.add_argument("--base-model", metavar="PATH",
                        help="the base model folder of a LoRA adapter")
    parser.add_argument("--scores", metavar="CSV",
                        help="a CSV with a step column and an evaluation score column")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="a framework-specific setting (see the README), repeatable")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--link", dest="link", action="store_true", default=None,
                       help="leave the files where they are and link to them")
    group.add_argument("--copy", dest="link", action="store_false",
                       help="copy the files into the workspace (default for files under "
                            "512 MiB)")
    parser.add_argument("--root", default=str(default_root()),
                        help=f"workspace folder (default: ${ROOT_ENV}, else {default_root()})")
    parser.add_argument("--json", action="store_true", help="print the experiment as JSON")
    parser.set_defaults(func=cmd_import)


def _options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option {pair!r}: write KEY=VALUE (VALUE as JSON or text).")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def cmd_import(args: argparse.Namespace) -> int:
    """Import ``args.paths``; print what was imported, or why not (exit status 2)."""
    from server_extension.serving.importing.orchestrator import ImportRefused, import_experiment
    from server_extension.serving.runtimes.detection import ImportHints

    try:
        env_kwargs = json.loads(args.env_kwargs)
    except ValueError as exc:
        print(f"import refused (--env-kwargs): not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(env_kwargs, dict):
        print("import refused (--env-kwargs): give a JSON object like '{\"N\": 3}'.",
              file=sys.stderr)
        return 2
    hints = ImportHints(name=args.name, env=args.env, env_kwargs=env_kwargs,
                        base_model=args.base_model, scores=args.scores, link=args.link,
                        options=_options(args.option))
    root = Path(args.root).expanduser()
    print(f"Importing into {root} (checking the files in a worker process)...", file=sys.stderr)
    try:
        experiment = import_experiment(root, args.paths, hints)
    except ImportRefused as exc:
        flag = {"path": "PATH", "env": "--env", "name": "--name", "scores": "--scores",
                "base_model": "--base-model"}.get(exc.field, exc.field)
        print(f"import refused ({flag}): {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(experiment, indent=2))
        return 0
    done = experiment["import"]
    steps = [c["step"] for c in experiment["checkpoints"]]
    print(f"Imported {experiment['name']!r}: {experiment['framework']} "
          f"{experiment['algorithm']}{' (multi-agent)' if experiment['multi_agent'] else ''}, "
          f"{len(steps)} checkpoint(s) at steps {steps}, "
          f"{'linked' if done['link'] else 'copied'}; scores: {done['scores']}.")
    for warning in done["warnings"]:
        print(f"  note: {warning}")
    print(f"  in {root / 'experiments' / experiment['name']} ({done['seconds']['total']:.1f} s). "
          "Create an agent from it in the panel's New Agent, or POST agents/api/agents.")
    return 0


__all__ = ["add_parser", "cmd_import"]
