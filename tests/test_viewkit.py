"""Closing widget trees: nothing left behind in the kernel, and views get to stop their work."""

from __future__ import annotations

import ipywidgets as widgets
from ipywidgets.widgets import widget as widget_module

from agents_widget.client import AgentInfo
from agents_widget.table import AgentTable, RowActions
from agents_widget.viewkit import close_tree


def live_models() -> set[str]:
    """Ids of every widget model the kernel still holds (ipywidgets' registry)."""
    return set(widget_module._instances)


def agents(n: int, tab: str) -> list[AgentInfo]:
    return [AgentInfo.from_json({"name": f"a{i}", "experiment": "cartpole-dqn", "tab": tab,
                                 "status": "Deployed" if i % 2 else "Undeployed",
                                 "connected": bool(i % 2), "checkpoint_step": 100 * i})
            for i in range(n)]


def ignore(_name: str) -> None:
    """Row actions are not clicked here."""


def test_a_closed_table_leaves_no_widget_models_behind() -> None:
    before = live_models()
    for tab in ("classic", "advanced"):
        table = AgentTable(tab, RowActions(ignore, ignore, ignore, ignore))
        table.sync(agents(12, tab))
        table.rows["a3"].ask_delete()  # the lazily built confirmation is closed too
        assert len(live_models() - before) > 12 * 10
        table.close()
    leftover = live_models() - before
    assert not leftover, sorted(type(widget_module._instances[i]).__name__ for i in leftover)


def test_removing_a_row_closes_its_models() -> None:
    table = AgentTable("classic", RowActions(ignore, ignore, ignore, ignore))
    table.sync(agents(3, "classic"))
    before = live_models()
    row = table.rows["a1"]
    table.sync([a for a in agents(3, "classic") if a.name != "a1"])
    assert row.comm is None
    assert row.chevron.layout.comm is None
    assert live_models() < before
    table.close()


class Stoppable(widgets.VBox):
    """A view with something to stop, the way the metrics view has its poller."""

    def __init__(self) -> None:
        self.inner = widgets.HTML("x")
        super().__init__([self.inner])
        self.stopped = False

    def close(self) -> None:
        self.stopped = True
        close_tree(self)


def test_close_tree_lets_a_view_stop_its_work() -> None:
    view = Stoppable()
    outer = widgets.VBox([widgets.HBox([view])])
    close_tree(outer)
    assert view.stopped
    assert view.comm is None
    assert view.inner.comm is None
    assert outer.comm is None
