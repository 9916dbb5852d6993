"""What the panel's tests share: a live server per module, and a front end that records.

The panel is built in the test process against a REAL ``jupyter server`` child process
(:class:`tests.servers.ServerProcess`). There is no browser: :class:`RecordingComm` stands
in for the front end at the one documented seam, ``comm.create_comm`` ("intended to be
replaced"), so tests can read everything the kernel sends to a browser and deliver the
custom messages a browser would send.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import comm
import ipywidgets as widgets
import pytest
from comm.base_comm import BaseComm

# Server helpers live in tests.servers; re-exported here for the tests that import them from
# this module.
from tests.servers import REPO, VoilaApp, start_server, wait_until  # noqa: F401


class RecordingComm(BaseComm):
    """A comm whose front end is this list: every message the kernel publishes is kept."""

    sent: ClassVar[list[dict[str, Any]]] = []

    def publish_msg(self, msg_type: str, data: Any = None, metadata: Any = None,
                    buffers: Any = None, **keys: Any) -> None:
        RecordingComm.sent.append({"msg_type": msg_type, "comm_id": self.comm_id,
                                   "data": data})


@pytest.fixture
def front_end(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Widgets made in this test talk to a recording front end; yields what it received."""
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    yield RecordingComm.sent
    RecordingComm.sent = []


def browser_sends(widget: widgets.Widget, content: dict[str, Any]) -> None:
    """Deliver a custom message from the browser, as ``model.send(content)`` does in JS."""
    widget.comm.handle_msg({"content": {"comm_id": widget.comm.comm_id,
                                        "data": {"method": "custom", "content": content}},
                            "buffers": []})


def custom_replies(sent: list[dict[str, Any]], widget: widgets.Widget) -> list[dict[str, Any]]:
    """The custom messages the kernel sent to ``widget``'s front end."""
    return [m["data"]["content"] for m in sent
            if m["comm_id"] == widget.comm.comm_id and m["data"].get("method") == "custom"]


def saved_state_json() -> str:
    """Every live widget's state as JupyterLab would save it with the notebook."""
    return json.dumps(widgets.Widget.get_manager_state(drop_defaults=False), default=str)
