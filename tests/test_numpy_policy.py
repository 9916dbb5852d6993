"""Small AgileRL policies served from their numpy form, without torch (issue 33).

The demo builds (real AgileRL training) write each checkpoint's policy sidecar. A real server
serves those checkpoints from numpy workers; the answers, through the real Arena client, must
be the library's own served answers (``load_runtime(...).get_action`` in this process) on
fresh random observations, not only on the probe set the sidecar carries. A sidecar whose
weights were changed, or a checkpoint without one, is served by the full runtime.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agilerl.arena.inference import Agent

from server_extension.demos.classic_multi_recurrent import SPEAKER_LISTENER, SPREAD
from server_extension.serving.runtimes import load_runtime
from server_extension.serving.runtimes.numpy_export import write
from server_extension.serving.runtimes.numpy_policy import read_sidecar, sidecar_path
from server_extension.serving.serde import encode_array
from tests.servers import ServerProcess, copy_workspace, wait_until
from tests.test_templates import ARGS, templates
from workbench_core.store import ExperimentStore

pytest_plugins = ["tests.classic_fixtures"]

SINGLE = ("cartpole-dqn", "cartpole-ppo", "pendulum-ddpg", "pendulum-td3")
MULTI = (SPREAD, SPEAKER_LISTENER)


@pytest.fixture
def numpy_workspace(tmp_path: Path, demo_experiments: Path, classic_experiments: Path) -> Path:
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    for name in MULTI:
        shutil.copytree(classic_experiments / name, root / "experiments" / name)
    return root


def _best(root: Path, experiment: str) -> Any:
    exp = ExperimentStore(root).get(experiment)
    return exp, exp.checkpoint(exp.resolve("best"))


def _fresh_obs(space: Any, rows: int, seed: int) -> np.ndarray:
    space.seed(seed)
    return np.stack([np.asarray(space.sample()) for _ in range(rows)])


def _create(srv: ServerProcess, name: str, experiment: str) -> None:
    created = srv.api("POST", "agents", json={"name": name, "experiment": experiment,
                                               "checkpoint": "best"})
    assert created.status_code == 201, created.text


def _check_single(root: Path, agent: dict[str, Any], experiment: str, seed: int) -> None:
    exp, ckpt = _best(root, experiment)
    library = load_runtime(exp, ckpt)
    obs = _fresh_obs(library.policy.observation_space, 200, seed)
    client = Agent(agent["endpoint"], api_key=agent["api_key"])
    try:
        served, _ = client.get_action(obs, batched=True)
        one, _ = client.get_action(obs[0])
    finally:
        client.close()
    want, _ = library.get_action(obs)
    if library.policy.discrete:
        assert np.array_equal(np.asarray(served).reshape(-1), want), experiment
        assert int(np.asarray(one).reshape(-1)[0]) == int(want[0])
    else:
        np.testing.assert_allclose(np.asarray(served).reshape(want.shape), want, atol=1e-5,
                                   rtol=0, err_msg=experiment)
        np.testing.assert_allclose(np.asarray(one).reshape(-1), want[0], atol=1e-5, rtol=0)


def _check_multi(root: Path, agent: dict[str, Any], experiment: str, seed: int) -> None:
    exp, ckpt = _best(root, experiment)
    library: Any = load_runtime(exp, ckpt)
    obs = {aid: _fresh_obs(space, 100, seed + i)
           for i, (aid, space) in enumerate(library.obs_spaces.items())}
    client = Agent(agent["endpoint"], api_key=agent["api_key"])
    try:
        served, _ = client.get_action(obs, batched=True)
    finally:
        client.close()
    want, _ = library.get_action(obs)
    for aid, expected in want.items():
        got = np.asarray(served[aid]).reshape(expected.shape)
        if expected.dtype.kind in "iu":
            assert np.array_equal(got, expected), (experiment, aid)
        else:
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0,
                                       err_msg=f"{experiment} {aid}")


@pytest.mark.slow
def test_numpy_workers_answer_what_the_library_answers(numpy_workspace: Path) -> None:
    """A fresh server: the CartPole DQN is Deployed from a numpy worker while the Classic
    (torch) template is still importing; then every exported family answers the library's
    actions on fresh observations, and Rainbow DQN (no numpy form) is served by torch.

    Long (a minute or two on a busy machine): the Classic template must import torch for
    Rainbow DQN, and the library's answers are computed in this process."""
    root = numpy_workspace
    for experiment in (*SINGLE, *MULTI):
        assert sidecar_path(_best(root, experiment)[1].path).is_file(), experiment
    assert not sidecar_path(_best(root, "cartpole-rainbow")[1].path).exists()

    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        _create(srv, "dqn", "cartpole-dqn")
        assert srv.api("POST", "agents/dqn/connect").status_code == 200
        agent = srv.wait_status("dqn", timeout=120)
        # The Classic template at the moment the DQN is Deployed: still importing.
        classic = templates(srv).get("classic", {"ready": False})
        assert agent["status"] == "Deployed", agent
        assert agent["runtime"] == "numpy", agent
        assert not classic["ready"], "the Classic template was ready: nothing was proved"
        assert templates(srv)["numpy"]["ready"]
        # The worker serving it never loaded torch (nor did its template).
        worker = srv.api("GET", "agents/dqn/metrics").json()["worker"]["pid"]
        assert "libtorch" not in Path(f"/proc/{worker}/maps").read_text()
        _check_single(root, agent, "cartpole-dqn", seed=11)

        for number, experiment in enumerate((*SINGLE[1:], *MULTI)):
            deployed = srv.deploy(f"a{number}", experiment, timeout=180)
            assert deployed["runtime"] == "numpy", deployed
            check = _check_multi if experiment in MULTI else _check_single
            check(root, deployed, experiment, seed=100 + number)

        rainbow = srv.deploy("rainbow", "cartpole-rainbow", timeout=180)
        assert rainbow["runtime"] == "full", rainbow
        # Sidecars are files beside the checkpoints, never checkpoints themselves.
        exp = ExperimentStore(root).get("cartpole-dqn")
        assert all(c.path.suffix == ".pt" for c in exp.checkpoints())
        # Bad input gets the full runtime's own clear refusal from a numpy worker too.
        refused = srv.session.post(f"{agent['endpoint']}/get_action",
                                   headers={"Authorization": f"Bearer {agent['api_key']}"},
                                   json={"obs": encode_array(np.zeros((1, 2), np.float32))},
                                   timeout=30)
        assert refused.status_code == 400, refused.text
        assert "expects (batch, 4)" in refused.text
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_tampered_or_missing_sidecar_gets_the_full_runtime(tmp_path: Path,
                                                             demo_experiments: Path) -> None:
    """Weights changed in the DQN's sidecar: its probe set no longer holds, so the Connect
    falls back to torch (and says why) and answers the library's actions. The PPO checkpoint
    without a sidecar is served by torch, which then writes the sidecar for the next server."""
    root = copy_workspace(tmp_path / "ws", demo_experiments)
    _, dqn = _best(root, "cartpole-dqn")
    meta, arrays = read_sidecar(sidecar_path(dqn.path))
    linear = [s for s in meta["layers"] if s["op"] == "linear"][-1]  # the Q-value layer
    arrays[linear["weight"]] = -arrays[linear["weight"]]  # the greedy action flips
    write(sidecar_path(dqn.path), meta, arrays)
    _, ppo = _best(root, "cartpole-ppo")
    sidecar_path(ppo.path).unlink()

    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        dqn_agent = srv.deploy("dqn", "cartpole-dqn", timeout=180)
        assert dqn_agent["runtime"] == "full", dqn_agent
        assert "probe" in (dqn_agent["runtime_note"] or ""), dqn_agent
        _check_single(root, dqn_agent, "cartpole-dqn", seed=7)

        ppo_agent = srv.deploy("ppo", "cartpole-ppo", timeout=180)
        assert ppo_agent["runtime"] == "full", ppo_agent
        assert ppo_agent["runtime_note"] is None
        _check_single(root, ppo_agent, "cartpole-ppo", seed=8)
        wait_until(lambda: sidecar_path(ppo.path).is_file(), timeout=120,
                   what="the PPO sidecar written after the first full load")
        # The tampered sidecar is left as it is (it exists): never silently replaced.
        assert read_sidecar(sidecar_path(dqn.path))[1][linear["weight"]].tolist() == \
            arrays[linear["weight"]].tolist()
    finally:
        srv.stop()


@pytest.mark.slow
def test_an_imported_sb3_policy_gets_its_numpy_form_after_its_first_load(
        tmp_path: Path) -> None:
    """An imported Stable-Baselines3 PPO has no sidecar: its first Connect is served by torch,
    whose worker then writes one; the next Connect is served by numpy, with SB3's own
    ``predict(deterministic=True)`` answers (the full runtime's) on fresh observations."""
    from server_extension.serving.importing.orchestrator import import_experiment
    from server_extension.serving.runtimes.detection import ImportHints
    from tests.byom_fixtures import sb3_ppo_cartpole

    root = copy_workspace(tmp_path / "ws", None)
    folder = sb3_ppo_cartpole(tmp_path / "sb3", steps=1024)
    import_experiment(root, [folder], ImportHints(name="sb3-ppo", env="CartPole-v1"))
    exp, ckpt = _best(root, "sb3-ppo")
    assert not sidecar_path(ckpt.path).exists()

    srv = ServerProcess(root, extra_args=ARGS).start()
    try:
        first = srv.deploy("sb3", "sb3-ppo", timeout=180)
        assert first["runtime"] == "full", first
        wait_until(lambda: sidecar_path(ckpt.path).is_file(), timeout=120,
                   what="the SB3 sidecar written after the first full load")
        assert srv.api("POST", "agents/sb3/disconnect").status_code == 200
        assert srv.api("POST", "agents/sb3/connect").status_code == 200
        again = srv.wait_status("sb3", timeout=120)
        assert again["status"] == "Deployed", again
        assert again["runtime"] == "numpy", again
        library: Any = load_runtime(exp, ckpt)
        obs = _fresh_obs(library.observation_space, 200, seed=21)
        client = Agent(again["endpoint"], api_key=again["api_key"])
        try:
            served, _ = client.get_action(obs, batched=True)
        finally:
            client.close()
        want, _ = library.get_action(obs)
        assert np.array_equal(np.asarray(served).reshape(-1), want)
    finally:
        srv.stop()
