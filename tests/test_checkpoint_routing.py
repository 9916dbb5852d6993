"""How a split picks the checkpoint of each call: by share, and sticky per LLM session.

The real :class:`Deployer` over a real registry; the two deployments are never called, only
chosen between, so they hold no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from server_extension.serving.deployer import Deployer, LiveDeployment
from server_extension.serving.runtimes import Runtime
from server_extension.workspace.registry import Registry
from workbench_core.store import ExperimentStore


def split_pair(percent: int) -> tuple[LiveDeployment, LiveDeployment]:
    no_model = cast(Runtime, None)
    primary = LiveDeployment(name="a", deployment_id="dep_1", api_key="k", runtime=no_model,
                             checkpoint_step=1)
    canary = LiveDeployment(name="a", deployment_id="dep_1", api_key="k", runtime=no_model,
                            checkpoint_step=2)
    primary.canary, primary.canary_percent, primary.canary_change = canary, percent, 7
    return primary, canary


def deployer(tmp_path: Path) -> Deployer:
    return Deployer(Registry(tmp_path / "registry.sqlite3"), ExperimentStore(tmp_path))


def test_sessions_stick_to_one_checkpoint_and_share_matches(tmp_path: Path) -> None:
    dep = deployer(tmp_path)
    primary, canary = split_pair(30)
    chosen: dict[str, Any] = {}
    for i in range(2000):
        session = f"s_{i:04x}"
        first = dep.target(primary, session)
        # The same session always gets the same checkpoint, however often it calls.
        assert all(dep.target(primary, session) is first for _ in range(5))
        chosen[session] = first
    share = sum(v is canary for v in chosen.values()) / len(chosen)
    assert 0.26 < share < 0.34, share  # 30 % asked; 2000 sessions: +-4 sd is +-0.04
    anonymous = sum(dep.target(primary) is canary for _ in range(4000)) / 4000
    assert 0.26 < anonymous < 0.34, anonymous


def test_no_split_and_retired_deployments_route_to_the_current_one(tmp_path: Path) -> None:
    dep = deployer(tmp_path)
    primary, canary = split_pair(50)
    primary.canary = None
    assert dep.target(primary, "s") is primary
    # A call that looked up the deployment a change then replaced goes to its successor.
    dep._live["a"] = canary
    primary.retired = True
    assert dep.target(primary) is canary


def test_changes_left_open_by_a_stopped_server_are_closed_on_start(tmp_path: Path) -> None:
    """A serving server that dies mid-change leaves rows ``loading`` or ``canary``; the next
    one to serve closes them (or the agent could never change again) and keeps requests."""
    from server_extension.workspace.registry import (
        AgentRecord,
        RegistryError,
        canary_of,
        checkpoint_history,
        mark_change,
        request_change,
    )

    registry = Registry(tmp_path / "registry.sqlite3")
    try:
        for name in ("a", "b", "c"):
            registry.create_agent(AgentRecord(name=name, tab="classic", experiment="e",
                                              checkpoint_rule="best", checkpoint_step=1,
                                              algo="DQN"))
        loading = request_change(registry, "a", experiment="e", rule="specific", step=2)
        mark_change(registry, loading.id, "loading")
        split = request_change(registry, "b", experiment="e", rule="specific", step=2,
                               kind="split", percent=20)
        mark_change(registry, split.id, "canary")
        asked = request_change(registry, "c", experiment="e", rule="specific", step=2)
        with pytest.raises(RegistryError, match="already changing"):
            request_change(registry, "a", experiment="e", rule="final", step=3)

        Deployer(registry, ExperimentStore(tmp_path))._end_unfinished_changes()
        assert [(c.outcome, bool(c.error)) for c in checkpoint_history(registry, "a")] == [
            ("failed", True)]
        assert canary_of(registry, "b") is None
        assert checkpoint_history(registry, "b")[0].outcome == "aborted"
        assert checkpoint_history(registry, "c")[0].id == asked.id
        assert checkpoint_history(registry, "c")[0].outcome == "requested"
        request_change(registry, "a", experiment="e", rule="final", step=3)  # free again
    finally:
        registry.close()
