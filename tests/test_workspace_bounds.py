"""Bounded state and secrets: session caps and paging, the request log under a flood of
refused calls, batch sizes the server counts itself, and the discovery file's creation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from server_extension.workspace.sessions import SessionStore
from tests.test_management_api import call, create, obs_payload, wait_status
from workbench_core import discovery


def test_sessions_are_capped_per_caller_and_agent_oldest_first(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite3", max_per_agent=10, max_per_caller=4)
    turn = [{"role": "user", "content": "hi"}]
    for i in range(6):
        store.append("a", f"flood-{i}", turn, caller="10.0.0.9")
    for i in range(3):
        store.append("a", f"real-{i}", turn, caller="10.0.0.1")
    # The flooding caller lost its own oldest sessions, nobody else's.
    assert store.count("a", "10.0.0.9") == 4
    assert store.count("a", "10.0.0.1") == 3
    assert store.get("a", "flood-0") is None
    assert store.get("a", "flood-5") is not None
    store.append("a", "real-0", turn, caller="10.0.0.1")  # a reply keeps a session fresh
    for i in range(4):
        store.append("a", f"other-{i}", turn, caller=f"10.0.1.{i}")
    assert store.count("a") == 10  # the agent cap dropped the least recently updated
    assert store.get("a", "real-0") is not None
    page = store.page("a", limit=4)
    assert len(page["sessions"]) == 4
    assert page["total"] == 10
    assert page["next_offset"] == 4
    last = store.page("a", limit=4, offset=8)
    assert len(last["sessions"]) == 2
    assert last["next_offset"] is None
    seen = [s["session_id"] for o in (0, 4, 8) for s in store.page("a", 4, o)["sessions"]]
    assert len(set(seen)) == 10
    store.close()


def test_old_sessions_file_gains_the_caller_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE sessions (agent TEXT NOT NULL, session_id TEXT NOT NULL,"
                   " title TEXT NOT NULL DEFAULT '', messages TEXT NOT NULL DEFAULT '[]',"
                   " created_at REAL NOT NULL, last_updated REAL NOT NULL,"
                   " PRIMARY KEY (agent, session_id))")
        db.execute("INSERT INTO sessions VALUES ('a', 'kept', 't', '[]', 1, 1)")
    db.close()
    store = SessionStore(path)
    assert store.get("a", "kept") is not None
    store.append("a", "new", [{"role": "user", "content": "x"}], caller="me")
    assert store.count("a", "me") == 1
    store.close()


async def test_flood_of_refused_calls_leaves_the_request_log_to_real_traffic(
        jp_fetch: Any) -> None:
    assert (await create(jp_fetch, "flooded"))[0] == 201
    await call(jp_fetch, "POST", "agents", "api", "agents", "flooded", "connect")
    agent = await wait_status(jp_fetch, "flooded")
    assert agent["status"] == "Deployed", agent
    good = {"Authorization": f"Bearer {agent['api_key']}"}
    body = {**obs_payload(np.zeros((2, 4), np.float32)), "batch_size": 999}  # a lie
    for _ in range(3):
        code, _ = await call(jp_fetch, "POST", "agents", "d", "flooded", "get_action",
                             body=body, headers=good)
        assert code == 200
    for i in range(250):
        headers = {"Authorization": "Bearer awb_nope"} if i % 2 else {}
        code, _ = await call(jp_fetch, "POST", "agents", "d", "flooded", "get_action",
                             body=body, headers=headers)
        assert code == 401
    code, log = await call(jp_fetch, "GET", "agents", "api", "agents", "flooded", "requests")
    assert code == 200, log
    assert [r["status"] for r in log["requests"]] == [200, 200, 200]
    assert {r["batch_size"] for r in log["requests"]} == {2}
    code, summary = await call(jp_fetch, "GET", "agents", "api", "agents", "flooded", "metrics")
    assert code == 200, summary
    assert summary["refused"]["total"] == 250
    assert summary["refused"]["last"]["status"] == 401
    assert summary["last_error"] is None
    assert summary["by_route"]["get_action"] == {"200": 3, "401": 250}


def test_discovery_file_is_private_whatever_was_there(tmp_path: Path) -> None:
    info = discovery.ServerInfo(url="http://127.0.0.1:1/", token="t0ken-secret", pid=1)
    path = tmp_path / "agents-workbench-1.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    # What an older writer's fixed temporary path, or another user, could have left.
    old_tmp = path.with_suffix(".tmp")
    old_tmp.symlink_to(victim)
    path.write_text("{}")
    os.chmod(path, 0o644)
    discovery.write(info, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["token"] == "t0ken-secret"
    assert victim.read_text() == "untouched"
    path.unlink()
    path.symlink_to(victim)  # a final path that is a link is replaced, not followed
    discovery.write(info, path)
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert victim.read_text() == "untouched"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [old_tmp.name]


def test_key_check_sees_another_connections_rotation_at_once() -> None:
    from benchmarks.credential_check import measure

    figures = measure(200)  # raises if a rotation by the other connection is not seen at once
    assert figures["cached_us"] > 0
    assert figures["after_write_us"] > 0
