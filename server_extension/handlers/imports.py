"""``POST agents/api/experiments``: the management API's door to the one import.

The body is ``{"path": str | [str], "name"?, "env"?, "env_kwargs"?, "base_model"?,
"scores"?, "scores_tag"?, "link"?, "evaluate"?, "options"?, "preview"?}``; the reply is 201
with the experiment as ``GET agents/api/experiments`` lists it (plus ``import``: what was
detected, link or copy, where scores came from, timings), or 400 naming the field to fix.
``"preview": true`` writes nothing and answers 200 with what the files are and what is still
needed (the Import dialog's preview). Without scores and with an environment, the server's
:class:`~server_extension.serving.importing.evaluation.BackgroundEvaluator` then scores each
checkpoint over ``evaluate`` seeded episodes (default 10) in worker processes. The files
are loaded in a worker process, never in this server; the import runs on a thread so the
event loop stays free while the worker works.

Where import is allowed is the server's ``AgentsWorkbenchApp.import_mode``: ``on`` (JupyterLab:
the user's own machine and files), ``workspace`` (paths under the workspace only) or ``off``
(the Voila app's default, whose token may be handed to others).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tornado import web

from server_extension.serving.importing.evaluation import EPISODES
from server_extension.serving.importing.orchestrator import (
    STAGING,
    ImportRefused,
    import_experiment,
    preview_import,
)
from server_extension.serving.runtimes.detection import ImportHints

IMPORTS = "agents_workbench_imports"  # settings key: {"mode", "memory_mb", "timeout_s"}
EVALUATOR = "agents_workbench_evaluator"  # settings key: the BackgroundEvaluator
FIELDS = ("path", "name", "env", "env_kwargs", "base_model", "scores", "link", "options",
          "evaluate", "scores_tag", "preview", "upload")
# An uploaded checkpoint (the panel's upload control) travels base64 in the JSON body: kept
# small, as it is held in memory on both sides; bigger files are imported by path.
UPLOAD_MAX_MB = 16
UPLOADS = "uploads"  # under the import staging folder; removed after each import
_LOCK = asyncio.Lock()


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise web.HTTPError(400, "%s must be a string, not %s.", key, type(value).__name__)
    return value


def hints_from_body(body: dict[str, Any]) -> tuple[list[str], ImportHints]:
    """The paths and hints a request body carries; 400 naming the field that is wrong."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise web.HTTPError(400, "Unknown field(s) %s; an import takes %s.", unknown,
                            ", ".join(FIELDS))
    raw = body.get("path")
    paths = [raw] if isinstance(raw, str) else raw
    if not paths or not isinstance(paths, list) or not all(isinstance(p, str) and p
                                                            for p in paths):
        raise web.HTTPError(400, "path is required: a checkpoint file, a folder, a glob or a "
                            "model folder on the server (a string or a list of strings).")
    env_kwargs = body.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise web.HTTPError(400, "env_kwargs must be a JSON object, e.g. {\"N\": 3}.")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise web.HTTPError(400, "options must be a JSON object.")
    link = body.get("link")
    if link is not None and not isinstance(link, bool):
        raise web.HTTPError(400, "link must be true (link to the files), false (copy them) or "
                            "left out (copy files under 512 MiB).")
    evaluate = body.get("evaluate")
    if evaluate is not None and (isinstance(evaluate, bool) or not isinstance(evaluate, int)
                                 or evaluate < 0):
        raise web.HTTPError(400, "evaluate must be a whole number of episodes per checkpoint "
                            "(0: do not evaluate), or left out (%d).", EPISODES)
    hints = ImportHints(name=_text(body, "name"), env=_text(body, "env"),
                        env_kwargs=env_kwargs, base_model=_text(body, "base_model"),
                        scores=_text(body, "scores"), link=link, options=options,
                        evaluate=evaluate, scores_tag=_text(body, "scores_tag"))
    return paths, hints


async def import_request(settings: dict[str, Any], root: Path, body: dict[str, Any]
                         ) -> dict[str, Any]:
    """Run the import a request asks for; 400/403 with the reason when refused."""
    config = settings.get(IMPORTS) or {"mode": "on"}
    mode = config.get("mode", "on")
    if mode == "off":
        raise web.HTTPError(403, "Import is off on this server (the Voila app's default, as "
                            "its link may be shared). Import from JupyterLab or the "
                            "agents-workbench import command, or start the app with "
                            "--allow-import.")
    preview = body.get("preview", False)
    if not isinstance(preview, bool):
        raise web.HTTPError(400, "preview must be true (detect only, write nothing) or false.")
    if body.get("upload") is not None:
        with _uploaded(root, body.get("upload")) as (path, filename):
            if body.get("path"):
                raise web.HTTPError(400, "Give path or upload, not both.")
            hints_body = {**body, "path": str(path), "link": False}
            hints_body.pop("upload")
            if not hints_body.get("name"):
                hints_body["name"] = _stem(filename)
            return await _run(settings, root, hints_body, preview=preview, mode=mode,
                              confine=root)
    return await _run(settings, root, body, preview=preview, mode=mode,
                      confine=root if mode == "workspace" else None)


def _stem(filename: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename).stem).strip("-._")[:100] or "upload"


@contextlib.contextmanager
def _uploaded(root: Path, upload: Any) -> Iterator[tuple[Path, str]]:
    """Write an uploaded ``{"filename", "data": base64}`` where the import reads it (under
    the workspace's staging folder), and remove it afterwards: the import copies it."""
    if not isinstance(upload, dict) or not isinstance(upload.get("filename"), str) \
            or not isinstance(upload.get("data"), str):
        raise web.HTTPError(400, "upload must be {\"filename\": str, \"data\": base64 str}.")
    filename = Path(upload["filename"]).name
    if not filename or filename.startswith("."):
        raise web.HTTPError(400, "upload.filename must be a file name such as my_agent.pt.")
    if len(upload["data"]) > (UPLOAD_MAX_MB * 1024 * 1024 * 4) // 3 + 4:
        raise web.HTTPError(413, "The upload is over %d MiB; import a file this size by its "
                            "path on the server instead.", UPLOAD_MAX_MB)
    try:
        data = base64.b64decode(upload["data"], validate=True)
    except ValueError as exc:
        raise web.HTTPError(400, "upload.data is not base64: %s", exc) from exc
    if not data:
        raise web.HTTPError(400, "upload: %s is empty.", filename)
    staging = root / STAGING / UPLOADS
    staging.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=staging))
    try:
        (folder / filename).write_bytes(data)
        yield folder / filename, filename
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.rmdir()  # when no other upload is in flight


async def _run(settings: dict[str, Any], root: Path, body: dict[str, Any], *, preview: bool,
               mode: str, confine: Path | None) -> dict[str, Any]:
    config = settings.get(IMPORTS) or {"mode": "on"}
    paths, hints = hints_from_body(body)
    for key in ("scores", "base_model"):
        value = getattr(hints, key)
        if mode == "workspace" and value:
            resolved = (root / Path(value).expanduser()).resolve()
            if root.resolve() not in resolved.parents:
                raise web.HTTPError(400, "%s %s is outside the workspace; this server reads "
                                    "only files under %s.", key, value, root)
    # One import at a time: each loads the user's files in a worker of its own, and two at
    # once on a small machine only makes both slower.
    async with _LOCK:
        try:
            if preview:
                return await asyncio.to_thread(
                    preview_import, root, paths, hints, confine_to=confine,
                    timeout_s=float(config.get("timeout_s") or 300.0),
                    memory_mb=float(config.get("memory_mb") or 4096.0))
            experiment = await asyncio.to_thread(
                import_experiment, root, paths, hints, confine_to=confine,
                timeout_s=float(config.get("timeout_s") or 300.0),
                memory_mb=float(config.get("memory_mb") or 4096.0))
        except ImportRefused as exc:
            raise web.HTTPError(400, "%s: %s", exc.field, exc) from exc
    evaluator = settings.get(EVALUATOR)
    if evaluator is not None and experiment.get("evaluation"):
        evaluator.poke()  # score the checkpoints now, in the background
    return experiment


__all__ = ["EVALUATOR", "IMPORTS", "hints_from_body", "import_request"]
