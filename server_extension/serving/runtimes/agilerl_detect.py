"""The import's AgileRL framework module: which files are AgileRL checkpoints, what they hold.

``detect`` reads a file's zip member names and the opcodes of its ``data.pkl`` (with
:mod:`pickletools`, which lists a pickle without running it): an AgileRL checkpoint written by
``agent.save_checkpoint`` or by the training helpers names ``agilerl`` classes and records
its ``algo``. ``describe`` runs in the import's worker process and loads the agent.

Files understood: one ``save_checkpoint`` file (step 0 unless its name holds a step), a
folder or several files from ``train_off_policy`` / ``train_on_policy`` /
``train_multi_agent_*`` (``<checkpoint_path>_<member>_<steps>.pt``; member 0 of the
population; import another member by naming its files), or ``step_<N>.pt`` files.
"""

from __future__ import annotations

import contextlib
import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

from server_extension.serving.runtimes.detection import Description, Detected, ImportHints
from server_extension.serving.runtimes.file_steps import agilerl_name, step_from_name

FRAMEWORK = "agilerl"
MULTI_AGENT = ("MADDPG", "MATD3", "IPPO")
OPTIONS: tuple[str, ...] = ()
MAX_FILES = 10_000
# data.pkl holds the agent's structure, not its weights (those are separate zip members):
# a few kB to a few MB. A bigger one is read only this far.
MAX_PICKLE_BYTES = 32 * 1024 * 1024


def peek(path: Path) -> dict[str, Any] | None:
    """``{"algo": ...}`` when ``path`` is an AgileRL checkpoint file, else ``None``.

    Never unpickles: the pickle's opcodes are listed, not executed.
    """
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            members = [n for n in names if n.endswith("/data.pkl")]
            # TorchScript archives also hold a data.pkl (beside code/ and constants.pkl),
            # and may name agilerl's classes: those are another framework module's.
            if len(members) != 1 or any("/code/" in n or n.endswith("/constants.pkl")
                                        for n in names):
                return None
            with archive.open(members[0]) as fh:
                data = fh.read(MAX_PICKLE_BYTES)
    except (OSError, zipfile.BadZipFile, RuntimeError, EOFError):
        return None
    if b"agilerl" not in data:
        return None
    texts: list[str] = []
    # A pickle cut short still told us it is AgileRL's; its algo is then unknown here.
    with contextlib.suppress(Exception):
        for _op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if isinstance(arg, str):
                texts.append(arg)
                if len(texts) > 2 and texts[-2] == "algo":
                    break
    algo = texts[texts.index("algo") + 1] if "algo" in texts[:-1] else None
    return {"algo": algo}


def _candidates(folder: Path) -> list[Path]:
    found = []
    for seen, entry in enumerate(sorted(folder.iterdir())):
        if seen >= MAX_FILES:
            break
        if entry.is_file() and entry.suffix in (".pt", ".pth", ".ckpt"):
            found.append(entry)
    return found


def detect(path: Path) -> Detected | None:
    """Claim an AgileRL checkpoint file, or a folder of them; ``None`` for anything else."""
    path = Path(path)
    files = _candidates(path) if path.is_dir() else [path]
    claimed = [(f, info) for f in files if (info := peek(f)) is not None]
    if not claimed:
        return None
    facts: dict[str, Any] = {}
    algos = sorted({str(info["algo"]) for _f, info in claimed if info.get("algo")})
    if algos:
        facts["algorithm"] = algos[0] if len(algos) == 1 else algos
    # Training-helper files: one per population member and step.
    helper = {f: agilerl_name(f.name) for f, _ in claimed}
    members = sorted({h[1] for h in helper.values() if h is not None})
    if members:
        facts["members"] = members
    checkpoints: list[tuple[int, str]] = []
    unnamed = []
    for file, _info in claimed:
        parts = helper[file]
        if parts is not None:
            if parts[1] == members[0]:
                checkpoints.append((parts[2], str(file)))
            continue
        step = step_from_name(file.name)
        if step is None:
            unnamed.append(file)
        else:
            checkpoints.append((step, str(file)))
    if unnamed and not checkpoints:
        # No step in any name: the order given (a single file is step 0).
        checkpoints = [(i, str(f)) for i, f in enumerate(unnamed)]
        if len(unnamed) > 1:
            facts["steps_from"] = "order"
    elif unnamed:
        facts["ignored"] = [str(f) for f in unnamed]
    return Detected(framework=FRAMEWORK, checkpoints=sorted(checkpoints), facts=facts)


def _space_text(space: Any) -> str:
    return repr(space)


def describe(detected: Detected, hints: ImportHints) -> Description:
    """Load the last checkpoint and report its algorithm, agents and spaces (worker only)."""
    from server_extension.serving.importing.spaces import space_json
    from server_extension.serving.runtimes.agilerl_multi import load_agilerl_agent
    from server_extension.serving.runtimes.base import RuntimeLoadError

    unknown = sorted(set(hints.options) - set(OPTIONS))
    if unknown:
        raise RuntimeLoadError(f"AgileRL imports take no options; remove {unknown}.")
    if not detected.checkpoints:
        raise RuntimeLoadError("no AgileRL checkpoint files to import.")
    path = detected.paths[-1]
    from server_extension.serving.runtimes.agilerl import ALGORITHMS

    agent = load_agilerl_agent(path, tuple(ALGORITHMS.values()) + MULTI_AGENT, "cpu")
    algo = str(agent.algo)
    multi = algo in MULTI_AGENT
    recurrent = bool(getattr(agent, "recurrent", False))
    needs: list[str] = []
    warnings: list[str] = []
    members = detected.facts.get("members") or []
    if len(members) > 1:
        warnings.append(f"The files hold a population of {len(members)} agents; member "
                        f"{members[0]} is imported; import another by naming its files.")
    spaces: dict[str, dict[str, Any]] = {}
    if multi:
        ids = [str(a) for a in agent.agent_ids]
        for aid in ids:
            spaces[aid] = {"observation": space_json(agent.possible_observation_spaces[aid]),
                           "action": space_json(agent.possible_action_spaces[aid])}
        obs_text = _space_text(dict(agent.possible_observation_spaces))
        act_text = _space_text(dict(agent.possible_action_spaces))
    else:
        ids = []
        spaces["agent"] = {"observation": space_json(agent.observation_space),
                           "action": space_json(agent.action_space)}
        obs_text = _space_text(agent.observation_space)
        act_text = _space_text(agent.action_space)
    if not hints.env:
        example = ("mpe2.simple_spread_v3" if multi else "CartPole-v1")
        needs.append(f"env: an AgileRL checkpoint does not record its environment; pass the "
                     f"Gymnasium id or PettingZoo module it was trained on (e.g. {example}).")
    return Description(
        framework=FRAMEWORK, algorithm=algo, project_type="classic", multi_agent=multi,
        recurrent=recurrent, agent_ids=ids, observation_space=obs_text, action_space=act_text,
        extra={"spaces": spaces}, needs=needs, warnings=warnings,
    )


__all__ = ["FRAMEWORK", "describe", "detect", "peek"]
