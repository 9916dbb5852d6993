"""Copy and reveal controls for text that must not be saved with the notebook (API keys).

Both widgets keep their text in the kernel only. The browser asks for it with a custom
message when the user clicks (``model.send``), the kernel answers with another custom message
(:meth:`ipywidgets.Widget.send`), and the front end uses it at once: writes it to the
clipboard, or shows it in the page until the user hides it. Custom messages are not widget
state, so the text never reaches saved widget state or notebook outputs.

The front-end code is inline ES module code run by anywidget (no build step), and works
wherever anywidget's front end is installed: JupyterLab, Notebook 7 and Voila. Example::

    key = CopyButton(lambda: state.api_key("cartpole"), label="Copy key")
    secret = SecretField(lambda: state.api_key("cartpole"))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anywidget
import traitlets

TextProvider = Callable[[], str | None]

_SHARED_JS = r"""
const TIMEOUT_MS = 10000;

// The text lives in the kernel only: ask for it with a custom message, which is never
// part of the widget's saved state, and wait for the answer carrying the same id.
function askKernel(model) {
  const id = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
  return new Promise((resolve, reject) => {
    const onMsg = (msg) => {
      if (!msg || msg.id !== id) return;
      clearTimeout(timer);
      model.off("msg:custom", onMsg);
      if (msg.error) reject(new Error(msg.error));
      else resolve(String(msg.text));
    };
    const timer = setTimeout(() => {
      model.off("msg:custom", onMsg);
      reject(new Error("the kernel did not answer (is it busy or stopped?)"));
    }, TIMEOUT_MS);
    model.on("msg:custom", onMsg);
    model.send({ type: "request", id });
  });
}

function legacyCopy(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } finally {
    area.remove(); // never leave the text in the page
  }
  if (!ok) throw new Error("the browser refused to copy");
}

// Writes the text once the kernel answers. Handing the clipboard a promise inside the click
// keeps the click's user activation alive across the round trip, which Safari and Firefox
// require; plain writeText (Chrome) and execCommand (insecure http pages) are fallbacks.
async function copyText(textPromise) {
  const clip = navigator.clipboard;
  if (clip && clip.write && typeof ClipboardItem !== "undefined") {
    try {
      const blob = textPromise.then((t) => new Blob([t], { type: "text/plain" }));
      await clip.write([new ClipboardItem({ "text/plain": blob })]);
      return;
    } catch (err) {
      await textPromise; // a kernel error wins over a clipboard one
    }
  }
  const text = await textPromise;
  if (clip && clip.writeText) {
    try {
      await clip.writeText(text);
      return;
    } catch (err) {
      // fall through to the legacy path
    }
  }
  legacyCopy(text);
}

function makeButton(label, title) {
  const button = document.createElement("button");
  button.className = "jupyter-widgets jupyter-button widget-button aw-kt-button";
  button.textContent = label;
  if (title) button.title = title;
  return button;
}

function wireCopy(model, button, labelTrait) {
  let reset = null;
  const flash = (text, title) => {
    button.textContent = text;
    button.title = title || "";
    clearTimeout(reset);
    reset = setTimeout(() => {
      button.textContent = model.get(labelTrait);
      button.title = model.get("hint");
    }, 1800);
  };
  const onClick = () => {
    copyText(askKernel(model)).then(
      () => flash("Copied ✓", "Copied to the clipboard"),
      (err) => flash("Copy failed", `Could not copy: ${err && err.message ? err.message : err}`),
    );
  };
  button.addEventListener("click", onClick);
  return () => {
    clearTimeout(reset);
    button.removeEventListener("click", onClick);
  };
}
"""

_COPY_JS = _SHARED_JS + r"""
function render({ model, el }) {
  const button = makeButton(model.get("label"), model.get("hint"));
  el.classList.add("aw-kt");
  el.appendChild(button);
  const unwire = wireCopy(model, button, "label");
  const onLabel = () => { button.textContent = model.get("label"); };
  model.on("change:label", onLabel);
  return () => {
    unwire();
    model.off("change:label", onLabel);
  };
}
export default { render };
"""

_SECRET_JS = _SHARED_JS + r"""
function render({ model, el }) {
  el.classList.add("aw-kt", "aw-kt-secret");
  const value = document.createElement("code");
  value.className = "aw-kt-value";
  value.textContent = model.get("mask");
  const reveal = makeButton("Reveal", "Show the key in this page (it is not saved)");
  const copy = makeButton(model.get("copy_label"), model.get("hint"));
  el.append(value, reveal, copy);

  let shown = false;
  const hide = () => {
    shown = false;
    value.textContent = model.get("mask");
    reveal.textContent = "Reveal";
    reveal.title = "Show the key in this page (it is not saved)";
  };
  const onReveal = () => {
    if (shown) {
      hide();
      return;
    }
    reveal.disabled = true;
    askKernel(model).then(
      (text) => {
        shown = true;
        value.textContent = text;
        reveal.textContent = "Hide";
        reveal.title = "Mask the key again";
      },
      (err) => {
        value.textContent = `(${err && err.message ? err.message : err})`;
      },
    ).finally(() => { reveal.disabled = false; });
  };
  // The kernel says "reset" when the key changed or went away: never show a stale key.
  const onMsg = (msg) => { if (msg && msg.type === "reset") hide(); };
  reveal.addEventListener("click", onReveal);
  model.on("msg:custom", onMsg);
  const unwire = wireCopy(model, copy, "copy_label");
  return () => {
    unwire();
    reveal.removeEventListener("click", onReveal);
    model.off("msg:custom", onMsg);
    value.textContent = "";
  };
}
export default { render };
"""

_CSS = """
.aw-kt { display: inline-flex; align-items: center; gap: 6px; }
.aw-kt .aw-kt-button { width: auto; padding: 0 10px; }
.aw-kt-secret .aw-kt-value {
  font-family: var(--jp-code-font-family, monospace);
  padding: 2px 6px; border-radius: 3px; min-width: 16em;
  background: var(--jp-layout-color2, #eee); user-select: all; word-break: break-all;
}
"""


class _KernelText(anywidget.AnyWidget):
    """Answers the front end's requests for the text with a custom message."""

    # Not ``tooltip``: DOMWidget's own tooltip makes the base view read a ``description``
    # trait these widgets do not have.
    hint = traitlets.Unicode("").tag(sync=True)

    def __init__(self, provider: TextProvider, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # A plain attribute, not a trait: the text itself is never synced or saved.
        self._provider = provider
        self.on_msg(self._on_request)

    def answer(self, request_id: object) -> dict[str, Any]:
        """The reply to one front-end request: the text, or why there is none."""
        try:
            text = self._provider()
        except Exception as exc:  # noqa: BLE001 - the browser shows the reason instead
            return {"type": "answer", "id": request_id, "error": str(exc)}
        if text is None:
            return {"type": "answer", "id": request_id,
                    "error": "nothing to copy right now (is the agent still Deployed?)"}
        return {"type": "answer", "id": request_id, "text": text}

    def _on_request(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "request":
            self.send(self.answer(content.get("id")))


class CopyButton(_KernelText):
    """A button that copies ``provider()`` to the browser's clipboard."""

    _esm = _COPY_JS
    _css = _CSS
    label = traitlets.Unicode("Copy").tag(sync=True)

    def __init__(self, provider: TextProvider, label: str = "Copy", hint: str = "",
                 **kwargs: Any) -> None:
        super().__init__(provider, label=label, hint=hint or "Copy to the clipboard",
                         **kwargs)


class SecretField(_KernelText):
    """A masked secret with Reveal/Hide and Copy; the secret is never a trait."""

    _esm = _SECRET_JS
    _css = _CSS
    mask = traitlets.Unicode("•" * 24).tag(sync=True)
    copy_label = traitlets.Unicode("Copy").tag(sync=True)

    def __init__(self, provider: TextProvider, copy_label: str = "Copy", **kwargs: Any) -> None:
        super().__init__(provider, copy_label=copy_label,
                         hint="Copy the key to the clipboard (it is not shown or saved)",
                         **kwargs)

    def hide(self) -> None:
        """Mask the secret in every view, e.g. after the key was rotated."""
        self.send({"type": "reset"})
