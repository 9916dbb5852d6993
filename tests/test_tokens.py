"""Access tokens: the registry table (schema 3, hashed), the management routes, the panel
section, and chat sessions scoped by caller.

The REST routes run through a real in-process Jupyter server (jp_fetch) over an empty
workspace; the panel section runs against a real child server with a recording front end.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents_widget.client import WorkbenchClient
from agents_widget.tokens_view import AccessTokens
from server_extension.workspace.callers import DEPLOYMENT_KEY, Caller, visible_owner
from server_extension.workspace.registry import MIGRATIONS, Registry
from server_extension.workspace.sessions import SessionStore
from server_extension.workspace.tokens import TOKEN_PREFIX, mint, revoke, verify
from tests.panel_support import (
    browser_sends,
    custom_replies,
    front_end,
    saved_state_json,
    start_server,
    wait_until,
)
from tests.servers import ServerProcess
from tests.test_management_api import call
from workbench_core.discovery import ServerInfo

__all__ = ["front_end"]  # a fixture used by name below


@pytest.fixture
def jp_server_config(tmp_path: Path) -> dict[str, Any]:
    """In-process server over an empty workspace (tokens need no experiments)."""
    return {
        "ServerApp": {"jpserver_extensions": {"server_extension": True},
                      "allow_unauthenticated_access": False},
        "AgentsWorkbenchApp": {"root_dir": str(tmp_path / "ws"), "health_check_interval": 0},
    }


# -- registry and tokens module -------------------------------------------------------------------


def test_schema_2_file_gains_the_token_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; PRAGMA user_version = 2;")
    db.execute("INSERT INTO agents (name, tab, experiment, checkpoint_rule, checkpoint_step,"
               " algo, created_at, updated_at) VALUES ('old', 'classic', 'cartpole-dqn',"
               " 'best', 500, 'DQN', 1, 1)")
    db.commit()
    db.close()
    registry = Registry(path)
    assert registry.schema_version == len(MIGRATIONS) >= 3
    assert registry.get("old").algo == "DQN"
    minted = mint(registry, "laptop")
    assert verify(registry, minted.secret) == minted.record
    registry.close()


def test_only_the_hash_is_stored_and_revocation_is_immediate(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    registry = Registry(path)
    other = Registry(path)  # a second server over the same workspace
    minted = mint(registry, "ci")
    assert minted.secret.startswith(TOKEN_PREFIX)
    assert verify(other, minted.secret) is not None
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert minted.secret.encode() not in raw
    # Nor its random part alone (the id before it is public). Not rpartition("_"): the random
    # part may hold "_" itself, and ci23 then searched the file for the one character "Y".
    random_part = minted.secret.removeprefix(f"{TOKEN_PREFIX}{minted.record.id}_")
    assert len(random_part) >= 40
    assert random_part.encode() not in raw
    revoke(registry, minted.record.id)
    assert verify(other, minted.secret) is None
    assert verify(registry, minted.secret + "x") is None
    assert verify(registry, "awb_not-a-token") is None
    other.close()
    registry.close()


# -- sessions by caller ---------------------------------------------------------------------------


def test_sessions_are_scoped_by_caller(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "sessions.sqlite3")
    alice, bob = Caller("a" * 32), Caller("b" * 32)
    turn = [{"role": "user", "content": "hi"}]
    store.append("chat", "s-alice", turn, alice.owner)
    store.append("chat", "s-bob", turn, bob.owner)
    store.append("chat", "s-key", turn, DEPLOYMENT_KEY.owner)

    def ids(caller: Caller, scope: str | None) -> set[str]:
        return {s["session_id"] for s in store.summaries("chat", visible_owner(caller, scope))}

    assert ids(alice, "user") == ids(alice, None) == {"s-alice"}
    assert ids(alice, "organization") == {"s-alice", "s-bob", "s-key"}
    assert ids(DEPLOYMENT_KEY, "user") == {"s-alice", "s-bob", "s-key"}
    mine = visible_owner(alice, "user")
    assert store.get("chat", "s-bob", mine) is None
    assert store.taken("chat", "s-bob", mine)
    assert not store.taken("chat", "s-alice", mine)
    assert not store.delete("chat", "s-bob", mine)
    assert store.delete("chat", "s-alice", mine)
    store.close()


def test_sessions_file_without_owners_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE sessions (agent TEXT NOT NULL, session_id TEXT NOT NULL, title TEXT"
               " NOT NULL DEFAULT '', messages TEXT NOT NULL DEFAULT '[]', created_at REAL NOT"
               " NULL, last_updated REAL NOT NULL, PRIMARY KEY (agent, session_id))")
    db.execute("INSERT INTO sessions VALUES ('chat', 'old', 't', '[]', 1, 1)")
    db.commit()
    db.close()
    store = SessionStore(path)
    assert [s["session_id"] for s in store.summaries("chat", None)] == ["old"]
    assert store.summaries("chat", Caller("c" * 32).owner) == []
    store.close()


# -- REST ---------------------------------------------------------------------------------------


async def test_mint_list_revoke_through_the_management_api(jp_fetch: Any) -> None:
    code, created = await call(jp_fetch, "POST", "agents", "api", "tokens",
                               body={"name": " laptop "})
    assert code == 201
    assert set(created) == {"id", "name", "token", "created_at", "last_used_at"}
    assert created["name"] == "laptop"
    assert created["token"].startswith(TOKEN_PREFIX)
    code, listed = await call(jp_fetch, "GET", "agents", "api", "tokens")
    assert code == 200
    assert listed["tokens"] == [{k: v for k, v in created.items() if k != "token"}]
    assert created["token"] not in json.dumps(listed)

    code, _ = await call(jp_fetch, "DELETE", "agents", "api", "tokens", created["id"])
    assert code == 204
    code, again = await call(jp_fetch, "DELETE", "agents", "api", "tokens", created["id"])
    assert code == 404
    assert "already revoked" in again["message"]
    assert (await call(jp_fetch, "GET", "agents", "api", "tokens"))[1] == {"tokens": []}


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": 3}, {"name": "x" * 101},
                                  {"name": "a\nb"}])
async def test_bad_token_names_are_400(jp_fetch: Any, body: dict[str, Any]) -> None:
    code, answer = await call(jp_fetch, "POST", "agents", "api", "tokens", body=body)
    assert code == 400
    assert "name" in answer["message"]


async def test_token_routes_need_jupyter_auth(jp_fetch: Any) -> None:
    code, created = await call(jp_fetch, "POST", "agents", "api", "tokens", body={"name": "x"})
    assert code == 201
    # An access token is not a Jupyter credential: the management API refuses it.
    headers = {"Authorization": f"Bearer {created['token']}"}
    code, _ = await call(jp_fetch, "GET", "agents", "api", "tokens", headers=headers)
    assert code == 403


# -- the panel's section --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("tokens-panel") / "ws", None,
                          extra_args=["--AgentsWorkbenchApp.health_check_interval=0"])
    try:
        yield server
    finally:
        server.stop()


def test_panel_section_creates_shows_once_and_revokes(
        live: ServerProcess, front_end: list[dict[str, Any]]) -> None:
    client = WorkbenchClient(ServerInfo(url=live.url, token=live.token))
    section = AccessTokens(client)
    try:
        section.refresh().result(10)
        assert "No access tokens yet" in section.rows.children[0].value
        section.name_input.value = "notebook"
        section.create().result(10)
        assert section.new_token.layout.display == "flex"
        # The secret reaches the browser only as the answer to a click's request ...
        browser_sends(section.secret, {"type": "request", "id": "1"})
        secret = custom_replies(front_end, section.secret)[-1]["text"]
        assert secret.startswith(TOKEN_PREFIX)
        # ... never as widget state, and not in the widget messages of this kernel.
        assert secret not in saved_state_json()
        assert secret not in json.dumps([m for m in front_end if m["data"].get("method")
                                         != "custom"], default=str)
        listed = requests_tokens(live)
        assert [t["name"] for t in listed] == ["notebook"]
        row = section.rows.children[0]
        assert "notebook" in row.label.value

        row.revoke_button.click()
        assert row.confirm_box.layout.display == "flex"
        row.cancel_button.click()
        assert row.confirm_box.layout.display == "none"
        assert requests_tokens(live)  # cancel revoked nothing
        row.revoke_button.click()
        row.confirm_button.click()
        wait_until(lambda: not requests_tokens(live), 10, "the token to be revoked")
        wait_until(lambda: "No access tokens yet" in getattr(section.rows.children[0], "value",
                                                             ""), 10, "the list to refresh")
        section.done_button.click()
        browser_sends(section.secret, {"type": "request", "id": "2"})
        assert "error" in custom_replies(front_end, section.secret)[-1]
    finally:
        section.close()
        client.close()


def requests_tokens(server: ServerProcess) -> list[dict[str, Any]]:
    return list(server.api("GET", "tokens").json()["tokens"])
