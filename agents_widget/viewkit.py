"""What the view builders share: the panel's stylesheet and closing widget trees."""

from __future__ import annotations

from typing import TypeVar

import ipywidgets as widgets

# Scoped to awb- classes so nothing leaks into the rest of the notebook page. Colours come
# from JupyterLab's theme variables (with fallbacks for Voila's plain template).
CSS = """
.awb-panel { font-size: var(--jp-ui-font-size1, 13px); }
.awb-topbar { align-items: center; border-bottom: 1px solid var(--jp-border-color2, #ddd);
  padding: 4px 0 8px 0; }
.awb-title { font-size: 1.35em; font-weight: 600; }
.awb-subtitle { color: var(--jp-ui-font-color2, #666); }
.awb-th { font-weight: 600; color: var(--jp-ui-font-color1, #222);
  border-bottom: 1px solid var(--jp-border-color1, #bbb); padding: 4px 6px; white-space: nowrap; }
.awb-td { padding: 2px 6px; align-self: center; overflow: hidden; overflow-wrap: anywhere; }
.awb-td .widget-html-content, .awb-th .widget-html-content { line-height: 1.45; }
.awb-row { border-bottom: 1px solid var(--jp-border-color3, #eee); align-items: center; }
.awb-dim { opacity: 0.55; }
.awb-chosen { background: var(--jp-brand-color3, #bbdefb); opacity: 1; }
.awb-pill { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 0.9em;
  line-height: 1.7; color: #fff; }
.awb-pill-Undeployed { background: #757575; }
.awb-pill-Pending { background: #ef6c00; }
.awb-pill-Deployed { background: #2e7d32; }
.awb-pill-Failed { background: #c62828; }
.awb-reason { color: #c62828; line-height: 1.4; white-space: normal; overflow-wrap: anywhere;
  padding: 2px 6px 6px 6px; }
.awb-reason details { color: var(--jp-ui-font-color1, #222); margin-top: 2px; }
.awb-reason summary { cursor: pointer; color: var(--jp-ui-font-color2, #666); }
.awb-reason pre { white-space: pre-wrap; font-size: 0.9em; margin: 4px 0 0 0; max-height: 240px;
  overflow: auto; }
.awb-topbar .jupyter-button { width: auto; flex: 0 0 auto; }
.awb-error { color: #c62828; white-space: pre-wrap; }
.awb-hint { color: var(--jp-ui-font-color2, #666); font-size: 0.9em; }
.awb-info { background: var(--jp-layout-color2, #f3f6fa); border-radius: 4px; padding: 8px 10px;
  line-height: 1.45; }
.awb-chip { font-size: 0.75em; font-weight: 500; border-radius: 10px; padding: 1px 8px;
  background: var(--jp-layout-color3, #e0e0e0); vertical-align: middle; }
.awb-wizard { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 4px; }
.awb-wizard-title { font-size: 1.2em; font-weight: 600; }
.awb-step { color: var(--jp-ui-font-color2, #777); }
.awb-step-on { color: var(--jp-ui-font-color0, #000); font-weight: 600; }
.awb-details { background: var(--jp-layout-color1, #fafafa); padding: 8px 12px 12px 24px;
  border-left: 3px solid #2e7d32; }
.awb-label { font-weight: 600; min-width: 110px; }
.awb-code pre { background: var(--jp-layout-color2, #f5f5f5); padding: 8px; margin: 0;
  font-family: var(--jp-code-font-family, monospace); font-size: 12px; line-height: 1.4;
  white-space: pre; overflow-x: auto; max-height: 420px; }
.awb-notice { padding: 6px 10px; border-radius: 4px; background: #fdecea; color: #8a1c1c; }
.awb-ok { padding: 4px 10px; border-radius: 4px; background: #edf7ed; color: #1e4620; }
.awb-preview { background: var(--jp-layout-color2, #f3f6fa); border-radius: 4px;
  padding: 8px 10px; line-height: 1.45; }
.awb-preview-table th { text-align: left; padding: 1px 12px 1px 0; font-weight: 600;
  vertical-align: top; white-space: nowrap; }
.awb-preview-table td { padding: 1px 0; overflow-wrap: anywhere; }
.awb-evaluating progress { width: 80px; height: 0.8em; vertical-align: middle; }
.awb-gap4 { gap: 4px; } .awb-gap6 { gap: 6px; } .awb-gap8 { gap: 8px; } .awb-gap24 { gap: 24px; }
"""

W = TypeVar("W", bound=widgets.DOMWidget)


def gap(box: W, pixels: int) -> W:
    """``box`` with CSS ``gap`` between its children (ipywidgets' Layout has no gap)."""
    box.add_class(f"awb-gap{pixels}")
    return box


def stylesheet() -> widgets.HTML:
    """An HTML widget carrying the panel's CSS (display it once, inside the panel)."""
    return widgets.HTML(f"<style>{CSS}</style>", layout=widgets.Layout(display="none"))


def close_tree(root: widgets.Widget) -> None:
    """Close ``root`` and every widget below it (children of boxes, tabs and stacks).

    Closing frees the comm and the front-end model; the panel calls this whenever it
    rebuilds rows so that old widgets do not pile up in the kernel or the page. A descendant
    whose class has its own ``close`` (a view with a poller or a worker thread) is closed
    through it, so it can stop what it runs; that ``close`` is expected to close its own
    subtree, usually by calling ``close_tree(self)``. ``root`` itself is closed as a plain
    widget, which is what lets such a ``close`` call this without recursing.
    """
    for child in getattr(root, "children", None) or ():
        if not isinstance(child, widgets.Widget):
            continue
        if type(child).close is not widgets.Widget.close:
            child.close()
        else:
            close_tree(child)
    close_widget(root)


def close_widget(widget: widgets.Widget) -> None:
    """Close one widget and its own Layout and style models.

    ``Widget.close`` leaves those behind, in the kernel's registry and the page, which added
    up to some twenty models per table row that was ever built.
    """
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            widgets.Widget.close(part)
    widgets.Widget.close(widget)
