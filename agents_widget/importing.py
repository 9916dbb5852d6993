"""``import_checkpoint``: the notebook's door to the workbench's one import.

It asks the workbench server this kernel belongs to (``POST agents/api/experiments``), so a
notebook imports exactly as the panel's Import dialog, the CLI and the API do: the files are
detected, loaded and probed in a worker process of the server, and the experiment appears
in New Agent at once.

Example::

    from agents_widget import import_checkpoint
    exp = import_checkpoint("runs/dqn_0_*.pt", env="CartPole-v1")
    exp["name"], [c["step"] for c in exp["checkpoints"]]
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from workbench_core import discovery

# Loading and probing every checkpoint in a worker takes seconds to minutes.
IMPORT_TIMEOUT_S = 900.0


class ImportFailed(Exception):
    """The server refused the import; the message names the field and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def import_checkpoint(
    path: str | Path | Sequence[str | Path] | None = None,
    *,
    upload: tuple[str, bytes] | None = None,
    name: str | None = None,
    env: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    base_model: str | Path | None = None,
    scores: str | Path | None = None,
    scores_tag: str | None = None,
    evaluate: int | None = None,
    link: bool | None = None,
    options: Mapping[str, Any] | None = None,
    server: discovery.ServerInfo | None = None,
    timeout: float = IMPORT_TIMEOUT_S,
    preview: bool = False,
) -> dict[str, Any]:
    """Import checkpoints trained elsewhere as an experiment; returns the experiment as
    ``GET agents/api/experiments`` lists it (plus ``import``: what was detected, link or
    copy, where the scores came from).

    ``path``: a checkpoint file, a folder, a glob, a model folder, or a list of them, as the
    server sees them (relative paths from the directory this kernel runs in are made
    absolute). ``env``: a Gymnasium id or PettingZoo module path (``env_kwargs`` its
    arguments). ``base_model``: a LoRA adapter's base model folder. ``scores``: a CSV with a
    step and an evaluation score column, or a TensorBoard log folder (``scores_tag``: the tag,
    or CSV column, to read; default ``eval/mean_reward``, then ``rollout/ep_rew_mean``).
    Without scores and with ``env``, the server scores each checkpoint over ``evaluate``
    seeded episodes (default 10; 0: none) in the background; the experiment's
    ``evaluation`` says how far it is. ``link``: keep the files where they are (``True``)
    or copy them (``False``; default: copy under 512 MiB). ``preview=True`` writes nothing
    and returns what the files are and what is still needed. ``upload=(filename, bytes)``
    instead of ``path`` sends a small checkpoint file (up to 16 MiB) in the request, for a
    server that cannot read this machine's files. Raises :class:`ImportFailed`.
    """

    def absolute(value: str | Path) -> str:
        text = str(value)
        return text if Path(text).expanduser().is_absolute() else str(Path.cwd() / text)

    body: dict[str, Any] = {}
    if upload is not None:
        filename, data = upload
        body["upload"] = {"filename": str(filename),
                          "data": base64.b64encode(bytes(data)).decode("ascii")}
    elif path is None:
        raise ValueError("Give path (a file, folder or glob on the server) or upload.")
    else:
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        body["path"] = [absolute(p) for p in paths]
    for key, value in (("name", name), ("env", env), ("link", link),
                       ("scores_tag", scores_tag), ("evaluate", evaluate)):
        if value is not None:
            body[key] = value
    if preview:
        body["preview"] = True
    if env_kwargs:
        body["env_kwargs"] = dict(env_kwargs)
    if options:
        body["options"] = dict(options)
    if base_model is not None:
        body["base_model"] = absolute(base_model)
    if scores is not None:
        body["scores"] = absolute(scores)
    return _post(body, server or discovery.find(), timeout=timeout, preview=preview)


def _post(body: dict[str, Any], server: discovery.ServerInfo, *, timeout: float,
          preview: bool) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if server.token:
        headers["Authorization"] = f"token {server.token}"
    response = httpx.post(server.api("experiments"), json=body, headers=headers,
                          timeout=timeout)
    if response.status_code != (200 if preview else 201):
        try:
            message = str(response.json().get("message") or response.text)
        except ValueError:
            message = response.text
        raise ImportFailed(response.status_code, f"Import refused ({response.status_code}): "
                           f"{message}")
    result: dict[str, Any] = response.json()
    return result


__all__ = ["ImportFailed", "import_checkpoint"]
