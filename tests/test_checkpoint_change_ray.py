"""A Ray-served agent changes checkpoint the same way, under load, with no failed call.

The new checkpoint is deployed as a second Serve application beside the one serving (each
load gets a fresh application name), probed through its handle, and the agent switches to it;
the old application is deleted once its calls have finished. Same checks as
test_checkpoint_change.py: every answer is exactly one checkpoint's, none fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checkpoint_fixtures import FLIP, NEW_STEP, OLD_STEP
from tests.ray_support import RAY_DEPLOY_TIMEOUT, ray_server_args
from tests.servers import ServerProcess, wait_until
from tests.test_checkpoint_change import ARGS, Load, change, expected, flip_root, settled

pytest_plugins = ["tests.ray_fixtures"]
__all__ = ["expected", "flip_root"]  # fixtures used by name below
pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_served(flip_root: Path, ray_cluster: str) -> Iterator[ServerProcess]:
    server = ServerProcess(flip_root, extra_args=[*ARGS, *ray_server_args(ray_cluster)]).start()
    try:
        yield server
    finally:
        server.stop()


def test_ray_agent_changes_and_rolls_back_under_load(
        ray_served: ServerProcess, expected: dict[int, list[int]]) -> None:
    # About 100 s in CI, by design: a change and a rollback each start new Serve replicas
    # while two clients keep calling, and every answer is checked.
    agent = ray_served.deploy("flip-ray", FLIP, OLD_STEP, options={"backend": "ray"},
                              timeout=RAY_DEPLOY_TIMEOUT)
    with Load(agent, expected, clients=2) as load:
        wait_until(lambda: load.steps_since(0) == {OLD_STEP}, what="answers from step 1")
        asked = change(ray_served, "flip-ray", NEW_STEP)
        after = settled(ray_served, "flip-ray", asked["id"], timeout=RAY_DEPLOY_TIMEOUT)
        assert after["checkpoint_change"]["outcome"] == "serving", after["checkpoint_change"]
        switched = time.monotonic() + 1.0
        wait_until(lambda: load.steps_since(switched), timeout=60, what="answers after it")
        assert load.steps_since(switched) == {NEW_STEP}
        back = ray_served.api("POST", "agents/flip-ray/rollback")
        assert back.status_code == 202, back.text
        rolled = settled(ray_served, "flip-ray", back.json()["id"], timeout=RAY_DEPLOY_TIMEOUT)
        assert rolled["checkpoint"]["step"] == OLD_STEP
        later = time.monotonic() + 1.0
        wait_until(lambda: load.steps_since(later), timeout=60, what="answers after rollback")
        assert load.steps_since(later) == {OLD_STEP}
    assert load.failures == []
    assert rolled["status"] == "Deployed"
