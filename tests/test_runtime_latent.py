"""LatentPPO: a PPO policy whose latent feeds a saved Advanced Training model as decoder.

Real training (the quick demo: the Iris classifier, then PPO through it), the real loaders,
and a real ``jupyter server`` child process driven by the Arena client and the panel.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch
from agilerl.arena.exceptions import ArenaInferenceError
from agilerl.arena.inference import Agent
from safetensors.torch import load_file

from server_extension.demos.latent import EXPERIMENT, build_latent_demo
from server_extension.demos.llm import one_torch_thread
from server_extension.demos.supervised import EXPERIMENT as IRIS
from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.latent import LatentPPORuntime
from server_extension.serving.runtimes.supervised import build_mlp
from tests.panel_support import front_end, start_server, wait_until
from tests.servers import ServerProcess
from workbench_core.store import ExperimentStore, ExperimentWriter

pytestmark = pytest.mark.slow
__all__ = ["front_end"]  # a fixture used by name below

WANT_EACH = np.eye(3, dtype=np.float32)  # one row asking for each species


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def latent_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latent-workspace")
    # No decoder saved yet: the demo trains the Iris classifier first, then PPO through it.
    assert build_latent_demo(root, quick=True) == [IRIS, EXPERIMENT]
    return root


def _load(root: Path, options: dict[str, Any] | None = None,
          step: int | None = None) -> LatentPPORuntime:
    experiment = ExperimentStore(root).get(EXPERIMENT)
    ckpt = experiment.checkpoint(experiment.best_step() if step is None else step)
    runtime = load_runtime(experiment, ckpt, options=options)
    assert isinstance(runtime, LatentPPORuntime)
    return runtime


def test_demo_records_its_decoder_and_learns(latent_root: Path) -> None:
    store = ExperimentStore(latent_root)
    experiment = store.get(EXPERIMENT)
    info = experiment.info
    assert (info.project_type, info.framework, info.algorithm) == (
        "advanced", "latent_ppo", "LatentPPO")
    iris = store.get(IRIS)
    assert info.extra["decoder"] == {"experiment": IRIS, "step": iris.best_step()}
    assert info.extra["latent_size"] == 4
    assert info.extra["latent_columns"] == iris.info.extra["feature_columns"]
    assert len(info.extra["observation_columns"]) == 3
    # Step 0 is the untrained policy: the score before training, about one in three.
    scores = {c.step: c.evaluation_score for c in experiment.checkpoints()}
    assert scores[0] is not None
    assert scores[0] < 0.5
    assert max(s for s in scores.values() if s is not None) > scores[0] + 0.3
    assert info.extra["score_after"] == pytest.approx(scores[experiment.final_step()], abs=1e-4)


def _independent_prediction(root: Path, step: int, decoder_step: int,
                            obs: np.ndarray) -> np.ndarray:
    """decoder(policy(obs)) rebuilt from the files with AgileRL and torch directly."""
    from agilerl.algorithms import PPO

    store = ExperimentStore(root)
    extra = store.get(EXPERIMENT).info.extra
    with warnings.catch_warnings():
        # AgileRL never saves PPO's rollout buffer and says so on every load.
        warnings.filterwarnings("ignore", message="Attribute rollout_buffer not found")
        agent = PPO.load(str(store.get(EXPERIMENT).checkpoint(step).path))
    with torch.no_grad():
        mean = agent.actor.head_net.wrapped(agent.actor.extract_features(torch.from_numpy(obs)))
    low, high = np.asarray(extra["latent_low"]), np.asarray(extra["latent_high"])
    latent = low + 0.5 * (np.tanh(mean.numpy()) + 1.0) * (high - low)
    iris = store.get(IRIS)
    spec = iris.info.extra
    model = build_mlp(4, spec["hidden_sizes"], 3)
    model.load_state_dict(load_file(str(iris.checkpoint(decoder_step).path)))
    scaled = (latent - np.asarray(spec["mean"])) / np.asarray(spec["std"])
    with torch.no_grad():
        return torch.softmax(model(torch.as_tensor(scaled, dtype=torch.float32)), -1).numpy()


def test_predict_is_the_policy_then_the_decoder(latent_root: Path) -> None:
    runtime = _load(latent_root)
    assert runtime.kind.supervised
    assert runtime.kind.algo == "LatentPPO"
    runtime.probe()
    experiment = ExperimentStore(latent_root).get(EXPERIMENT)
    step = experiment.best_step()
    results = runtime.predict(WANT_EACH)
    assert results.shape == (3, 3)
    assert results.dtype == np.float32
    expected = _independent_prediction(latent_root, step, runtime.decoder_ref.step, WANT_EACH)
    np.testing.assert_allclose(results, expected, atol=1e-5)
    # The logged evaluation score is what the served agent scores.
    assert float(np.mean(np.diag(results))) == pytest.approx(
        experiment.checkpoint(step).evaluation_score, abs=1e-6)
    runtime.close()


def test_bad_inputs_are_request_errors(latent_root: Path) -> None:
    runtime = _load(latent_root)
    with pytest.raises(RequestError, match=r"4 values per row .* observes 3: want_setosa"):
        runtime.predict(np.zeros((1, 4), np.float32))
    with pytest.raises(RequestError, match="empty batch"):
        runtime.predict(np.zeros((0, 3), np.float32))
    with pytest.raises(RequestError, match="NaN"):
        runtime.predict(np.full((1, 3), np.nan, np.float32))
    for wrong_route in (lambda: runtime.get_action(np.zeros((1, 3), np.float32)),
                        lambda: runtime.generate(["hi"], {})):
        with pytest.raises(RequestError, match="use POST predict"):
            wrong_route()
    runtime.close()


def test_decoder_option_overrides_the_training_time_decoder(latent_root: Path) -> None:
    iris = ExperimentStore(latent_root).get(IRIS)
    first = iris.checkpoints()[0].step
    assert first != iris.best_step()
    runtime = _load(latent_root, options={"decoder": {"experiment": IRIS, "step": first}})
    assert runtime.decoder_ref.step == first
    experiment = ExperimentStore(latent_root).get(EXPERIMENT)
    expected = _independent_prediction(latent_root, experiment.best_step(), first, WANT_EACH)
    np.testing.assert_allclose(runtime.predict(WANT_EACH), expected, atol=1e-5)


def test_missing_or_unfit_decoder_fails_the_load(latent_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(latent_root, root)
    with pytest.raises(RuntimeLoadError, match="no checkpoint at step 999"):
        _load(root, options={"decoder": {"experiment": IRIS, "step": 999}})
    shutil.rmtree(root / "experiments" / IRIS)
    with pytest.raises(RuntimeLoadError, match=f"{IRIS!r} is not a saved model"):
        _load(root)


# -- a real server: the Arena client, management validation, the wizard ----------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, latent_root: Path) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("latent-server") / "ws"
    server = start_server(root, latent_root / "experiments")
    # A saved model of the wrong input width, to be refused as a decoder.
    narrow = ExperimentWriter.create(root, "narrow-model", project_type="advanced",
                                     algorithm="MLPClassifier", framework="torch",
                                     dataset="two-columns",
                                     extra={"feature_columns": ["a", "b"],
                                            "class_names": ["x", "y"]})
    narrow.checkpoint_path(1, ".safetensors").write_bytes(b"")
    narrow.log(1, evaluation_score=0.5)
    try:
        yield server
    finally:
        server.stop()


def test_new_user_gets_predictions_through_the_arena_client(live: ServerProcess,
                                                            latent_root: Path) -> None:
    agent = live.deploy("designer", EXPERIMENT)
    assert agent["options"] == {}  # no option: the decoder recorded at training time
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        assert client.metadata is not None
        assert client.metadata.agent is not None
        assert client.metadata.agent.supervised is True
        assert client.metadata.agent.algo == "LatentPPO"
        results, meta = client.predict(WANT_EACH, batched=True)
        one, _ = client.predict(WANT_EACH[2])  # unbatched: the client adds the batch axis
        with pytest.raises(ArenaInferenceError) as wrong:
            client.predict(np.zeros((1, 5), np.float32), batched=True)
        with pytest.raises(ArenaInferenceError):
            client.get_action(WANT_EACH[0])  # the client itself refuses: not an RL agent
    assert meta.batch_size == 3
    assert meta.inference_time_ms > 0
    local = _load(latent_root)
    np.testing.assert_allclose(np.asarray(results), local.predict(WANT_EACH), atol=1e-6)
    np.testing.assert_allclose(np.asarray(one), local.predict(WANT_EACH[2:])[0], atol=1e-6)
    assert wrong.value.status_code == 400
    assert "observes 3" in str(wrong.value)
    headers = {"Authorization": f"Bearer {agent['api_key']}"}
    for route, body in (("get_action", {"obs": None}), ("generate", {"prompts": ["hi"]})):
        resp = requests.post(f"{agent['endpoint']}/{route}", json=body, headers=headers,
                             timeout=30)
        assert resp.status_code == 400, route
        assert "predict" in resp.json()["error"]


@pytest.mark.parametrize(("decoder", "needle"), [
    ("no-such-model", "'no-such-model' is not a saved model"),
    ("narrow-model", "takes 2 inputs but 'iris-latent-ppo' outputs a 4-wide latent"),
    (EXPERIMENT, "cannot decode"),
    ({"experiment": IRIS, "step": 999}, "no checkpoint at step 999"),
    ({"experiment": IRIS, "checkpoint": "best", "step": 1}, "not both"),
    ({"experiment": IRIS, "layer": 2}, "unknown key"),
    (7, "must be the name"),
])
def test_bad_decoder_options_are_400(live: ServerProcess, decoder: Any, needle: str) -> None:
    resp = live.api("POST", "agents", json={"name": "bad-decoder", "experiment": EXPERIMENT,
                                            "options": {"decoder": decoder}})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["message"]
    if decoder == "no-such-model":
        assert "iris-classifier" in resp.json()["message"]  # names the ones that fit


def test_decoder_option_is_pinned_and_only_for_latent_ppo(live: ServerProcess) -> None:
    iris = ExperimentStore(live.root).get(IRIS)
    created = live.api("POST", "agents", json={"name": "pinned", "experiment": EXPERIMENT,
                                               "options": {"decoder": IRIS}})
    assert created.status_code == 201, created.text
    assert created.json()["options"] == {"decoder": {"experiment": IRIS,
                                                     "step": iris.best_step()}}
    refused = live.api("POST", "agents", json={"name": "iris-with-decoder", "experiment": IRIS,
                                               "options": {"decoder": IRIS}})
    assert refused.status_code == 400
    assert "LatentPPO experiments only" in refused.json()["message"]


def test_decoder_deleted_after_creation_turns_the_agent_failed(live: ServerProcess) -> None:
    copy = live.root / "experiments" / "iris-copy"
    shutil.copytree(live.root / "experiments" / IRIS, copy)
    info = copy / "experiment.json"
    info.write_text(info.read_text().replace(f'"name": "{IRIS}"', '"name": "iris-copy"'))
    created = live.api("POST", "agents", json={"name": "orphan", "experiment": EXPERIMENT,
                                               "options": {"decoder": "iris-copy"}})
    assert created.status_code == 201, created.text
    shutil.rmtree(copy)
    assert live.api("POST", "agents/orphan/connect").status_code == 200
    agent = live.wait_status("orphan")
    assert agent["status"] == "Failed"
    assert "'iris-copy' is not a saved model" in agent["error"]


def test_wizard_offers_fitting_decoders(live: ServerProcess,
                                        front_end: list[dict[str, Any]]) -> None:
    from agents_widget import AgentsPanel
    from workbench_core.discovery import ServerInfo

    iris = ExperimentStore(live.root).get(IRIS)
    trained = (IRIS, iris.best_step())
    panel = AgentsPanel(ServerInfo(url=live.url, token=live.token), poll_interval=0.2)
    try:
        panel.wait_idle()
        panel.tabs.selected_index = 1
        wizard = panel.open_wizard()
        assert wizard is not None
        wizard.name.value = "wizard-iris"
        wizard.source.value = IRIS
        wizard.next_button.click()
        assert wizard.decoder_box.layout.display == "none"  # no decoder for a plain model
        plain = wizard.request()
        assert plain is not None
        assert plain.options is None
        wizard.back_button.click()
        wizard.name.value = "wizard-latent"
        wizard.source.value = EXPERIMENT
        wizard.next_button.click()
        assert wizard.decoder_box.layout.display == ""
        labels = [label for label, _ in wizard.decoder.options]
        values = [value for _, value in wizard.decoder.options]
        assert wizard.decoder.value == trained
        assert labels[0].endswith("used in training")
        assert sorted(values) == sorted((IRIS, c.step) for c in iris.checkpoints())
        assert not any("narrow-model" in label for label in labels)  # 2 inputs: does not fit
        other = next(v for v in values if v != trained)
        wizard.decoder.value = other
        wizard.create_button.click()
        panel.wait_idle()
        wait_until(lambda: panel.wizard is None, what="the wizard to close")
        made = live.api("GET", "agents/wizard-latent").json()
        assert made["options"] == {"decoder": {"experiment": other[0], "step": other[1]}}
    finally:
        panel.close()
