"""``agents-workbench import``: the terminal's door to the one import.

``agents-workbench import PATH [PATH...] [--name NAME] [--env ENV] [--env-kwargs JSON]
[--base-model PATH] [--scores CSV_OR_LOGDIR] [--scores-tag TAG] [--evaluate EPISODES]
[--wait] [--link|--copy] [--root DIR]``

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

from workbench_core.discovery import default_workspace
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
    parser.add_argument("--scores", metavar="CSV_OR_LOGDIR",
                        help="a CSV with a step column and an evaluation score column, or a "
                             "TensorBoard log folder (one run's event files)")
    parser.add_argument("--scores-tag", metavar="TAG",
                        help="the TensorBoard tag (or CSV column) holding the evaluation score "
                             "(default: eval/mean_reward, then rollout/ep_rew_mean, ...)")
    parser.add_argument("--evaluate", type=int, metavar="EPISODES", default=None,
                        help="without --scores and with --env, the workbench scores each "
                             "checkpoint over this many seeded episodes (default 10; 0: do "
                             "not evaluate, Best is the final checkpoint). A workbench server "
                             "on this workspace does it in the background")
    parser.add_argument("--wait", action="store_true",
                        help="evaluate here and now (worker processes) instead of leaving it "
                             "to the server, printing each score")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="a framework-specific setting (see the README), repeatable")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--link", dest="link", action="store_true", default=None,
                       help="leave the files where they are and link to them")
    group.add_argument("--copy", dest="link", action="store_false",
                       help="copy the files into the workspace (default for files under "
                            "512 MiB)")
    parser.add_argument("--root", default=None,
                        help=f"workspace folder (default: ${ROOT_ENV}, else the workspace of "
                             f"the running workbench server, else {default_root()})")
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
                        options=_options(args.option), evaluate=args.evaluate,
                        scores_tag=args.scores_tag)
    if args.root is not None:
        root, why = Path(args.root).expanduser(), "--root"
    else:
        root, why = default_workspace()
    print(f"Importing into {root} ({why}); checking the files in a worker process...",
          file=sys.stderr)
    try:
        experiment = import_experiment(root, args.paths, hints)
    except ImportRefused as exc:
        flag = {"path": "PATH", "env": "--env", "name": "--name", "scores": "--scores",
                "base_model": "--base-model", "evaluate": "--evaluate"}.get(exc.field,
                                                                          exc.field)
        print(f"import refused ({flag}): {exc}", file=sys.stderr)
        return 2
    if args.wait and experiment.get("evaluation"):
        experiment["evaluation"] = _evaluate_now(root, experiment["name"])
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
    plan = experiment.get("evaluation")
    if plan and plan.get("state") != "done":
        print("  A workbench server on this workspace scores the checkpoints in the "
              "background (the panel shows it evaluating); --wait does it now.")
    return 0


def _evaluate_now(root: Path, name: str) -> dict[str, Any] | None:
    """Score the new experiment's checkpoints in this process's workers, printing each."""
    from server_extension.serving.importing.evaluation import evaluate_experiment
    from workbench_core import evaluation_marks

    folder = root / "experiments" / name
    shown: set[str] = set()

    def progress(body: dict[str, Any]) -> None:
        for step, value in sorted((body.get("scores") or {}).items(), key=lambda i: int(i[0])):
            if step not in shown:
                shown.add(step)
                print(f"  step {step}: evaluation score {value:.3f}", file=sys.stderr)
        for step, why in (body.get("failed") or {}).items():
            if step not in shown:
                shown.add(step)
                print(f"  step {step}: evaluation failed: {why}", file=sys.stderr)

    print(f"Evaluating {name} over seeded episodes...", file=sys.stderr)
    if evaluate_experiment(folder, progress=progress) is None:
        print("  (a server is evaluating it already)", file=sys.stderr)
    return evaluation_marks.read(folder)


__all__ = ["add_parser", "cmd_import"]
