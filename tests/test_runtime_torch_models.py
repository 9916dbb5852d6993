"""Any torch model: a CleanRL-style class with its state dict, the same network as
TorchScript, torch.export and ONNX, a whole pickled module, a tiny CNN and a two-input model.
Each is imported through the import's worker check, deployed on a real server and called
with the Arena client; answers equal the model's own in-process outputs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from agilerl.arena.inference import Agent

from server_extension.demos.llm import one_torch_thread
from server_extension.serving.importing.orchestrator import ImportRefused, import_experiment
from server_extension.serving.runtimes import frameworks
from server_extension.serving.runtimes.detection import ImportHints
from tests.byom_fixtures import cleanrl_files, export_formats, tiny_cnn, two_input_model
from tests.servers import ServerProcess, running_server

pytestmark = pytest.mark.slow

CARTPOLE = "CartPole-v1"


class Made:
    """The user's files and the models they came from."""

    def __init__(self, out: Path) -> None:
        self.qnet, self.script, self.state_dict = cleanrl_files(out)
        self.qnet_formats = export_formats(self.qnet, torch.zeros(2, 4), out, "qnet")
        self.whole = out / "whole_qnet.pt"
        torch.save(self.qnet, self.whole)
        self.cnn = tiny_cnn()
        self.cnn_formats = export_formats(self.cnn, torch.zeros(2, 1, 8, 8), out, "cnn",
                                          (["image"], ["logits"]))
        self.two = two_input_model()
        self.two_formats = export_formats(self.two, (torch.zeros(2, 3), torch.zeros(2, 2)),
                                          out, "two", (["features", "context"], ["score"]))
        self.not_onnx = out / "model.onnx"
        self.not_onnx.write_bytes(b"this is a text file, not a protobuf\n" * 4)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    with one_torch_thread():
        return Made(tmp_path_factory.mktemp("torch-files"))


IMPORTS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    # name: (which file, env, options)
    "qnet-state-dict": ("state_dict", CARTPOLE, {"module_class": "cleanrl_agent:QNetwork",
                                                 "env_argument": "envs", "code": "SCRIPT"}),
    "qnet-torchscript": ("qnet:torchscript", CARTPOLE, {}),
    "qnet-export": ("qnet:torch_export", CARTPOLE, {}),
    "qnet-onnx": ("qnet:onnx", CARTPOLE, {}),
    "qnet-whole": ("whole", None, {"code": "SCRIPT"}),
    "cnn-export": ("cnn:torch_export", None, {"class_names": ["circle", "square", "cross"]}),
    "two-onnx": ("two:onnx", None, {}),
}


def _path(made: Made, which: str) -> Path:
    if ":" in which:
        family, fmt = which.split(":")
        return getattr(made, f"{family}_formats")[fmt]  # type: ignore[no-any-return]
    return getattr(made, which)  # type: ignore[no-any-return]


def _hints(made: Made, name: str) -> ImportHints:
    _which, env, options = IMPORTS[name]
    options = {k: str(made.script) if v == "SCRIPT" else v for k, v in options.items()}
    return ImportHints(name=name, env=env, options=options)


@pytest.fixture(scope="module")
def server(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Seven imports, each checked in a worker process that imports torch: about a minute.
    root = tmp_path_factory.mktemp("torch-workspace")
    imported = {}
    for name, (which, _env, _options) in IMPORTS.items():
        imported[name] = import_experiment(root, [_path(made, which)], _hints(made, name))
    with running_server(root) as running:
        running.imported = imported  # type: ignore[attr-defined]
        yield running


def _client(server: ServerProcess, name: str) -> Agent:
    agent = server.deploy(name, name, "final")
    return Agent(agent["endpoint"], api_key=agent["api_key"])


def test_each_format_is_detected_by_its_module(made: Made) -> None:
    found = {name: frameworks.detect(_path(made, which)) for name, (which, _e, _o)
             in IMPORTS.items()}
    assert {name: d.framework for name, d in found.items() if d} == {
        "qnet-state-dict": "pytorch", "qnet-torchscript": "torchscript",
        "qnet-export": "torch_export", "qnet-onnx": "onnx", "qnet-whole": "pytorch",
        "cnn-export": "torch_export", "two-onnx": "onnx"}
    assert found["qnet-state-dict"].facts == {"whole_module": False, "classes": []}  # type: ignore[union-attr]
    assert found["qnet-whole"].facts["classes"] == ["cleanrl_agent:QNetwork"]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["qnet-state-dict", "qnet-torchscript", "qnet-export",
                                  "qnet-onnx"])
def test_the_same_policy_acts_alike_in_every_format(server: ServerProcess, made: Made,
                                                    name: str) -> None:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 4)).astype(np.float32)
    with torch.inference_mode():
        expected = made.qnet(torch.from_numpy(obs)).numpy().argmax(axis=1)
    with _client(server, name) as agent:
        assert not agent.status().agent.supervised
        batch, _ = agent.get_action(obs, batched=True)
        single, _ = agent.get_action(obs[0])
        # A mask keeps the argmax to the legal actions, as AgileRL agents do.
        masked, _ = agent.get_action(obs, batched=True,
                                     info={"action_mask": np.tile([0, 1], (64, 1))})
    np.testing.assert_array_equal(np.asarray(batch), expected)
    assert int(np.asarray(single)) == int(expected[0])
    assert (np.asarray(masked) == 1).all()
    server.api("POST", f"agents/{name}/disconnect")


def test_whole_pickled_module_predicts(server: ServerProcess, made: Made) -> None:
    rows = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    with torch.inference_mode():
        expected = made.qnet(torch.from_numpy(rows)).numpy()
    with _client(server, "qnet-whole") as agent:
        assert agent.status().agent.supervised
        out, meta = agent.predict(rows, batched=True)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-6)
    assert meta.batch_size == 5
    server.api("POST", "agents/qnet-whole/disconnect")


def test_image_classifier_takes_images_and_keeps_its_class_names(server: ServerProcess,
                                                                 made: Made) -> None:
    images = np.random.default_rng(2).random((3, 1, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        expected = made.cnn(torch.from_numpy(images)).numpy()
    experiment = server.api("GET", "experiments").json()
    assert "cnn-export" in str(experiment)
    signature = server.imported["cnn-export"]["import"]["description"]["extra"]  # type: ignore[attr-defined]
    assert signature["class_names"] == ["circle", "square", "cross"]
    assert signature["inputs"][0]["shape"] == [None, 1, 8, 8]
    with _client(server, "cnn-export") as agent:
        out, _ = agent.predict(images, batched=True)
        with pytest.raises(Exception, match=r"takes \(any, 1, 8, 8\)"):
            agent.predict(np.zeros((1, 8, 8), np.float32), batched=True)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-5)
    server.api("POST", "agents/cnn-export/disconnect")


def test_two_named_inputs(server: ServerProcess, made: Made) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(4, 3)).astype(np.float32)
    context = rng.normal(size=(4, 2)).astype(np.float32)
    with torch.inference_mode():
        expected = made.two(torch.from_numpy(features), torch.from_numpy(context)).numpy()
    with _client(server, "two-onnx") as agent:
        out, _ = agent.predict({"features": features, "context": context}, batched=True)
        with pytest.raises(Exception, match="takes"):
            agent.predict({"features": features}, batched=True)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=1e-5)
    server.api("POST", "agents/two-onnx/disconnect")


def test_onnx_serving_never_imports_torch(server: ServerProcess) -> None:
    code = (
        "import sys\n"
        "from server_extension.serving.runtimes import load_runtime\n"
        "from workbench_core.store import ExperimentStore\n"
        f"e = ExperimentStore({str(server.root)!r}).get('two-onnx')\n"
        "r = load_runtime(e, e.checkpoint(e.final_step()))\n"
        "r.probe()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_hostile_files_are_refused_with_the_reason(made: Made, tmp_path: Path) -> None:
    with pytest.raises(ImportRefused, match="not a model onnxruntime can run"):
        import_experiment(tmp_path, [made.not_onnx], ImportHints())
    with pytest.raises(ImportRefused, match="has no 'NoSuchNet'"):
        import_experiment(tmp_path, [made.state_dict], ImportHints(
            env=CARTPOLE, options={"module_class": "cleanrl_agent:NoSuchNet",
                                   "env_argument": "envs", "code": str(made.script)}))
    with pytest.raises(ImportRefused, match="cannot be imported in the worker"):
        import_experiment(tmp_path, [made.state_dict], ImportHints(
            env=CARTPOLE, options={"module_class": "no_such_module:QNetwork"}))
    with pytest.raises(ImportRefused, match="Unknown option"):
        import_experiment(tmp_path, [made.qnet_formats["onnx"]], ImportHints(
            options={"modul_class": "x:Y"}))
    assert not (tmp_path / "experiments").exists() or not any(
        (tmp_path / "experiments").iterdir())


def test_framework_torch_with_a_module_class_is_served_as_that_module(made: Made,
                                                                      tmp_path: Path) -> None:
    """experiment.json written by hand as framework "torch" (the MLP classifier's name) with a
    module_class: the nn.Module loader serves it, in-process here (no pickle runs)."""
    from server_extension.serving.runtimes import load_runtime
    from tests.byom_fixtures import write_experiment
    from workbench_core.store import ExperimentStore

    write_experiment(tmp_path, "by-hand", framework="torch", algorithm="DQN",
                     checkpoints={7: made.state_dict}, environment=CARTPOLE,
                     extra={"module_class": "cleanrl_agent:QNetwork", "env_argument": "envs"},
                     files={"code/cleanrl_agent.py": made.script})
    experiment = ExperimentStore(tmp_path).get("by-hand")
    runtime = load_runtime(experiment, experiment.checkpoint(7))
    obs = np.random.default_rng(4).normal(size=(8, 4)).astype(np.float32)
    actions, _ = runtime.get_action(obs)
    with torch.inference_mode():
        expected = made.qnet(torch.from_numpy(obs)).numpy().argmax(axis=1)
    np.testing.assert_array_equal(actions, expected)
