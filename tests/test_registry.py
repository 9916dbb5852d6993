"""The registry's schema migrations and per-agent options, on real SQLite files."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path
from typing import Any

from server_extension.workspace.registry import MIGRATIONS, AgentRecord, Registry


def _record(name: str, **extra: Any) -> AgentRecord:
    return AgentRecord(name=name, tab="classic", experiment="cartpole-dqn",
                       checkpoint_rule="best", checkpoint_step=500, algo="DQN", **extra)


def test_version_1_file_is_upgraded_in_place_keeping_its_agents(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    # A file as the first release wrote it: schema 1, one agent with a deployment.
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO agents (name, tab, experiment, checkpoint_rule, checkpoint_step,"
               " algo, created_at, updated_at) VALUES ('old', 'classic', 'cartpole-dqn',"
               " 'best', 500, 'DQN', 1, 1)")
    db.execute("INSERT INTO deployments (agent, deployment_id, api_key, status, connected,"
               " updated_at) VALUES ('old', 'dep_1', 'awb_x', 'Deployed', 1, 1)")
    db.commit()
    db.close()

    registry = Registry(path)
    assert registry.schema_version == len(MIGRATIONS)
    old = registry.get("old")
    assert old.options == {}
    assert (old.status, old.connected, old.api_key) == ("Deployed", True, "awb_x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registry.close()


def test_options_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    registry = Registry(path)
    registry.create_agent(_record("plain"))
    registry.create_agent(_record("tuned", options={"backend": "local", "replicas": 2}))
    registry.close()

    reopened = Registry(path)
    assert reopened.get("plain").options == {}
    assert reopened.get("tuned").options == {"backend": "local", "replicas": 2}
    reopened.close()
