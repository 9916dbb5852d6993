"""The experiment store: training runs as folders on disk.

An experiment is one folder under ``<root>/experiments/<name>/``::

    experiment.json     what was trained (see :class:`ExperimentInfo`)
    metrics.csv         step,training_score,evaluation_score (blank cell = not measured)
    checkpoints/
        step_<N>.pt     one checkpoint per step: a file, or a folder (Hugging Face models)

Writers (training code, in any process) and readers (the server) share nothing but the
folder, so every write is atomic: JSON and CSV are written to a temporary file and renamed.

Example::

    exp = ExperimentWriter.create(root, "cartpole-dqn", project_type="classic",
                                  algorithm="DQN", framework="agilerl", environment="CartPole-v1")
    path = exp.checkpoint_path(1000)      # save the model there, then:
    exp.log(1000, training_score=42.0, evaluation_score=57.5)
    ExperimentStore(root).get("cartpole-dqn").best_step()
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from workbench_core import evaluation_marks, regular_files, training_marks

ProjectType = Literal["classic", "advanced"]
PROJECT_TYPES: tuple[str, ...] = ("classic", "advanced")
ROOT_ENV = "AGENTS_WORKBENCH_ROOT"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CKPT_RE = re.compile(r"^step_(\d+)(\.[A-Za-z0-9]+)?$")
METRIC_FIELDS = ("step", "training_score", "evaluation_score")
# Steps are stored in SQLite's 64-bit integers; a file named beyond that is not a checkpoint.
MAX_STEP = 2**63 - 1
# Bounds on what one listing reads from one folder: a checkpoints folder that is (or links
# to) /usr, or a model folder of a million files, must not stall the listing.
MAX_CHECKPOINT_ENTRIES = 10_000
MAX_SIZE_FILES = 10_000
MAX_JSON_BYTES = 1024 * 1024
MAX_METRICS_BYTES = 64 * 1024 * 1024


class StoreError(ValueError):
    """An experiment folder or name that cannot be used; the message says how to fix it."""


def default_root() -> Path:
    """The workspace root: ``$AGENTS_WORKBENCH_ROOT`` or ``~/agents-workbench``."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / "agents-workbench"


def validate_name(name: str, what: str = "experiment") -> str:
    """Return ``name`` trimmed, or raise :class:`StoreError` saying what a valid name is."""
    cleaned = name.strip() if isinstance(name, str) else ""
    if not _NAME_RE.match(cleaned):
        raise StoreError(
            f"Invalid {what} name {name!r}: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return cleaned


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _score(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _step(value: str | None) -> int | None:
    """A metrics row's step, or ``None`` for anything that is not a usable whole step
    (blank, text, ``inf``, ``1e400``, negative, beyond 64 bits)."""
    try:
        number = float(value or "")
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0 or number > MAX_STEP:
        return None
    return int(number)


def _optional_text(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise StoreError(f"experiment.json {key} must be text or null, not {type(value).__name__}.")
    return value


@dataclass
class ExperimentInfo:
    """What ``experiment.json`` holds.

    ``environment`` is the gym/PettingZoo id for Classic RL, ``dataset`` the data set name for
    Advanced Training. ``extra`` carries loader-specific settings (for example the environment
    kwargs, or the decoder of a LatentPPO policy) that the runtime needs to rebuild the model.
    """

    name: str
    project_type: ProjectType
    algorithm: str
    framework: str
    environment: str | None = None
    dataset: str | None = None
    multi_agent: bool = False
    recurrent: bool = False
    base_model: str | None = None
    created_at: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str | None:
        """The environment (Classic RL) or data set (Advanced Training) it was trained on."""
        return self.environment if self.project_type == "classic" else self.dataset

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExperimentInfo:
        """Build from ``experiment.json`` content; raise :class:`StoreError` when malformed."""
        try:
            info = cls(
                name=str(data["name"]),
                project_type=data["project_type"],
                algorithm=str(data["algorithm"]),
                framework=str(data["framework"]),
                environment=_optional_text(data, "environment"),
                dataset=_optional_text(data, "dataset"),
                multi_agent=bool(data.get("multi_agent", False)),
                recurrent=bool(data.get("recurrent", False)),
                base_model=_optional_text(data, "base_model"),
                created_at=float(data.get("created_at", 0.0)),
                extra=data.get("extra") or {},
            )
        except StoreError:
            raise
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"experiment.json is missing or has a bad field: {exc}") from exc
        if not isinstance(info.extra, dict):
            raise StoreError("experiment.json extra must be an object.")
        if info.project_type not in PROJECT_TYPES:
            raise StoreError(
                f"experiment.json project_type is {info.project_type!r}; "
                "it must be 'classic' or 'advanced'."
            )
        return info


@dataclass(frozen=True)
class Checkpoint:
    """One saved step with the scores measured at it (``None`` when not measured)."""

    step: int
    path: Path
    training_score: float | None = None
    evaluation_score: float | None = None

    @property
    def size_mb(self) -> float:
        """Size on disk in MiB (a folder counts every file inside it)."""
        if self.path.is_dir():
            total = _folder_size(self.path)
        elif self.path.exists():
            total = self.path.stat().st_size
        else:
            total = 0
        return round(total / (1024 * 1024), 3)

    def to_json(self) -> dict[str, Any]:
        """The REST shape: step, scores and size."""
        return {
            "step": self.step,
            "training_score": self.training_score,
            "evaluation_score": self.evaluation_score,
            "size_mb": self.size_mb,
        }


class Experiment:
    """A read view of one experiment folder, re-read from disk on every call."""

    def __init__(self, folder: Path, info: ExperimentInfo) -> None:
        self.folder = folder
        self.info = info

    @property
    def name(self) -> str:
        """The experiment's identity: its folder name (``experiment.json``'s ``name`` is only
        a label, so a copied folder is never mistaken for its original)."""
        return self.folder.name

    def metrics(self) -> list[dict[str, float | int | None]]:
        """Rows of ``metrics.csv`` in step order; later rows for a step win."""
        path = self.folder / "metrics.csv"
        if not path.exists():
            return []
        by_step: dict[int, dict[str, float | int | None]] = {}
        try:
            # A FIFO or a link to a device here must not block or flood the reader.
            with regular_files.open_text(path, MAX_METRICS_BYTES) as fh:
                rows = list(csv.DictReader(fh))
        except regular_files.TooLarge as exc:
            raise StoreError(f"{exc}; log fewer rows or start a new experiment.") from exc
        except regular_files.NotARegularFile as exc:
            raise StoreError(f"{exc}; metrics.csv must be a regular file.") from exc
        except OSError as exc:
            raise StoreError(f"{path} is unreadable: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise StoreError(f"{path} is not UTF-8 text: {exc}") from exc
        except csv.Error as exc:
            raise StoreError(f"{path} is not a readable CSV file: {exc}") from exc
        for row in rows:
            step = _step(row.get("step") if isinstance(row.get("step"), str) else None)
            if step is None:
                continue
            by_step[step] = {
                    "step": step,
                    "training_score": _score(row.get("training_score")),
                    "evaluation_score": _score(row.get("evaluation_score")),
                }
        return [by_step[s] for s in sorted(by_step)]

    def _checkpoint_files(self) -> Iterator[tuple[int, Path]]:
        folder = self.folder / "checkpoints"
        if not folder.is_dir():
            return
        with os.scandir(folder) as entries:
            for seen, entry in enumerate(entries):
                if seen >= MAX_CHECKPOINT_ENTRIES:
                    return  # not a checkpoints folder of a training run (/usr, say)
                match = _CKPT_RE.match(entry.name)
                if match and int(match.group(1)) <= MAX_STEP:
                    yield int(match.group(1)), Path(entry.path)

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint on disk, in step order, joined with its scores."""
        scores = {int(row["step"] or 0): row for row in self.metrics()}
        out = []
        for step, path in sorted(self._checkpoint_files()):
            if path.is_symlink() and not path.exists():
                # An imported checkpoint linked where the user keeps it, since moved.
                raise StoreError(
                    f"Checkpoint {path.name} of {self.name!r} links to {os.readlink(path)}, "
                    "which no longer exists (moved or deleted?); put it back, or import it "
                    "again."
                )
            row = scores.get(step, {})
            out.append(
                Checkpoint(
                    step=step,
                    path=path,
                    training_score=row.get("training_score"),
                    evaluation_score=row.get("evaluation_score"),
                )
            )
        return out

    def checkpoint(self, step: int) -> Checkpoint:
        """The checkpoint at ``step``; :class:`StoreError` listing the steps there are."""
        for ckpt in self.checkpoints():
            if ckpt.step == step:
                return ckpt
        steps = [c.step for c in self.checkpoints()]
        raise StoreError(
            f"Experiment {self.name!r} has no checkpoint at step {step}; "
            f"available steps: {steps or 'none'}."
        )

    def best_step(self) -> int:
        """The step with the highest evaluation score (ties: the later step).

        Falls back to the training score, then to the final step, when nothing was evaluated.
        """
        ckpts = self.checkpoints()
        if not ckpts:
            raise StoreError(f"Experiment {self.name!r} has no checkpoints yet.")
        for key in ("evaluation_score", "training_score"):
            scored = [c for c in ckpts if getattr(c, key) is not None]
            if scored:
                return max(scored, key=lambda c: (getattr(c, key), c.step)).step
        return ckpts[-1].step

    def final_step(self) -> int:
        """The highest step saved."""
        ckpts = self.checkpoints()
        if not ckpts:
            raise StoreError(f"Experiment {self.name!r} has no checkpoints yet.")
        return ckpts[-1].step

    def resolve(self, rule: str | float) -> int:
        """Turn a checkpoint rule (``"best"``, ``"final"`` or a step) into a step."""
        if rule == "best":
            return self.best_step()
        if rule == "final":
            return self.final_step()
        if isinstance(rule, bool) or (isinstance(rule, float) and not float(rule).is_integer()):
            raise StoreError("checkpoint must be 'best', 'final' or a whole step number.")
        try:
            step = int(rule)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(
                f"checkpoint {rule!r} is not 'best', 'final' or a step number."
            ) from exc
        return self.checkpoint(step).step

    def to_json(self) -> dict[str, Any]:
        """The REST shape of ``GET agents/api/experiments``."""
        info = self.info
        return {
            "name": self.name,
            "tab": info.project_type,
            "source": info.source,
            "environment": info.environment,
            "dataset": info.dataset,
            "algorithm": info.algorithm,
            "framework": info.framework,
            "multi_agent": info.multi_agent,
            "recurrent": info.recurrent,
            "base_model": info.base_model,
            "checkpoints": [c.to_json() for c in self.checkpoints()],
            "metrics": self.metrics(),
            "extra": info.extra,
            # Still being trained (queued, training, failed, interrupted), or None when done.
            "training": training_marks.read(self.folder.parent.parent, info.name),
            # The workbench's own evaluation of the checkpoints (imports without scores):
            # {"state", "done", "total", "failed", ...}, or None when none was asked for.
            "evaluation": evaluation_marks.read(self.folder),
        }


_Rows = list[dict[str, Any]]  # (aliases: inside ExperimentStore, ``list`` is its method)
_Paths = list[Path]


class ExperimentStore:
    """Reads the experiments under one root. Cheap to build; holds no open files."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    @property
    def experiments_dir(self) -> Path:
        """``<root>/experiments``."""
        return self.root / "experiments"

    def list(self) -> list[Experiment]:
        """Every readable experiment, by folder name. Unreadable folders are skipped."""
        found = (self._try_load(folder) for folder in self._folders())
        return [e for e in found if isinstance(e, Experiment)]

    def listing(self) -> dict[str, _Rows]:
        """The REST shape of ``GET agents/api/experiments``: every usable experiment, and
        every folder that could not be read as one (``broken``: folder name and reason).

        Blocking disk work: call it off the event loop. One bad folder (unreadable JSON,
        a metrics file that is not UTF-8, a field too large) is one broken entry, never an
        error for the whole list.
        """
        good: _Rows = []
        broken: _Rows = []
        for folder in self._folders():
            found = self._try_load(folder)
            if isinstance(found, Experiment):
                try:
                    good.append(found.to_json())
                    continue
                except (StoreError, OSError, RecursionError) as exc:
                    found = str(exc)
            broken.append({"name": folder.name, "folder": str(folder), "error": found})
        return {"experiments": good, "broken": broken}

    def _folders(self) -> _Paths:
        if not self.experiments_dir.is_dir():
            return []
        out = []
        with os.scandir(self.experiments_dir) as entries:
            for entry in entries:
                if (entry.is_dir()
                        and os.path.exists(os.path.join(entry.path, "experiment.json"))):
                    out.append(Path(entry.path))
                if len(out) >= MAX_CHECKPOINT_ENTRIES:
                    break
        return sorted(out)

    def _try_load(self, folder: Path) -> Experiment | str:
        try:
            validate_name(folder.name)
            return self._load(folder)
        except StoreError as exc:
            return str(exc)

    def get(self, name: str) -> Experiment:
        """One experiment by name; :class:`StoreError` naming the ones that exist."""
        folder = self.experiments_dir / validate_name(name)
        if not (folder / "experiment.json").exists():
            known = [e.name for e in self.list()]
            raise StoreError(
                f"Unknown experiment {name!r}; known experiments: {known or 'none'}. "
                f"Experiments live in {self.experiments_dir}."
            )
        return self._load(folder)

    @staticmethod
    def _load(folder: Path) -> Experiment:
        path = folder / "experiment.json"
        try:
            raw = regular_files.read_capped(path, MAX_JSON_BYTES)
        except regular_files.TooLarge as exc:
            raise StoreError(f"{exc}; it should hold a few fields.") from exc
        except regular_files.NotARegularFile as exc:
            raise StoreError(f"{exc}; experiment.json must be a regular file.") from exc
        except OSError as exc:
            raise StoreError(f"{path} is unreadable: {exc}") from exc
        try:
            data = json.loads(raw.decode("utf-8"))
        except RecursionError as exc:
            raise StoreError(f"{path} is nested too deeply to read.") from exc
        except (OSError, ValueError) as exc:  # JSON and UTF-8 errors are ValueErrors
            raise StoreError(f"{path} is unreadable: {exc}") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{folder / 'experiment.json'} must hold a JSON object.")
        return Experiment(folder, ExperimentInfo.from_json(data))


class ExperimentWriter:
    """Appends checkpoints and scores to one experiment folder. Not thread-safe."""

    def __init__(self, folder: Path, info: ExperimentInfo) -> None:
        self.folder = folder
        self.info = info

    @classmethod
    def create(
        cls,
        root: Path | str,
        name: str,
        *,
        project_type: ProjectType,
        algorithm: str,
        framework: str,
        overwrite: bool = False,
        **fields: Any,
    ) -> ExperimentWriter:
        """Make (or, with ``overwrite``, empty and remake) ``<root>/experiments/<name>``."""
        name = validate_name(name)
        if project_type not in PROJECT_TYPES:
            raise StoreError(f"project_type must be 'classic' or 'advanced', not {project_type!r}.")
        folder = Path(root).expanduser() / "experiments" / name
        if folder.exists():
            if not overwrite:
                raise StoreError(
                    f"Experiment {name!r} already exists in {folder.parent}; "
                    "pick another name or pass overwrite=True."
                )
            shutil.rmtree(folder)
        info = ExperimentInfo(
            name=name, project_type=project_type, algorithm=algorithm, framework=framework,
            **fields,
        )
        (folder / "checkpoints").mkdir(parents=True)
        _atomic_write(folder / "experiment.json", json.dumps(info.to_json(), indent=2) + "\n")
        _atomic_write(folder / "metrics.csv", ",".join(METRIC_FIELDS) + "\n")
        return cls(folder, info)

    def update_info(self, **fields: Any) -> None:
        """Change fields of ``experiment.json`` (for example ``extra``) after creation."""
        for key, value in fields.items():
            setattr(self.info, key, value)
        _atomic_write(self.folder / "experiment.json", json.dumps(self.info.to_json(), indent=2))

    def checkpoint_path(self, step: int, suffix: str = ".pt") -> Path:
        """Where to save the checkpoint for ``step`` (``suffix=""`` for a folder)."""
        return self.folder / "checkpoints" / f"step_{int(step)}{suffix}"

    def log(
        self,
        step: int,
        *,
        training_score: float | None = None,
        evaluation_score: float | None = None,
    ) -> None:
        """Record the scores for ``step`` (call after its checkpoint is saved)."""
        path = self.folder / "metrics.csv"
        existing = (regular_files.read_capped(path, MAX_METRICS_BYTES).decode("utf-8")
                    if path.exists() else "")
        buf = io.StringIO()
        if not existing:
            buf.write(",".join(METRIC_FIELDS) + "\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([
            int(step),
            "" if training_score is None else repr(float(training_score)),
            "" if evaluation_score is None else repr(float(evaluation_score)),
        ])
        _atomic_write(path, existing + buf.getvalue())


def _folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder``, not following links, at most MAX_SIZE_FILES."""
    total = seen = 0
    for dirpath, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            seen += 1
            if seen > MAX_SIZE_FILES:
                return total
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
