"""The panel's Import dialog: bring a checkpoint trained elsewhere into the workspace.

A path on the server (typed, or picked in a folder browser rooted where Jupyter serves
files), the experiment's name, the environment and its kwargs, a LoRA adapter's base model,
a scores CSV, and link or copy. **Import** sends ``POST agents/api/experiments`` (the same
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
            "helpers' <code>_&lt;i&gt;_&lt;steps&gt;.pt</code>), a Hugging Face "
            "save_pretrained folder, or a LoRA adapter. The files are loaded and checked in "
            f"a worker process; nothing is written unless they pass. Workspace: "
            f"<code>{html.escape(str(root))}</code>")
        self.path = widgets.Text(description="Path", placeholder="a file, folder or glob",
                                 layout=widgets.Layout(width="100%"))
        self.browser = widgets.Select(options=[], rows=8, description="Browse",
                                      layout=widgets.Layout(width="100%"))
        self.browser.observe(self._picked, "value")
        self.name = widgets.Text(description="Name", placeholder="from the file names")
        self.env = widgets.Text(description="Environment",
                                placeholder="CartPole-v1 or mpe2.simple_spread_v3")
        self.env_kwargs = widgets.Text(description="Env kwargs", placeholder='{"N": 3}')
        self.base_model = widgets.Text(description="Base model",
                                       placeholder="LoRA adapters: the base model's folder")
        self.scores = widgets.Text(description="Scores", placeholder="a CSV: step, score")
        self.link = widgets.Checkbox(
            description="Link to the files instead of copying them (copy is the default "
                        "under 512 MiB)", indent=False)
        self.import_button = widgets.Button(description="Import", button_style="primary",
                                            icon="upload")
        self.cancel_button = widgets.Button(description="Cancel")
        self.status = widgets.HTML()
        self.import_button.on_click(lambda _b: self.start())
        self.cancel_button.on_click(lambda _b: on_cancel())
        super().__init__([self.header, self.path, self.browser, self.name, self.env,
                          self.env_kwargs, self.base_model, self.scores, self.link,
                          widgets.HBox([self.import_button, self.cancel_button]),
                          self.status], layout=widgets.Layout(width="100%"))
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
                 if not e.name.startswith(".")][:MAX_LISTED]
        up = [UP] if folder != self.root else []
        self.browser.unobserve(self._picked, "value")
        self.browser.options = up + names
        self.browser.value = None
        self.browser.observe(self._picked, "value")

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

    def start(self) -> Future[Any] | None:
        """Send the import; the status line says what happens."""
        if not self.path.value.strip():
            self.status.value = "Path: give a checkpoint file, a folder or a glob."
            return None
        try:
            kwargs = json.loads(self.env_kwargs.value) if self.env_kwargs.value.strip() else {}
        except ValueError as exc:
            self.status.value = f"Env kwargs: not JSON ({html.escape(str(exc))})."
            return None
        self.import_button.disabled = True
        self.status.value = "Importing: loading and checking the files in a worker process…"
        future = self._submit(
            import_checkpoint, self.path.value.strip(), name=self.name.value.strip() or None,
            env=self.env.value.strip() or None, env_kwargs=kwargs,
            base_model=self.base_model.value.strip() or None,
            scores=self.scores.value.strip() or None, link=True if self.link.value else None,
            server=self._server)
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


__all__ = ["ImportDialog"]
