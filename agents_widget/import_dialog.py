"""The panel's Import dialog: bring a checkpoint trained elsewhere into the workspace.

A path on the server (typed, or picked in a folder browser rooted where Jupyter serves
files), the experiment's name, the environment and its kwargs, a LoRA adapter's base model,
a scores CSV or TensorBoard log folder, and link or copy. **Detect** asks the server what the
files are (a worker reads them; nothing is written) and shows it, with what is still needed;
**Import** sends ``POST agents/api/experiments`` (the same
import as the CLI and :func:`agents_widget.import_checkpoint`); the reply says what was
detected, or the refusal names the field to fix.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from .importing import ImportFailed, import_checkpoint

MAX_LISTED = 500
UPLOAD_MAX_MB = 16  # the server's cap (server_extension/handlers/imports.py)
UP = ".. (up)"


class ImportDialog(widgets.VBox):
    """The Import form; ``on_done(experiment)`` after a successful import."""

    def __init__(self, *, server: Any, submit: Callable[..., Future[Any]], root: Path,
                 on_done: Callable[[dict[str, Any]], None], on_cancel: Callable[[], None]
                 ) -> None:
        self._server = server
        self._submit = submit
        self._on_done = on_done
        self.root = root
        self.folder = root
        self.header = widgets.HTML(
            "<b>Import a checkpoint</b><br>AgileRL files (save_checkpoint or the training "
            "helpers' <code>_&lt;i&gt;_&lt;steps&gt;.pt</code>), Stable-Baselines3 zips, "
            "TorchScript, torch.export or ONNX models, a Hugging Face save_pretrained folder, "
            "or a LoRA adapter. <b>Detect</b> says what they are; the files are loaded and "
            "checked in a worker process, and nothing is written unless they pass. "
            f"Workspace: <code>{html.escape(str(root))}</code>")
        # Labels as wide as the longest ("Environment"); fields as wide as the dialog
        # ("auto": a 100% width plus the widget's margin would stick out of the panel).
        style = {"description_width": "100px"}
        wide = widgets.Layout(width="auto")
        self.path = widgets.Text(description="Path", placeholder="a file, folder or glob",
                                 style=style, layout=wide)
        self.browser = widgets.Select(options=[], rows=8, description="Browse", style=style,
                                      layout=widgets.Layout(width="auto"))
        self.browser.observe(self._picked, "value")
        # Or a small file from the browser's machine (sent in the request, size-capped).
        self.upload = widgets.FileUpload(
            accept=".pt,.pth,.zip,.pt2,.onnx", multiple=False,
            description="Upload a file", tooltip=f"a checkpoint of at most {UPLOAD_MAX_MB} MiB")
        self.upload_note = widgets.HTML()
        self.upload.observe(self._uploaded, "value")

        def field(label: str, hint: str) -> widgets.Text:
            return widgets.Text(description=label, placeholder=hint, style=style,
                                layout=widgets.Layout(width="auto", max_width="720px"))

        self.name = field("Name", "from the file names")
        self.env = field("Environment", "CartPole-v1 or mpe2.simple_spread_v3")
        self.env_kwargs = field("Env kwargs", '{"N": 3}')
        self.base_model = field("Base model", "LoRA adapters: the base model's folder")
        self.scores = field("Scores", "a CSV (step, score) or a TensorBoard log folder")
        self.scores_tag = field("Scores tag", "eval/mean_reward, then rollout/ep_rew_mean")
        self.link = widgets.Checkbox(
            description="Link to the files instead of copying them (copy is the default "
                        "under 512 MiB)", indent=False, layout=widgets.Layout(width="auto"))
        self.preview_button = widgets.Button(
            description="Detect", icon="search",
            tooltip="Read the files in a worker process and say what they are; writes nothing")
        self.import_button = widgets.Button(description="Import", button_style="primary",
                                            icon="upload")
        self.cancel_button = widgets.Button(description="Cancel")
        self.preview = widgets.HTML()  # what Detect found
        self.preview.add_class("awb-import-preview")
        self.status = widgets.HTML()
        self.preview_button.on_click(lambda _b: self.detect())
        self.import_button.on_click(lambda _b: self.start())
        self.cancel_button.on_click(lambda _b: on_cancel())
        upload_row = widgets.HBox([self.upload, self.upload_note])
        upload_row.add_class("awb-gap8")
        super().__init__([self.header, self.path, self.browser, upload_row, self.name, self.env,
                          self.env_kwargs, self.base_model, self.scores, self.scores_tag,
                          self.link,
                          widgets.HBox([self.preview_button, self.import_button,
                                        self.cancel_button]),
                          self.preview, self.status], layout=widgets.Layout(width="100%"))
        self.add_class("awb-import")
        self.show(root)

    # -- the folder browser -----------------------------------------------------------------

    def show(self, folder: Path) -> None:
        """List ``folder`` in the browser (folders first), never above the root."""
        self.folder = folder
        try:
            entries = sorted(os.scandir(folder), key=lambda e: (not e.is_dir(), e.name))
        except OSError as exc:
            self.status.value = f"Cannot list {html.escape(str(folder))}: {html.escape(str(exc))}"
            entries = []
        names = [e.name + ("/" if e.is_dir() else "") for e in entries
                 if not e.name.startswith(".") and not _internal(folder, e.name)][:MAX_LISTED]
        up = [UP] if folder != self.root else []
        self.browser.unobserve(self._picked, "value")
        self.browser.options = up + names
        self.browser.value = None
        self.browser.observe(self._picked, "value")

    def uploaded_file(self) -> tuple[str, bytes] | None:
        """The file picked with Upload, while the path field is empty."""
        if self.path.value.strip() or not self.upload.value:
            return None
        item = self.upload.value[0]
        return str(item["name"]), bytes(item["content"])

    def _uploaded(self, change: dict[str, Any]) -> None:
        files = change.get("new") or ()
        if not files:
            self.upload_note.value = ""
            return
        item = files[0]
        size_mb = len(bytes(item["content"])) / 2**20
        if size_mb > UPLOAD_MAX_MB:
            self.upload_note.value = (f"<span class='awb-error'>{html.escape(item['name'])} is "
                                      f"{size_mb:.0f} MiB, over {UPLOAD_MAX_MB} MiB: give its "
                                      "path on the server instead.</span>")
            return
        self.path.value = ""  # the upload is what Detect and Import send
        self.upload_note.value = (f"Uploaded <code>{html.escape(item['name'])}</code> "
                                  f"({size_mb:.1f} MiB): Detect or Import sends it; typing a "
                                  "path uses the path instead.")

    def _picked(self, change: dict[str, Any]) -> None:
        value = change.get("new")
        if not value:
            return
        if value == UP:
            self.show(self.folder.parent)
            return
        target = self.folder / value.rstrip("/")
        self.path.value = str(target)
        if value.endswith("/") and not any((target / f).exists() for f in (
                "config.json", "adapter_config.json")):
            self.show(target)

    # -- importing ----------------------------------------------------------------------------

    def _form(self) -> dict[str, Any] | None:
        """The import's arguments from the form; ``None`` (and the status says why) when a
        field is unusable."""
        upload = self.uploaded_file()
        if not self.path.value.strip() and upload is None:
            self.status.value = ("Path: give a checkpoint file, a folder or a glob, or upload "
                                 "a file.")
            return None
        if upload is not None and len(upload[1]) > UPLOAD_MAX_MB * 2**20:
            self.status.value = f"Upload: over {UPLOAD_MAX_MB} MiB; give its path instead."
            return None
        try:
            kwargs = json.loads(self.env_kwargs.value) if self.env_kwargs.value.strip() else {}
        except ValueError as exc:
            self.status.value = f"Env kwargs: not JSON ({html.escape(str(exc))})."
            return None
        return {"path": self.path.value.strip() or None, "upload": upload,
                "name": self.name.value.strip() or None,
                "env": self.env.value.strip() or None, "env_kwargs": kwargs,
                "base_model": self.base_model.value.strip() or None,
                "scores": self.scores.value.strip() or None,
                "scores_tag": self.scores_tag.value.strip() or None,
                "link": True if self.link.value else None}

    def detect(self) -> Future[Any] | None:
        """Ask the server what the files are (``preview``: nothing is written)."""
        form = self._form()
        if form is None:
            return None
        self.preview_button.disabled = True
        self.status.value = "Detecting: reading the files in a worker process…"
        path = form.pop("path")
        future = self._submit(import_checkpoint, path, preview=True, server=self._server,
                              **form)
        future.add_done_callback(lambda f: self._detected(f, form))
        return future

    def _detected(self, future: Future[Any], form: dict[str, Any]) -> None:
        self.preview_button.disabled = False
        try:
            found = future.result()
        except Exception as exc:  # noqa: BLE001 - a refusal, the server or the network
            self.preview.value = ""
            self.status.value = f"<span class='awb-error'>{html.escape(str(exc))}</span>"
            return
        self.status.value = ""
        self.preview.value = preview_html(found, form)

    def start(self) -> Future[Any] | None:
        """Send the import; the status line says what happens."""
        form = self._form()
        if form is None:
            return None
        self.import_button.disabled = True
        self.status.value = "Importing: loading and checking the files in a worker process…"
        path = form.pop("path")
        future = self._submit(import_checkpoint, path, server=self._server, **form)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future[Any]) -> None:
        self.import_button.disabled = False
        try:
            experiment = future.result()
        except ImportFailed as exc:
            self.status.value = f"<span class='awb-error'>{html.escape(str(exc))}</span>"
            return
        except Exception as exc:  # noqa: BLE001 - the server or network: say so, stay open
            self.status.value = (f"<span class='awb-error'>{type(exc).__name__}: "
                                 f"{html.escape(str(exc))}</span>")
            return
        done = experiment.get("import") or {}
        steps = [c["step"] for c in experiment.get("checkpoints", [])]
        self.status.value = html.escape(
            f"Imported {experiment['name']}: {experiment['framework']} "
            f"{experiment['algorithm']}, steps {steps}, "
            f"{'linked' if done.get('link') else 'copied'}; scores: {done.get('scores')}.")
        self._on_done(experiment)


# The workspace's own records at its top level: never a checkpoint, so not offered.
_INTERNAL = ("registry.sqlite3", "sessions.sqlite3", "serving.lock", "runtime", "experiments")


def _internal(folder: Path, name: str) -> bool:
    return (folder / "registry.sqlite3").exists() and name.startswith(_INTERNAL)


def _row(label: str, value: str) -> str:
    return f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"


def preview_html(found: dict[str, Any], form: dict[str, Any]) -> str:
    """What Detect found (``POST agents/api/experiments`` with ``preview``), as a table:
    framework, algorithm, agents, spaces, steps, link or copy, where scores will come from,
    and what is still needed before Import."""
    description = found.get("description") or {}
    steps = [c["step"] for c in found.get("checkpoints") or []]
    rows = [_row("Name", str(found.get("name") or "")),
            _row("Framework", str(found.get("framework") or "")),
            _row("Algorithm", str(description.get("algorithm") or "") + (
                " (recurrent)" if description.get("recurrent") else ""))]
    agents = description.get("agent_ids") or []
    rows.append(_row("Agents", f"{len(agents)}: {', '.join(agents)}" if agents
                     else "one (single-agent)"
                     if description.get("project_type") == "classic" else "-"))
    for label, key in (("Observations", "observation_space"), ("Actions", "action_space")):
        if description.get(key):
            rows.append(_row(label, str(description[key])))
    if description.get("base_model"):
        rows.append(_row("Base model", str(description["base_model"])))
    rows.append(_row("Checkpoints", f"{len(steps)} at steps {steps} (from the "
                     f"{found.get('steps_from') or 'file names'})"))
    size, limit = float(found.get("size_mb") or 0), float(found.get("copy_limit_mb") or 0)
    linked = form.get("link") is True or (form.get("link") is None and size > limit)
    where = "linked where they are" if linked else "copied into the workspace"
    rows.append(_row("Files", f"{size:.1f} MiB, {where}"))
    if form.get("scores"):
        scores = f"from {form['scores']}"
    elif form.get("env") and description.get("project_type") == "classic":
        scores = ("the workbench evaluates each checkpoint over 10 seeded episodes in the "
                  "background")
    else:
        scores = "none: Best is the final checkpoint"
    rows.append(_row("Scores", scores))
    needs = [n for n in found.get("needs") or []
             if not (form.get("env") and n.startswith("env"))
             and not (form.get("base_model") and n.startswith("base_model"))]
    warnings = list(description.get("warnings") or [])
    table = "<table class='awb-preview-table'>" + "".join(rows) + "</table>"
    if needs:
        table += ("<div class='awb-error'><b>Still needed</b>: "
                  + html.escape(" ".join(needs)) + "</div>")
    else:
        table += "<div><b>Ready to import</b>: the files will be checked once more on Import.</div>"
    for warning in warnings:
        table += f"<div class='awb-hint'>Note: {html.escape(str(warning))}</div>"
    return "<div class='awb-preview'><b>Detected</b>" + table + "</div>"


__all__ = ["ImportDialog", "preview_html"]
