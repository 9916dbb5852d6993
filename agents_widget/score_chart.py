"""A score-vs-step chart for the wizard, drawn as SVG in the page, whose checkpoints can be clicked.

The line is the experiment's logged metric; a dot marks each checkpoint that has the score,
and the chosen checkpoint gets a ring and a dashed rule. Clicking a dot sends the step to
the kernel (a custom message, so clicking the same dot twice still counts), where
``on_pick`` callbacks receive it. Drawn in the browser rather than as a PNG so the dots can
take clicks and the mark can move without a round of rendering in the kernel. Example::

    chart = ScoreChart("Training score", points=[(1000, 12.0), (2000, 30.5)],
                       marks=[(2000, 30.5)], chosen=2000)
    chart.on_pick(lambda step: wizard.pick(step))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anywidget
import traitlets

_CHART_JS = r"""
const NS = "http://www.w3.org/2000/svg";
const W = 440, H = 240, LEFT = 56, RIGHT = 14, TOP = 28, BOTTOM = 34;

// Enough decimals that the ticks of a narrow range (a loss moving in its third decimal)
// do not all read the same.
function label(v, span) {
  const digits = Math.min(4, Math.max(0, Math.ceil(-Math.log10(span / 3)) + 1));
  return v.toLocaleString("en-US", { maximumFractionDigits: digits,
                                     minimumFractionDigits: Math.min(digits, 2) });
}

function render({ model, el }) {
  el.classList.add("awb-chart");
  function draw() {
    const points = model.get("points"), marks = model.get("marks");
    const chosen = model.get("chosen"), colour = model.get("colour");
    const title = model.get("title");
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    const add = (tag, attrs, text) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      svg.appendChild(node);
      return node;
    };
    add("text", { x: W / 2, y: 17, "text-anchor": "middle", "font-size": 13,
                  "font-weight": 600, fill: "currentColor" }, title);
    const all = points.concat(marks);
    if (!all.length) { el.replaceChildren(svg); return; }
    const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.08;
    y0 -= pad; y1 += pad;
    const sx = s => LEFT + (s - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    const sy = v => TOP + (y1 - v) / (y1 - y0) * (H - TOP - BOTTOM);
    const grid = { stroke: "currentColor", "stroke-opacity": 0.15 };
    for (let i = 0; i <= 3; i++) {
      const v = y0 + (y1 - y0) * i / 3;
      add("line", { x1: LEFT, x2: W - RIGHT, y1: sy(v), y2: sy(v), ...grid });
      add("text", { x: LEFT - 6, y: sy(v) + 4, "text-anchor": "end", "font-size": 10,
                    fill: "currentColor" }, label(v, y1 - y0));
    }
    for (const s of [Math.min(...xs), Math.max(...xs)]) {
      add("text", { x: sx(s), y: H - BOTTOM + 14, "text-anchor": "middle", "font-size": 10,
                    fill: "currentColor" }, s.toLocaleString("en-US"));
    }
    add("text", { x: (LEFT + W - RIGHT) / 2, y: H - 6, "text-anchor": "middle",
                  "font-size": 10, fill: "currentColor" }, "step");
    if (points.length) {
      add("polyline", { points: points.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "),
                        fill: "none", stroke: colour, "stroke-width": 1.5 });
    }
    if (chosen !== null && chosen !== undefined) {
      add("line", { x1: sx(chosen), x2: sx(chosen), y1: TOP, y2: H - BOTTOM,
                    stroke: "#d62728", "stroke-dasharray": "4 3", "stroke-width": 1.2,
                    class: "awb-chart-rule" });
    }
    for (const [step, value] of marks) {
      const on = step === chosen;
      const dot = add("circle", { cx: sx(step), cy: sy(value), r: on ? 6 : 4.5,
                                  fill: on ? "#d62728" : colour, stroke: "#fff",
                                  "stroke-width": 1.5, class: "awb-chart-point" +
                                  (on ? " awb-chart-chosen" : ""), "data-step": step });
      dot.style.cursor = "pointer";
      const tip = document.createElementNS(NS, "title");
      tip.textContent = `step ${step.toLocaleString("en-US")}: ${label(value, (y1 - y0) / 10)}` +
        (on ? " (chosen)" : " (click to choose this checkpoint)");
      dot.appendChild(tip);
      dot.addEventListener("click", () => model.send({ type: "pick", step }));
    }
    el.replaceChildren(svg);
  }
  draw();
  for (const name of ["points", "marks", "chosen", "colour", "title"])
    model.on(`change:${name}`, draw);
}

export default { render };
"""


class ScoreChart(anywidget.AnyWidget):
    """A line of ``points`` with clickable checkpoint dots (``marks``); ``chosen`` is ringed."""

    _esm = _CHART_JS
    title = traitlets.Unicode("").tag(sync=True)
    points: traitlets.List[list[float]] = traitlets.List().tag(sync=True)
    marks: traitlets.List[list[float]] = traitlets.List().tag(sync=True)
    chosen = traitlets.Int(None, allow_none=True).tag(sync=True)
    colour = traitlets.Unicode("#1f77b4").tag(sync=True)

    def __init__(self, title: str = "", *, points: Iterable[tuple[int, float]] = (),
                 marks: Iterable[tuple[int, float]] = (), chosen: int | None = None,
                 colour: str = "#1f77b4", **kwargs: Any) -> None:
        super().__init__(title=title, points=[list(p) for p in points],
                         marks=[list(m) for m in marks], chosen=chosen, colour=colour,
                         **kwargs)
        self._pick_callbacks: list[Callable[[int], object]] = []
        self.on_msg(self._on_message)

    def on_pick(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(step)`` when the user clicks a checkpoint's dot."""
        self._pick_callbacks.append(callback)

    def click(self, step: int) -> None:
        """What clicking the dot of ``step`` does (for code and tests)."""
        self._on_message(self, {"type": "pick", "step": step}, [])

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("type") != "pick":
            return
        step = content.get("step")
        if not isinstance(step, int) or step not in {int(m[0]) for m in self.marks}:
            return  # only a checkpoint on the chart can be chosen
        for callback in self._pick_callbacks:
            callback(step)
