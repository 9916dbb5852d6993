"""Stable-Baselines3 and sb3-contrib policies, trained here, served through a real server and
called with the Arena client: each answers what the library's own ``predict`` answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from agilerl.arena.inference import Agent

from server_extension.demos.llm import one_torch_thread
from server_extension.serving.importing.orchestrator import ImportRefused, import_experiment
from server_extension.serving.runtimes import sb3
from server_extension.serving.runtimes.detection import ImportHints
from tests.byom_fixtures import (
    break_zip,
    observations,
    sb3_dict_obs,
    sb3_dqn_cartpole,
    sb3_maskable,
    sb3_ppo_cartpole,
    sb3_recurrent_cartpole,
    sb3_sac_pendulum_vecnormalize,
    write_experiment,
)
from tests.servers import ServerProcess, running_server

pytestmark = pytest.mark.slow


class Made:
    """The user's files, as the libraries wrote them."""

    def __init__(self, out: Path) -> None:
        self.ppo_folder = sb3_ppo_cartpole(out)
        self.dqn = sb3_dqn_cartpole(out)
        self.sac, self.vecnormalize = sb3_sac_pendulum_vecnormalize(out)
        self.recurrent = sb3_recurrent_cartpole(out)
        self.maskable = sb3_maskable(out)
        self.dict_obs = sb3_dict_obs(out)
        self.broken = break_zip(self.dqn, out / "dqn_without_policy.zip", "policy.pth")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    # Six tiny trainings (a few thousand steps in all): about a minute on two shared cores.
    with one_torch_thread():
        return Made(tmp_path_factory.mktemp("sb3-files"))


def _write(root: Path, name: str, path: Path) -> None:
    """A policy whose environment is no Gymnasium id (SB3's own test envs) cannot pass the
    import's environment check; its files go in as the import would write them."""
    detected = sb3.detect(path)
    assert detected is not None, path
    described = sb3.describe(detected, ImportHints(env="unregistered"))
    write_experiment(root, name, framework="sb3", algorithm=described.algorithm,
                     checkpoints={s: Path(p) for s, p in detected.checkpoints})


@pytest.fixture(scope="module")
def server(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Five imports, each checked in a worker process that loads SB3 (~10 s each here).
    root = tmp_path_factory.mktemp("sb3-workspace")
    _write(root, "sb3-maskable", made.maskable)
    _write(root, "sb3-dict", made.dict_obs)
    # A zip missing its weights: detected by its data member, refused when loaded.
    write_experiment(root, "sb3-broken", framework="sb3", algorithm="DQN",
                     checkpoints={0: made.broken}, environment="CartPole-v1")
    with running_server(root) as running:
        running.imported = {}  # type: ignore[attr-defined]
        # The API door for one, the function every door calls for the others.
        made_by_api = running.api("POST", "experiments", json={
            "path": str(made.ppo_folder), "name": "sb3-ppo", "env": "CartPole-v1"})
        assert made_by_api.status_code == 201, made_by_api.text
        assert made_by_api.json()["import"]["checkpoints"] == 2
        for name, path, env, options in (
                ("sb3-dqn", made.dqn, "CartPole-v1", {}),
                ("sb3-sac-norm", made.sac, "Pendulum-v1",
                 {"vecnormalize": str(made.vecnormalize)}),
                ("sb3-sac-raw", made.sac, "Pendulum-v1", {}),
                ("sb3-recurrent", made.recurrent, "CartPole-v1", {})):
            imported = import_experiment(root, [path], ImportHints(name=name, env=env,
                                                                   options=options))
            assert imported["import"]["framework"] == "sb3"
            running.imported[name] = imported  # type: ignore[attr-defined]
        yield running


def _client(server: ServerProcess, name: str, step: str | int = "final") -> Agent:
    agent = server.deploy(name, name, step)
    return Agent(agent["endpoint"], api_key=agent["api_key"])


def _disconnect(server: ServerProcess, name: str) -> None:
    server.api("POST", f"agents/{name}/disconnect")


def test_detect_reads_names_and_json_only(made: Made) -> None:
    folder = sb3.detect(made.ppo_folder)
    assert folder is not None
    assert [s for s, _ in folder.checkpoints] == [1024, 2048]
    assert folder.facts["algorithm"] == "PPO"
    assert not folder.facts["trained_normalised"]
    single = sb3.detect(made.sac)
    assert single is not None
    assert single.facts["algorithm"] == "SAC"
    assert single.facts["trained_normalised"]
    assert [sb3.detect(p).facts["algorithm"]  # type: ignore[union-attr]
            for p in (made.dqn, made.recurrent, made.maskable)] == [
                "DQN", "RecurrentPPO", "MaskablePPO"]
    assert sb3.detect(made.vecnormalize) is None


def test_describe_warns_when_trained_normalised_without_statistics(made: Made) -> None:
    detected = sb3.detect(made.sac)
    assert detected is not None
    bare = sb3.describe(detected, ImportHints(env="Pendulum-v1"))
    assert any("VecNormalize" in w for w in bare.warnings)
    given = sb3.describe(detected, ImportHints(env="Pendulum-v1",
                                               options={"vecnormalize": str(made.vecnormalize)}))
    assert given.warnings == []
    assert given.algorithm == "SAC"
    assert "Box" in str(given.action_space)
    assert sb3.describe(detected, ImportHints()).needs  # the environment is asked for


def test_statistics_beside_the_zip_are_found(made: Made, tmp_path: Path) -> None:
    import shutil

    shutil.copyfile(made.sac, tmp_path / "sac.zip")
    shutil.copyfile(made.vecnormalize, tmp_path / "vecnormalize.pkl")
    detected = sb3.detect(tmp_path / "sac.zip")
    assert detected is not None
    step = detected.checkpoints[0][0]
    assert sb3.extra_files(detected, ImportHints()) == {
        f"vecnormalize/step_{step}.pkl": str(tmp_path / "vecnormalize.pkl")}
    assert sb3.describe(detected, ImportHints(env="Pendulum-v1")).warnings == []


@pytest.mark.parametrize(("name", "algo", "env_id"), [("sb3-ppo", "PPO", "CartPole-v1"),
                                                       ("sb3-dqn", "DQN", "CartPole-v1")])
def test_cartpole_actions_match_the_library(server: ServerProcess, made: Made, name: str,
                                            algo: str, env_id: str) -> None:
    from stable_baselines3 import DQN, PPO

    path = made.ppo_folder / "rl_model_2048_steps.zip" if algo == "PPO" else made.dqn
    model = (PPO if algo == "PPO" else DQN).load(path, device="cpu")
    obs = observations(model.observation_space, 32)
    with _client(server, name) as agent:
        assert agent.status().agent.algo == algo
        batch, _ = agent.get_action(obs, batched=True)
        single, _ = agent.get_action(obs[0])
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(np.asarray(batch), expected)
    assert int(np.asarray(single)) == int(model.predict(obs[0], deterministic=True)[0])
    _disconnect(server, name)


def test_vecnormalize_statistics_are_applied_as_in_training(server: ServerProcess,
                                                            made: Made) -> None:
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import VecNormalize

    model = SAC.load(made.sac, device="cpu")
    stats = VecNormalize.load(str(made.vecnormalize),
                              __import__("stable_baselines3.common.env_util",
                                         fromlist=["make_vec_env"]).make_vec_env("Pendulum-v1"))
    obs = observations(model.observation_space, 16).astype(np.float32)
    normalised, _ = model.predict(stats.normalize_obs(obs), deterministic=True)
    raw, _ = model.predict(obs, deterministic=True)
    assert not np.allclose(normalised, raw)  # the statistics matter for this policy
    with _client(server, "sb3-sac-norm") as agent:
        served, _ = agent.get_action(obs, batched=True)
    np.testing.assert_allclose(np.asarray(served), normalised, rtol=0, atol=1e-6)
    with _client(server, "sb3-sac-raw") as agent:
        unnormalised, _ = agent.get_action(obs, batched=True)
    np.testing.assert_allclose(np.asarray(unnormalised), raw, rtol=0, atol=1e-6)
    warnings = server.imported["sb3-sac-raw"]["import"]["warnings"]  # type: ignore[attr-defined]
    assert any("trained inside VecNormalize" in w for w in warnings)
    assert server.imported["sb3-sac-norm"]["import"]["warnings"] == []  # type: ignore[attr-defined]
    _disconnect(server, "sb3-sac-norm")
    _disconnect(server, "sb3-sac-raw")


def test_recurrent_ppo_threads_its_lstm_state(server: ServerProcess, made: Made) -> None:
    from sb3_contrib import RecurrentPPO

    model = RecurrentPPO.load(made.recurrent, device="cpu")
    steps = observations(model.observation_space, 6, seed=3)
    state, hidden = None, None
    with _client(server, "sb3-recurrent") as agent:
        assert agent.status().agent.recurrent
        for i, obs in enumerate(steps):
            served, hidden = agent.get_action(obs, hidden_state=hidden)
            expected, state = model.predict(obs[None], state=state,
                                            episode_start=np.array([i == 0]),
                                            deterministic=True)
            assert int(np.asarray(served)) == int(expected[0])
            assert isinstance(hidden, dict)
            np.testing.assert_allclose(hidden["h"], state[0][:, 0, :], atol=1e-6)
        # A wrong state is the caller's mistake, answered with what to send.
        bad = {"h": np.zeros((3, 3), np.float32), "c": np.zeros((3, 3), np.float32)}
        with pytest.raises(Exception, match="hidden_state"):
            agent.get_action(steps[0], hidden_state=bad)
    _disconnect(server, "sb3-recurrent")


def test_maskable_ppo_takes_the_action_mask(server: ServerProcess, made: Made) -> None:
    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(made.maskable, device="cpu")
    obs = observations(model.observation_space, 8, seed=1)
    rng = np.random.default_rng(0)
    masks = rng.random((8, 6)) < 0.5
    masks[:, 0] = True
    with _client(server, "sb3-maskable") as agent:
        served, _ = agent.get_action(obs, batched=True, info={"action_mask": masks})
        one, _ = agent.get_action(np.asarray(obs[0]), info={"action_mask": masks[0]})
    expected, _ = model.predict(obs, action_masks=masks, deterministic=True)
    np.testing.assert_array_equal(np.asarray(served), expected)
    assert masks[np.arange(8), np.asarray(served)].all()
    assert int(np.asarray(one)) == int(expected[0])
    _disconnect(server, "sb3-maskable")


def test_dict_observations(server: ServerProcess, made: Made) -> None:
    from stable_baselines3 import PPO

    model = PPO.load(made.dict_obs, device="cpu")
    obs = observations(model.observation_space, 5, seed=2)
    with _client(server, "sb3-dict") as agent:
        served, _ = agent.get_action(obs, batched=True)
        with pytest.raises(Exception, match="keys"):
            agent.get_action({"vec": obs["vec"]}, batched=True)
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_array_equal(np.asarray(served), expected)
    _disconnect(server, "sb3-dict")


def test_a_zip_missing_its_weights_is_refused_with_the_reason(server: ServerProcess) -> None:
    created = server.api("POST", "agents", json={"name": "sb3-broken",
                                                 "experiment": "sb3-broken",
                                                 "checkpoint": "final"})
    assert created.status_code == 201, created.text
    server.api("POST", "agents/sb3-broken/connect")
    agent = server.wait_status("sb3-broken")
    assert agent["status"] == "Failed"
    assert "lacks policy.pth" in agent["error"]
    assert "model.save" in agent["error"]


def test_import_refuses_a_broken_zip_and_a_wrong_environment(made: Made, tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match=r"lacks policy\.pth"):
        import_experiment(tmp_path, [made.broken], ImportHints(env="CartPole-v1"))
    with pytest.raises(ImportRefused, match="does not fit") as refused:
        import_experiment(tmp_path, [made.dqn], ImportHints(env="Pendulum-v1"))
    assert refused.value.field == "env"
    assert not (tmp_path / "experiments").exists() or not any(
        (tmp_path / "experiments").iterdir())
