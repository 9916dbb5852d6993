"""An experiment is its folder; a bad folder is one broken experiment, never a 5xx.

Through a real in-process server over a copy of the demo workspace, with folders made the way
a user (or a disk) makes them: copied and corrupted, hostile metrics and JSON, huge steps, a
checkpoint that links to /usr.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tests.test_management_api import call, create, wait_status
from workbench_core.store import ExperimentStore

SOURCE = "cartpole-dqn"


def clone(workspace: Path, name: str) -> Path:
    """``cp -r experiments/cartpole-dqn experiments/<name>`` (experiment.json unchanged)."""
    folder = workspace / "experiments" / name
    shutil.copytree(workspace / "experiments" / SOURCE, folder)
    return folder


def hostile_folders(workspace: Path) -> dict[str, str]:
    """Make one bad folder per case; return {folder: what is wrong with it}."""
    made: dict[str, str] = {}

    def metrics(name: str, text: bytes, what: str) -> None:
        (clone(workspace, name) / "metrics.csv").write_bytes(text)
        made[name] = what

    metrics("bad-inf", b"step,training_score,evaluation_score\ninf,1,1\n1e400,2,2\n", "inf step")
    metrics("bad-utf8", b"step,training_score\n\xff\xfe\x00bad,1\n", "not UTF-8")
    metrics("bad-field", b"step,training_score\n1," + b"x" * 200_000 + b"\n", "huge field")
    deep = clone(workspace, "bad-deep")
    (deep / "experiment.json").write_text("[" * 100_000 + "]" * 100_000)
    made["bad-deep"] = "nested JSON"
    typed = clone(workspace, "bad-base-model")
    info = json.loads((typed / "experiment.json").read_text())
    (typed / "experiment.json").write_text(json.dumps({**info, "base_model": 5}))
    made["bad-base-model"] = "base_model not text"
    huge = clone(workspace, "bad-step")
    for ckpt in (huge / "checkpoints").iterdir():
        ckpt.rename(ckpt.with_name(f"step_{2**64}{ckpt.suffix}"))
    made["bad-step"] = "step beyond 64 bits"
    linked = clone(workspace, "bad-link")
    (linked / "checkpoints" / "step_7").symlink_to("/usr")
    made["bad-link"] = "checkpoint links to /usr"
    usr = clone(workspace, "bad-usr")
    shutil.rmtree(usr / "checkpoints")
    (usr / "checkpoints").symlink_to("/usr")
    made["bad-usr"] = "checkpoints folder is /usr"
    loop = clone(workspace, "bad-loop")
    (loop / "checkpoints" / "step_8").symlink_to(loop / "checkpoints" / "step_9")
    (loop / "checkpoints" / "step_9").symlink_to(loop / "checkpoints" / "step_8")
    made["bad-loop"] = "checkpoints linking to each other"
    return made


async def test_copied_folder_is_its_own_experiment(jp_fetch: Any, workspace: Path) -> None:
    copy = clone(workspace, "cartpole-broken")
    for ckpt in (copy / "checkpoints").iterdir():
        ckpt.write_bytes(b"not a checkpoint")  # corrupt the copy only
    code, listing = await call(jp_fetch, "GET", "agents", "api", "experiments")
    assert code == 200
    names = [e["name"] for e in listing["experiments"]]
    assert names.count(SOURCE) == 1
    assert "cartpole-broken" in names
    code, agent = await create(jp_fetch, "from-copy", experiment="cartpole-broken")
    assert code == 201, agent
    assert agent["experiment"] == "cartpole-broken", agent
    await call(jp_fetch, "POST", "agents", "api", "agents", "from-copy", "connect")
    agent = await wait_status(jp_fetch, "from-copy")
    # The damaged copy is what was loaded (and failed), not the undamaged original.
    assert agent["status"] == "Failed", agent


async def test_bad_folders_are_listed_broken_and_never_5xx(jp_fetch: Any,
                                                           workspace: Path) -> None:
    hostile_folders(workspace)
    started = time.perf_counter()
    code, listing = await call(jp_fetch, "GET", "agents", "api", "experiments")
    elapsed = time.perf_counter() - started
    assert code == 200, listing
    assert elapsed < 5, elapsed  # bounded, even with a checkpoint that is /usr
    good = {e["name"]: e for e in listing["experiments"]}
    broken = {b["name"]: b["error"] for b in listing["broken"]}
    assert SOURCE in good
    assert {"bad-utf8", "bad-field", "bad-deep", "bad-base-model"} <= set(broken), broken
    assert "UTF-8" in broken["bad-utf8"]
    assert "nested" in broken["bad-deep"]
    assert "base_model" in broken["bad-base-model"]
    # Rows with an unusable step are dropped; the experiment itself is fine.
    assert all(row["step"] < 2**63 for row in good["bad-inf"]["metrics"])
    assert good["bad-step"]["checkpoints"] == []
    assert [c["step"] for c in good["bad-link"]["checkpoints"]].count(7) == 1
    assert good["bad-usr"]["checkpoints"] == []
    # Checkpoints that are links to nowhere (here, to each other) make the experiment broken,
    # with the reason, as a linked import whose source moved does.
    assert "bad-loop" in broken, broken
    for name, checkpoint in [(n, "best") for n in broken] + [
            ("bad-step", "best"), (SOURCE, 2**64), (SOURCE, 2**70), (SOURCE, [1]),
            (SOURCE, float("inf")), (SOURCE, 1e300), (SOURCE, float("nan"))]:
        code, answer = await create(jp_fetch, f"x-{name}", experiment=name,
                                    checkpoint=checkpoint)
        assert code == 400, (name, checkpoint, code, answer)
        assert answer["message"], answer


def test_store_identity_is_the_folder(tmp_path: Path, demo_experiments: Path) -> None:
    shutil.copytree(demo_experiments, tmp_path / "experiments")
    clone(tmp_path, "renamed-copy")
    store = ExperimentStore(tmp_path)
    assert store.get("renamed-copy").name == "renamed-copy"
    assert store.get("renamed-copy").info.name == SOURCE  # the label inside stays as written
    assert [e.name for e in store.list()].count(SOURCE) == 1


async def test_create_refuses_text_sqlite_cannot_store(jp_fetch: Any) -> None:
    code, answer = await create(jp_fetch, "surrogate", description="bad \ud800 text")
    assert code == 400, answer
    assert "Unicode" in answer["message"]


async def test_agent_of_a_renamed_folder_fails_with_the_reason(jp_fetch: Any,
                                                                workspace: Path) -> None:
    copy = clone(workspace, "to-rename")
    assert (await create(jp_fetch, "orphan", experiment="to-rename"))[0] == 201
    copy.rename(copy.with_name("renamed"))
    await call(jp_fetch, "POST", "agents", "api", "agents", "orphan", "connect")
    agent = await wait_status(jp_fetch, "orphan")
    assert agent["status"] == "Failed", agent
    assert "Unknown experiment 'to-rename'" in agent["error"]
    # Never resolved to another folder, not even the one it was copied from.
    assert agent["experiment"] == "to-rename"
