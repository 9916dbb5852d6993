"""One import for every door: paths -> detected files -> a worker's check -> an experiment.

``import_experiment`` runs in the server (on a thread) or in the CLI's process. It never
loads the user's files itself: framework modules' ``detect`` read names and bytes only, and
everything that unpickles runs in a worker process (:mod:`.worker`) with a memory cap and a
deadline. The experiment is built in ``<root>/.imports/`` and renamed into
``<root>/experiments/`` in one step, so a failed import leaves nothing and no reader sees a
half-written one.

Example::

    import_experiment(root, ["runs/dqn_*.pt"], ImportHints(env="CartPole-v1"))
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server_extension.serving.importing import evaluation
from server_extension.serving.importing.scores import ScoresError, read_scores
from server_extension.serving.runtimes import frameworks
from server_extension.serving.runtimes.detection import Detected, ImportHints
from server_extension.serving.worker.oneshot import ForkedRun, how_it_ended
from server_extension.serving.worker.supervisor import WorkerDied
from workbench_core.store import (
    METRIC_FIELDS,
    ExperimentStore,
    StoreError,
    validate_name,
)

# Files at most this large are copied into the workspace unless the import says link.
COPY_LIMIT_MB = 512.0
WORKER_TIMEOUT_S = 300.0
WORKER_MEMORY_MB = 4096.0
MAX_PATHS = 10_000
STAGING = ".imports"
# What the check runs, in a fork of the framework's warm template (``worker/oneshot.py``).
WORKER_ENTRY = "server_extension.serving.importing.worker:main"


class ImportRefused(ValueError):
    """The import cannot go ahead; ``field`` names what the caller should change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def expand(sources: Sequence[str | Path], *, confine_to: Path | None = None) -> list[Path]:
    """The paths ``sources`` name (files, folders, globs), each checked to exist."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise ImportRefused("path", "path is required: a checkpoint file, a folder of "
                            "checkpoints, a glob, or a model folder.")
    out: list[Path] = []
    for source in sources:
        text = str(source)
        if not text.strip():
            raise ImportRefused("path", "path is empty; give a checkpoint file or folder.")
        base = Path(text).expanduser()
        if confine_to is not None and not base.is_absolute():
            base = confine_to / base
        if glob.has_magic(str(base)):
            matches = sorted(Path(p) for p in glob.glob(str(base)))[:MAX_PATHS]
            if not matches:
                raise ImportRefused("path", f"{text!r} matches no files.")
            out.extend(matches)
        elif not base.exists():
            raise ImportRefused("path", f"{text!r} does not exist (looked for {base}).")
        else:
            out.append(base)
    resolved = [p.resolve() for p in out]
    if confine_to is not None:
        root = confine_to.resolve()
        for path in resolved:
            if path != root and root not in path.parents:
                raise ImportRefused("path", f"{path} is outside the workspace {root}; this "
                                    "server imports only files under it.")
    return resolved


def detect(paths: list[Path]) -> Detected:
    """Ask the framework modules about ``paths``; several paths are merged, in order."""
    found: list[Detected] = []
    for path in paths:
        claim = frameworks.detect(path)
        if claim is None:
            raise ImportRefused("path", _unrecognised(path))
        if not claim.checkpoints:
            raise ImportRefused("path", f"{path} holds no checkpoint the "
                                f"{claim.framework} import understands.")
        found.append(claim)
    kinds = sorted({d.framework for d in found})
    if len(kinds) > 1:
        raise ImportRefused("path", f"the paths hold checkpoints of different frameworks "
                            f"({', '.join(kinds)}); import each separately.")
    checkpoints = [c for d in found for c in d.checkpoints]
    facts: dict[str, Any] = {}
    for claim in found:
        facts.update(claim.facts)
    steps = [s for s, _ in checkpoints]
    if len(set(steps)) != len(steps):
        if len(found) > 1 and all(len(d.checkpoints) == 1 for d in found):
            # Several files with no step in their names: the order given is the order.
            checkpoints = [(i, p) for i, (_s, p) in enumerate(checkpoints)]
            facts["steps_from"] = "order"
        else:
            raise ImportRefused("path", f"two files claim the same step ({sorted(steps)}); "
                                "import one run at a time.")
    return Detected(framework=kinds[0], checkpoints=sorted(checkpoints), facts=facts)


def _unrecognised(path: Path) -> str:
    accepted = ", ".join(frameworks.known_frameworks())
    if path.is_dir():
        what = "no checkpoint file or model folder the workbench recognises"
    elif path.stat().st_size == 0:
        what = "an empty file (an interrupted save?)"
    else:
        what = "not a checkpoint the workbench recognises (truncated, or another format)"
    return (f"{path} holds {what}. Frameworks that can be imported: {accepted}. Point path "
            "at a file saved by agent.save_checkpoint, a folder of them, or a folder from "
            "save_pretrained.")


def default_name(paths: list[Path], detected: Detected) -> str:
    """An experiment name from the files: the first checkpoint file's name without its step
    (AgileRL's ``<prefix>_<member>_<steps>``), else the model folder's name."""
    first = Path(detected.checkpoints[0][1]) if detected.checkpoints else paths[0]
    # A file; a model folder; or a folder of checkpoint-<N> folders.
    stem = (first.stem if first.is_file() else first.name if first == paths[0]
            else paths[0].name)
    stem = re.sub(r"(_\d+_\d+|_?step_?\d+|-checkpoint-\d+)$", "", stem) or stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "imported"
    return cleaned[:100]


def run_worker(request: dict[str, Any], *, timeout_s: float, memory_mb: float,
               log_dir: Path) -> dict[str, Any]:
    """Run the import worker on ``request``, forked from its framework's template; its
    result, or :class:`ImportRefused` saying how it ended (exit, signal, deadline)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=log_dir, prefix="import-") as tmp:
        request_path = Path(tmp) / "request.json"
        result_path = Path(tmp) / "result.json"
        request_path.write_text(json.dumps({**request, "memory_mb": memory_mb}), "utf-8")
        log_path = log_dir / "import-worker.log"
        framework = str(request["detected"]["framework"])
        try:
            run = ForkedRun(framework, WORKER_ENTRY,
                            ["import-worker", str(request_path), str(result_path)], log_path,
                            name="import check")
        except WorkerDied as exc:
            raise ImportRefused("path", f"the worker that loads the checkpoint did not start "
                                f"({exc}); nothing was imported. (Log: {log_path})") from exc
        try:
            code = run.wait(timeout_s)
            if code is None:
                raise ImportRefused("path", f"loading the checkpoint did not finish within "
                                    f"{timeout_s:.0f} s (it hangs, or runs code that does); "
                                    "nothing was imported.")
        finally:
            run.kill()
        if not result_path.exists():
            how = how_it_ended(code)
            memory = (" (past the import's memory limit?)" if code in (-9, -6) else "")
            raise ImportRefused("path", f"the worker loading the checkpoint {how}{memory} "
                                "before it finished: the file runs code when loaded, or is "
                                f"not what it seems. Nothing was imported. (Log: {log_path})")
        result: dict[str, Any] = json.loads(result_path.read_text("utf-8"))
        return result


def _size_mb(paths: list[Path]) -> float:
    total = 0
    for path in paths:
        if path.is_dir():
            for dirpath, _dirs, files in os.walk(path):
                total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        else:
            total += path.stat().st_size
    return total / (1024 * 1024)


def import_experiment(
    root: Path | str,
    sources: Sequence[str | Path] | str | Path,
    hints: ImportHints | None = None,
    *,
    confine_to: Path | None = None,
    timeout_s: float = WORKER_TIMEOUT_S,
    memory_mb: float = WORKER_MEMORY_MB,
    copy_limit_mb: float = COPY_LIMIT_MB,
) -> dict[str, Any]:
    """Import the checkpoints at ``sources`` into ``<root>/experiments/``.

    Returns the experiment as ``GET agents/api/experiments`` lists it, plus ``"import"``
    (what was detected, link or copy, where the scores came from, warnings, timings).
    Raises :class:`ImportRefused` (with the field to change) and writes nothing when any
    check fails.
    """
    started = time.perf_counter()
    hints = hints or ImportHints()
    if hints.evaluate is not None and hints.evaluate < 0:
        raise ImportRefused("evaluate", "evaluate is the number of episodes per checkpoint "
                            "(0: do not evaluate).")
    root = Path(root).expanduser()
    paths = expand(sources if not isinstance(sources, (str, Path)) else [sources],
                   confine_to=confine_to)
    detected = detect(paths)
    name = hints.name or default_name(paths, detected)
    try:
        name = validate_name(name)
    except StoreError as exc:
        raise ImportRefused("name", str(exc)) from exc
    store = ExperimentStore(root)
    if (store.experiments_dir / name).exists():
        raise ImportRefused("name", f"an experiment named {name!r} already exists in "
                            f"{store.experiments_dir}; pass another name.")
    steps = [s for s, _ in detected.checkpoints]
    scores: dict[int, float] = {}
    scores_source = None
    if hints.scores:
        try:
            scores, scores_source = read_scores(Path(hints.scores).expanduser(), steps,
                                                hints.options, tag=hints.scores_tag)
        except ScoresError as exc:
            raise ImportRefused("scores", str(exc)) from exc
    result = run_worker({"detected": detected.to_json(), "hints": hints.to_json(),
                         "name": name}, timeout_s=timeout_s, memory_mb=memory_mb,
                        log_dir=root / STAGING)
    if not result.get("ok"):
        raise ImportRefused(str(result.get("field") or "path"), str(result.get("message")))
    checked = time.perf_counter()
    sources_paths = detected.paths
    link = hints.link if hints.link is not None else _size_mb(sources_paths) > copy_limit_mb
    info = dict(result["info"])
    info["created_at"] = time.time()
    extra = dict(info.get("extra") or {})
    episodes = _evaluation_episodes(hints, info, scores)
    if episodes:
        # What the scores will mean, where the wizard and the notebook's evaluate look.
        extra["evaluation_score"] = evaluation.describe(episodes, evaluation.SEED)
        extra["training"] = {**(extra.get("training") or {}), "eval_seed": evaluation.SEED,
                             "eval_episodes": episodes}
        scores_source = (f"workbench evaluation over {episodes} seeded episodes per "
                         "checkpoint (env seeds "
                         f"{evaluation.SEED} to {evaluation.SEED + episodes - 1}), run in the "
                         "background")
    extra["import"] = {
        "sources": [str(p) for p in sources_paths],
        "link": bool(link),
        "scores": scores_source or _no_scores(hints, info),
        "detected": detected.facts,
    }
    info["extra"] = extra
    _write(root, name, info, detected, scores, link=bool(link),
           files=_extra_files(detected, hints), evaluate=episodes)
    experiment = store.get(name).to_json()
    experiment["import"] = {
        "evaluate": episodes,
        "framework": detected.framework,
        "checkpoints": len(detected.checkpoints),
        "link": bool(link),
        "scores": info["extra"]["import"]["scores"],
        "warnings": list(result["description"].get("warnings") or []),
        "description": result["description"],
        "seconds": {"check": round(checked - started, 3),
                    "total": round(time.perf_counter() - started, 3)},
    }
    return experiment


def preview_import(
    root: Path | str,
    sources: Sequence[str | Path] | str | Path,
    hints: ImportHints | None = None,
    *,
    confine_to: Path | None = None,
    timeout_s: float = WORKER_TIMEOUT_S,
    memory_mb: float = WORKER_MEMORY_MB,
) -> dict[str, Any]:
    """What an import of ``sources`` would find, written nowhere: the framework, the
    checkpoints and their steps, the name it would get, and what a worker reading the files
    says (algorithm, agents, spaces, what is still needed). :class:`ImportRefused` when the
    files are not importable at all."""
    hints = hints or ImportHints()
    paths = expand(sources if not isinstance(sources, (str, Path)) else [sources],
                   confine_to=confine_to)
    detected = detect(paths)
    result = run_worker({"detected": detected.to_json(), "hints": hints.to_json(),
                         "name": hints.name or default_name(paths, detected),
                         "describe_only": True},
                        timeout_s=timeout_s, memory_mb=memory_mb,
                        log_dir=Path(root).expanduser() / STAGING)
    if not result.get("ok"):
        raise ImportRefused(str(result.get("field") or "path"), str(result.get("message")))
    description = result["description"]
    return {
        "name": hints.name or default_name(paths, detected),
        "framework": detected.framework,
        "checkpoints": [{"step": s, "path": p} for s, p in detected.checkpoints],
        "steps_from": detected.facts.get("steps_from", "file names"),
        "description": description,
        "needs": list(description.get("needs") or []),
        "size_mb": round(_size_mb(detected.paths), 3),
        "copy_limit_mb": COPY_LIMIT_MB,
    }


def _evaluation_episodes(hints: ImportHints, info: dict[str, Any],
                         scores: dict[int, float]) -> int:
    """Episodes per checkpoint of the workbench's own evaluation; 0 for none (scores were
    given, the environment is unknown, or the import said ``evaluate=0``)."""
    if hints.evaluate == 0 or scores or hints.scores:
        return 0
    if info.get("project_type") != "classic" or not (info.get("extra") or {}).get("env"):
        if hints.evaluate:
            raise ImportRefused("evaluate", "the workbench can evaluate only Classic agents "
                                "whose environment is known: pass env.")
        return 0
    return int(hints.evaluate or evaluation.EPISODES)


def _no_scores(hints: ImportHints, info: dict[str, Any]) -> str:
    if hints.evaluate == 0:
        return "none (evaluation turned off at import): Best is the final checkpoint"
    if info.get("project_type") == "classic":
        return ("none: Best is the final checkpoint (give env at import and the workbench "
                "evaluates each checkpoint, or give scores)")
    return "none: Best is the final checkpoint (give scores to rank them)"


def _extra_files(detected: Detected, hints: ImportHints) -> dict[str, Path]:
    """Files besides the checkpoints a framework module asks to have copied in (its
    ``extra_files(detected, hints)``: VecNormalize statistics, the user's model code)."""
    hook = getattr(frameworks.module_for(detected.framework), "extra_files", None)
    if not callable(hook):
        return {}
    files = {str(rel): Path(src).expanduser() for rel, src in hook(detected, hints).items()}
    for rel, src in files.items():
        if not src.is_file():
            raise ImportRefused("path", f"{src} (for {rel}) does not exist or is not a file.")
    return files


def _write(root: Path, name: str, info: dict[str, Any], detected: Detected,
           scores: dict[int, float], *, link: bool,
           files: dict[str, Path] | None = None, evaluate: int = 0) -> None:
    """Build the experiment folder aside and rename it into place (atomic)."""
    staging_dir = root / STAGING
    staging_dir.mkdir(parents=True, exist_ok=True)
    (root / "experiments").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=staging_dir, prefix=f"{name}."))
    try:
        folder = work / name
        (folder / "checkpoints").mkdir(parents=True)
        for step, source in detected.checkpoints:
            src = Path(source)
            suffix = "" if src.is_dir() else (src.suffix or ".pt")
            target = folder / "checkpoints" / f"step_{step}{suffix}"
            if link:
                target.symlink_to(src.resolve(), target_is_directory=src.is_dir())
            elif src.is_dir():
                shutil.copytree(src, target, symlinks=False)
            else:
                shutil.copy2(src, target)
        for rel, src in (files or {}).items():
            target = folder / rel
            if folder.resolve() not in target.resolve().parents:
                raise ImportRefused("path", f"{rel!r} would be written outside the experiment.")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        (folder / "experiment.json").write_text(json.dumps(info, indent=2) + "\n", "utf-8")
        rows = [",".join(METRIC_FIELDS)]
        for step in sorted(scores):
            rows.append(f"{step},,{scores[step]!r}")
        (folder / "metrics.csv").write_text("\n".join(rows) + "\n", "utf-8")
        if evaluate:
            evaluation.plan(folder, [s for s, _ in detected.checkpoints], episodes=evaluate)
        try:
            # rename() of a folder fails if the target exists: two imports of one name race
            # safely, the second is refused.
            os.rename(folder, root / "experiments" / name)
        except OSError as exc:
            raise ImportRefused("name", f"an experiment named {name!r} appeared while "
                                "importing; pass another name.") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["ImportRefused", "default_name", "detect", "expand", "import_experiment",
           "preview_import", "run_worker"]
