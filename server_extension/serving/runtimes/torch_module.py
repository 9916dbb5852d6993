"""Serve a torch ``nn.Module``: pickled whole, or a state dict plus its class, framework
``"pytorch"``.

Two kinds of checkpoint, told apart by reading the pickle's opcodes (never running them):

- a **state dict** (``torch.save(model.state_dict(), path)``, CleanRL's way), read with
  ``weights_only=True`` into ``module_class(**init_kwargs)``;
- a **whole module** (``torch.save(model, path)``), unpickled with ``weights_only=False`` in
  the worker only: a pickle runs code, which is why loading is the worker's job.

Either way the class must be importable in the worker. ``experiment.json``'s ``extra``::

    module_class   "package.module:ClassName" (needed for a state dict)
    init_kwargs    keyword arguments of the class's constructor (JSON values)
    env_argument   the constructor argument that takes the environment, for classes that
                   read their sizes from it (CleanRL's ``Agent(envs)``): a one-env
                   ``gymnasium.vector.SyncVectorEnv`` of the experiment's environment
    method         the attribute to call instead of ``forward`` (CleanRL's PPO ``actor``)
    inputs, class_names   as in :mod:`tensor_model`

The folder ``code/`` inside the experiment (where the import copies the user's module) is put
on ``sys.path`` first; a class in ``__main__`` (defined in a notebook or script) cannot be
found in the worker and is refused with what to do.
"""

from __future__ import annotations

import importlib
import pickletools
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

from server_extension.serving.runtimes.base import RuntimeLoadError
from server_extension.serving.runtimes.detection import Description, Detected, ImportHints
from server_extension.serving.runtimes.tensor_model import (
    TensorModelRuntime,
    build_runtime,
    describe_tensor_model,
    detect_files,
    environment_spaces,
    inputs_from_extra,
)
from server_extension.serving.runtimes.torch_call import checkpoint_file, serving_device, torch_call
from workbench_core.store import Checkpoint, Experiment

FRAMEWORK = "pytorch"
OPTIONS = ("module_class", "init_kwargs", "env_argument", "method", "code")
_PATH_LOCK = threading.Lock()
# Modules whose globals a plain state dict's pickle may name (tensors, their storages, dicts).
_PLAIN_MODULES = ("torch", "collections", "numpy", "builtins", "__builtin__", "_codecs")


def _plain(global_name: str) -> bool:
    module = global_name.split(" ", 1)[0]
    return any(module == m or module.startswith(m + ".") for m in _PLAIN_MODULES)


def pickle_globals(path: Path) -> list[str] | None:
    """The ``module name`` globals a torch.save zip's pickle refers to, read from its opcodes
    without running it; ``None`` when ``path`` is no torch.save zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(names) != 1 or any(n.endswith("/constants.pkl") for n in archive.namelist()):
                return None
            data = archive.read(names[0])
    except (OSError, zipfile.BadZipFile):
        return None
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]} {strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        return None  # not a pickle this reader follows; the worker's load will say more
    return found


def user_classes(path: Path) -> list[str]:
    """The non-torch classes a pickle needs (``module:Class``), ``[]`` for a state dict."""
    found = pickle_globals(path) or []
    return sorted({g.replace(" ", ":") for g in found if not _plain(g)})


def is_whole_module(path: Path) -> bool:
    """Whether the pickle builds an ``nn.Module`` (not just tensors in a dict)."""
    found = pickle_globals(path) or []
    return any(g.startswith("torch.nn.") or not _plain(g) for g in found)


def claims(path: Path) -> bool:
    """A ``.pt``/``.pth`` torch.save zip (not TorchScript)."""
    return path.suffix.lower() in (".pt", ".pth") and pickle_globals(path) is not None


def detect(path: Path) -> Detected | None:
    """A torch.save file or a folder of them; says state dict or whole module, and which
    classes a whole module needs, from the pickle's opcodes (nothing is run)."""
    found = detect_files(Path(path), FRAMEWORK, claims)
    if found is None:
        return None
    last = found.paths[-1]
    facts = {"whole_module": is_whole_module(last), "classes": user_classes(last)}
    return Detected(found.framework, found.checkpoints, facts)


def _code_path(experiment: Experiment) -> None:
    """Put the experiment's ``code/`` (and, while importing, the folder of the user's own
    file, ``extra["code"]``) on ``sys.path``."""
    places = [experiment.folder / "code"]
    given = experiment.info.extra.get("code")
    if given:
        source = Path(str(given)).expanduser()
        places.append(source if source.is_dir() else source.parent)
    with _PATH_LOCK:
        for place in reversed(places):
            if place.is_dir() and str(place) not in sys.path:
                sys.path.insert(0, str(place))


def extra_files(detected: Detected, hints: ImportHints) -> dict[str, str]:
    """The user's model code (option ``code``: a .py file) copied into the experiment's
    ``code/``, so the worker can import the class after the source moves."""
    given = hints.options.get("code")
    if not given:
        return {}
    source = Path(str(given)).expanduser()
    return {f"code/{source.name}": str(source)}


def import_class(spec: str) -> Any:
    """The class ``"package.module:Class"`` names; :class:`RuntimeLoadError` saying how to
    make it importable when it is not."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise RuntimeLoadError(
            f"module_class {spec!r} must be written 'package.module:ClassName'.")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RuntimeLoadError(
            f"module_class {spec!r}: module {module_name!r} cannot be imported in the worker "
            f"({type(exc).__name__}: {exc}). Put the file in the experiment's code/ folder "
            "(the import copies it there with --option code=FILE) or pip install its package into "
            "the server's environment.") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise RuntimeLoadError(
            f"module_class {spec!r}: module {module_name!r} has no {attr!r}; names in it: "
            f"{sorted(n for n in vars(module) if not n.startswith('_'))[:20]}.")
    return cls


def _env_argument(experiment: Experiment) -> Any:
    import gymnasium as gym

    from workbench_core.environments import env_spec, make_env

    spec = env_spec(experiment.info.environment, experiment.info.extra)
    return gym.vector.SyncVectorEnv([lambda: make_env(spec)])


def build_module(experiment: Experiment, path: Path) -> Any:
    """The served ``nn.Module`` of ``path``, in eval mode on the CPU."""
    import torch

    extra = experiment.info.extra
    _code_path(experiment)
    spec = extra.get("module_class")
    if spec:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RuntimeLoadError(
                f"{path.name} is not a plain state dict ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}); save it with torch.save(model.state_dict(), "
                "path), or import the whole module without module_class.") from exc
        if not isinstance(state, dict):
            raise RuntimeLoadError(f"{path.name} holds a {type(state).__name__}, not a state "
                                   "dict.")
        cls = import_class(str(spec))
        kwargs = dict(extra.get("init_kwargs") or {})
        if extra.get("env_argument"):
            kwargs[str(extra["env_argument"])] = _env_argument(experiment)
        try:
            model = cls(**kwargs)
            model.load_state_dict(state, strict=True)
        except Exception as exc:
            raise RuntimeLoadError(
                f"{spec}({', '.join(sorted(kwargs))}) could not take the weights of "
                f"{path.name}: {type(exc).__name__}: {str(exc).strip()[:400]}. Check "
                "init_kwargs against the arguments the model was trained with.") from exc
    else:
        needed = user_classes(path)
        if any(c.startswith("__main__:") for c in needed):
            raise RuntimeLoadError(
                f"{path.name} pickles a class defined in __main__ ({', '.join(needed)}), which "
                "the worker cannot import. Move the class into a .py module and import it "
                "with that file (--option code=FILE), or save model.state_dict() and give "
                "module_class.")
        try:
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise RuntimeLoadError(
                f"{path.name} could not be unpickled ({type(exc).__name__}: "
                f"{str(exc).strip()[:300]}). A state dict needs module_class; a whole model's "
                "class must be importable (put its module in the experiment's code/ folder)."
            ) from exc
        if not isinstance(model, torch.nn.Module):
            raise RuntimeLoadError(
                f"{path.name} holds a {type(model).__name__}, not an nn.Module; a state dict "
                "needs module_class='package.module:ClassName'.")
    return model.eval()


def _forward(experiment: Experiment, model: Any) -> Any:
    method = experiment.info.extra.get("method")
    if not method:
        return model
    fn = getattr(model, str(method), None)
    if not callable(fn):
        raise RuntimeLoadError(f"The model has no callable {method!r} (extra['method']).")
    return fn


def describe(detected: Detected, hints: ImportHints) -> Description:
    """Check (in a worker) that the last checkpoint loads as the module described, and report
    it; the spaces come from the environment when one is given."""
    from workbench_core.store import ExperimentInfo

    options = {k: v for k, v in hints.options.items() if k in OPTIONS}
    info = ExperimentInfo(name="import", project_type="classic" if hints.env else "advanced",
                          algorithm="", framework=FRAMEWORK, environment=hints.env,
                          extra=dict(options))
    probe = Experiment(detected.paths[-1].parent, info)
    model = build_module(probe, detected.paths[-1])
    _forward(probe, model)
    if hints.env:
        environment_spaces(probe)
    return describe_tensor_model(detected, hints, algorithm=type(model).__name__, inputs=None,
                                 allowed=OPTIONS, extra=options)


def load(experiment: Experiment, checkpoint: Checkpoint, device: str) -> TensorModelRuntime:
    """Rebuild the module of ``checkpoint`` and serve it."""
    target = serving_device(device)
    model = build_module(experiment, checkpoint_file(checkpoint.path, "torch"))
    model.to(target)
    return build_runtime(experiment, torch_call(_forward(experiment, model), target),
                         inputs=inputs_from_extra(experiment))


def warm() -> None:
    """Import torch ahead of the first load."""
    import torch  # noqa: F401
