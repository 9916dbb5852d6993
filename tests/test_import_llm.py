"""A Hugging Face ``save_pretrained`` folder and a PEFT LoRA adapter, imported, deployed and
called with the OpenAI client and the Arena client; the adapter asks for its base model and
offers the local folder that fits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from agilerl.arena.inference import Agent

from server_extension.serving.runtimes import load_runtime
from tests import import_support
from tests.servers import ServerProcess
from tests.test_import import IMPORT_TIMEOUT, cli, post_import
from workbench_core.store import ExperimentStore

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 6, "temperature": 0.0, "do_sample": False}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hf-models")
    gpt2 = import_support.tiny_gpt2(base / "tiny-gpt2")
    return {"model": gpt2, "adapter": import_support.lora_adapter(gpt2, base / "my-lora")}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with import_support.empty_workspace_server(tmp_path_factory.mktemp("import-llm")) as served:
        yield served


def _reference_answer(server: ServerProcess, name: str, prompt: str) -> str:
    experiment = ExperimentStore(server.root).get(name)
    runtime = load_runtime(experiment, experiment.checkpoints()[-1])
    # The generate route sends the prompt as a user turn through the model's chat template.
    text = runtime.format_chat([{"role": "user", "content": prompt}])  # type: ignore[attr-defined]
    return runtime.generate([text], GREEDY)[0]  # type: ignore[attr-defined, no-any-return]


def test_save_pretrained_folder_imports_with_one_command(
        models: dict[str, Path], server: ServerProcess) -> None:
    done = cli("import", str(models["model"]), "--root", str(server.root))
    assert done.returncode == 0, done.stderr
    assert "Imported 'tiny-gpt2': transformers GPT2LMHeadModel" in done.stdout
    agent = server.deploy("gpt", "tiny-gpt2", timeout=IMPORT_TIMEOUT)
    expected = _reference_answer(server, "tiny-gpt2", "the cat")
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        answer = client.generate("the cat", params=GREEDY).results[0].completion
    assert answer == expected
    with openai.OpenAI(base_url=agent["endpoint"] + "/v1", api_key=agent["api_key"],
                       max_retries=0, timeout=120) as chat:
        reply = chat.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hello"}], max_tokens=4,
            temperature=0)
    assert reply.choices
    assert reply.choices[0].message.content is not None


# Two imports (each a worker loading transformers) and a deploy: about 100 s when busy.
def test_lora_adapter_asks_for_its_base_and_offers_the_folder_that_fits(
        models: dict[str, Path], server: ServerProcess) -> None:
    asked = post_import(server, {"path": str(models["adapter"])})
    assert asked.status_code == 400
    message = asked.json()["message"]
    assert message.startswith("base_model:")
    assert "openai-community/gpt2" in message
    assert str(models["model"]) in message
    done = post_import(server, {"path": str(models["adapter"]),
                                "base_model": str(models["model"])})
    assert done.status_code == 201, done.text
    experiment = done.json()
    assert experiment["base_model"] == str(models["model"].resolve())
    assert experiment["tab"] == "advanced"
    agent = server.deploy("lora", "my-lora", timeout=IMPORT_TIMEOUT)
    expected = _reference_answer(server, "my-lora", "a dog")
    with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
        answer = client.generate("a dog", params=GREEDY).results[0].completion
    assert answer == expected
