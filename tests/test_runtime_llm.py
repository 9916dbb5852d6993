"""The LLM runtime over the tiny chat demo: both checkpoint shapes, batching, streaming."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from server_extension.demos.llm import (
    LORA_EXPERIMENT,
    SFT_EXPERIMENT,
    build_llm_demo,
    one_torch_thread,
)
from server_extension.serving import batching
from server_extension.serving.generate_batching import GenerateBatchingRuntime
from server_extension.serving.runtimes import RequestError, RuntimeLoadError, load_runtime
from server_extension.serving.runtimes.llm import LLMRuntime
from workbench_core.store import ExperimentStore, ExperimentWriter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny; on a shared 2-core machine a second torch thread makes them slower.
    with one_torch_thread():
        yield

GREEDY = {"max_new_tokens": 12, "temperature": 0.0, "do_sample": False}


@pytest.fixture(scope="session")
def chat_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat-workspace")
    # Quick mode: a few seconds on an idle machine (not asserted; the CPU here is shared).
    assert build_llm_demo(root, quick=True) == [SFT_EXPERIMENT, LORA_EXPERIMENT]
    return root


def _load(root: Path, name: str, step: int | None = None) -> LLMRuntime:
    experiment = ExperimentStore(root).get(name)
    checkpoint = experiment.checkpoint(step if step is not None else experiment.final_step())
    runtime = load_runtime(experiment, checkpoint, device="cpu")
    assert isinstance(runtime, LLMRuntime)
    return runtime


@pytest.fixture(scope="module")
def sft(chat_root: Path) -> LLMRuntime:
    return _load(chat_root, SFT_EXPERIMENT)


@pytest.fixture(scope="module")
def lora(chat_root: Path) -> LLMRuntime:
    return _load(chat_root, LORA_EXPERIMENT)


class CountingEvent(threading.Event):
    """An Event that counts polls from other threads than its creator's.

    The generation thread polls it once before starting and once per token (the stopping
    criteria), so ``polls`` tells how many tokens were generated.
    """

    def __init__(self) -> None:
        super().__init__()
        self._owner = threading.current_thread()
        self.polls = 0

    def is_set(self) -> bool:
        if threading.current_thread() is not self._owner:
            self.polls += 1
        return super().is_set()


def test_demo_writes_both_checkpoint_shapes(chat_root: Path) -> None:
    store = ExperimentStore(chat_root)
    sft_exp, lora_exp = store.get(SFT_EXPERIMENT), store.get(LORA_EXPERIMENT)
    for exp in (sft_exp, lora_exp):
        assert exp.info.framework == "transformers"
        assert exp.info.project_type == "advanced"
        assert exp.info.dataset == "country_facts"
        assert "exact-match" in exp.info.extra["evaluation_score"]
        ckpts = exp.checkpoints()
        assert len(ckpts) >= 2
        assert all(c.training_score is not None and c.evaluation_score is not None
                   for c in ckpts)
    full = sft_exp.checkpoints()[-1].path
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in full.iterdir()
    }
    adapter = lora_exp.checkpoints()[-1].path
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_model.safetensors", "adapter_config.json"
    }
    base = lora_exp.info.base_model
    assert base is not None
    assert not Path(base).is_absolute()
    assert (chat_root / base / "model.safetensors").is_file()


def test_full_model_checkpoint_serves(sft: LLMRuntime) -> None:
    assert sft.kind.llm
    assert sft.kind.algo == "SFT"
    assert sft.kind.routes == ("generate", "generate_stream", "sessions")
    assert sft.max_context == 128
    sft.probe()


def test_adapter_checkpoint_changes_the_base(sft: LLMRuntime, lora: LLMRuntime) -> None:
    lora.probe()
    prompt = sft.format_chat([{"role": "user", "content": "What is the capital of Peru?"}])
    ids = torch.tensor([sft.tokenizer(prompt)["input_ids"]])
    with torch.inference_mode():
        base_logits = sft.model(input_ids=ids).logits
        lora_logits = lora.model(input_ids=ids).logits
    assert base_logits.shape == lora_logits.shape
    assert not torch.allclose(base_logits, lora_logits)


def test_moved_workspace_and_agilerl_layout(
    chat_root: Path, tmp_path: Path, lora: LLMRuntime
) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(chat_root, moved)
    experiment = ExperimentStore(moved).get(LORA_EXPERIMENT)
    step = experiment.final_step()
    folder = experiment.checkpoint(step).path
    # AgileRL's layout: the adapter in actor/, beside algorithm state that must not be read.
    actor = folder / "actor"
    actor.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (folder / name).rename(actor / name)
    (folder / "attributes.pt").write_bytes(b"not a pickle, and never to be unpickled")
    runtime = load_runtime(experiment, experiment.checkpoint(step), device="cpu")
    assert isinstance(runtime, LLMRuntime)
    prompt = runtime.format_chat([{"role": "user", "content": "Hi"}])
    assert runtime.generate([prompt], GREEDY) == lora.generate([prompt], GREEDY)


def test_batched_greedy_matches_one_by_one(sft: LLMRuntime) -> None:
    prompts = [
        sft.format_chat([{"role": "user", "content": q}])
        for q in ("Hi", "What is the capital of France?", "Which continent is Fiji in, please?")
    ]
    batched = sft.generate(prompts, GREEDY)
    assert len(batched) == 3
    assert all(isinstance(text, str) for text in batched)
    assert batched == [sft.generate([p], GREEDY)[0] for p in prompts]
    assert sft.generate([], GREEDY) == []


def test_sampling_respects_max_new_tokens(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Hello"}])
    params = {"max_new_tokens": 3, "temperature": 0.8, "top_p": 0.9, "do_sample": True}
    for text in sft.generate([prompt, prompt], params):
        assert sft.count_tokens(text) <= 3


def test_concurrent_requests_all_answer(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Tell me the capital of Chile."}])
    expected = sft.generate([prompt], GREEDY)
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(sft.generate, [prompt], GREEDY) for _ in range(4)]
        results = [future.result(timeout=60) for future in futures]
    assert results == [expected] * 4


def test_stream_yields_pieces_that_add_up(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Name the capital city of Norway."}])
    params = {"max_new_tokens": 40, "temperature": 0.0, "do_sample": False}
    pieces = list(sft.stream(prompt, params, threading.Event()))
    assert len(pieces) >= 3
    assert "".join(pieces) == sft.generate([prompt], params)[0]


def test_stream_sends_first_piece_early_and_cancels_promptly(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Where in the world is Kenya?"}])
    params = {"max_new_tokens": 100, "temperature": 0.0, "do_sample": False}
    full = CountingEvent()
    assert len(list(sft.stream(prompt, params, full))) >= 3
    tokens_uncancelled = full.polls
    assert tokens_uncancelled >= 20, "the quick model should ramble to the token limit"

    cancelled = CountingEvent()
    pieces = sft.stream(prompt, params, cancelled)
    first = next(pieces)
    polls_at_first_piece = cancelled.polls
    cancelled.set()
    rest = list(pieces)
    assert first
    assert rest == []
    # The first piece came while generation still had most of its tokens to go ...
    assert polls_at_first_piece < tokens_uncancelled // 2
    # ... and once cancelled it stops within a token or two (the lock is free again after).
    with sft._lock:
        pass
    assert cancelled.polls < tokens_uncancelled // 2 + 10


def test_closing_a_stream_stops_generation(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Where in the world is Kenya?"}])
    params = {"max_new_tokens": 100, "temperature": 0.0, "do_sample": False}
    cancelled = CountingEvent()
    pieces = sft.stream(prompt, params, cancelled)
    next(pieces)
    pieces.close()  # the client went away: no one sets ``cancelled``
    with sft._lock:
        pass
    assert not cancelled.is_set()
    assert cancelled.polls < 60


def test_long_and_empty_prompts_are_refused(sft: LLMRuntime) -> None:
    long_prompt = "capital " * 300
    assert sft.count_tokens(long_prompt) > 128
    with pytest.raises(RequestError, match=r"reads at most 128 tokens"):
        sft.generate([long_prompt], GREEDY)
    with pytest.raises(RequestError, match=r"Prompt 1 is \d+ tokens long"):
        sft.generate(["Hi", long_prompt], GREEDY)
    with pytest.raises(RequestError, match=r"reads at most 128 tokens"):
        sft.stream(long_prompt, GREEDY, threading.Event())
    with pytest.raises(RequestError, match=r"reads at most 128 tokens"):
        sft.check_prompt(long_prompt)
    with pytest.raises(RequestError, match="empty"):
        sft.generate([""], GREEDY)
    assert sft.check_prompt("Hello") == sft.count_tokens("Hello")


def test_reply_is_cut_at_the_context_end(sft: LLMRuntime) -> None:
    prompt = "capital " * 60
    used = sft.count_tokens(prompt)
    assert used < 128
    (text,) = sft.generate([prompt], {"max_new_tokens": 500, "temperature": 0.0,
                                      "do_sample": False})
    assert sft.count_tokens(text) <= 128 - used + 2  # re-tokenizing may merge differently


def test_chat_template(sft: LLMRuntime) -> None:
    text = sft.format_chat([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of Japan?"},
    ])
    assert text == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is the capital of Japan?<|end|>\n"
        "<|assistant|>\n"
    )
    with pytest.raises(RequestError, match="Unknown chat role"):
        sft.format_chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(RequestError, match=r"messages\[0\]"):
        sft.format_chat([{"role": "user"}])
    with pytest.raises(RequestError, match="non-empty list"):
        sft.format_chat([])


def test_wrong_routes_point_to_the_right_ones(sft: LLMRuntime) -> None:
    with pytest.raises(RequestError, match="POST generate"):
        sft.predict(None)


def test_closed_runtime_says_so(chat_root: Path) -> None:
    runtime = _load(chat_root, SFT_EXPERIMENT)
    pieces = runtime.stream("Hi", GREEDY, threading.Event())
    runtime.close()  # after the request was accepted, before generation started
    with pytest.raises(RuntimeError, match="closed"):
        list(pieces)
    with pytest.raises(RuntimeError, match="closed"):
        runtime.generate(["Hi"], GREEDY)


def _copy_as_experiment(
    chat_root: Path, root: Path, source: str, base_model: str | None = None
) -> Path:
    """A new experiment in ``root`` holding a copy of ``source``'s final checkpoint at step 1."""
    exp = ExperimentStore(chat_root).get(source)
    info = exp.info
    writer = ExperimentWriter.create(
        root, f"{source}-copy", project_type=info.project_type, algorithm=info.algorithm,
        framework=info.framework, dataset=info.dataset, base_model=base_model,
    )
    dest = writer.checkpoint_path(1, suffix="")
    shutil.copytree(exp.checkpoints()[-1].path, dest)
    return dest


def _load_step_1(root: Path, name: str) -> None:
    experiment = ExperimentStore(root).get(name)
    load_runtime(experiment, experiment.checkpoint(1), device="cpu")


def test_corrupt_weights_fail_to_load(chat_root: Path, tmp_path: Path) -> None:
    folder = _copy_as_experiment(chat_root, tmp_path, SFT_EXPERIMENT)
    (folder / "model.safetensors").write_bytes(b"\x00garbage that is not safetensors")
    with pytest.raises(RuntimeLoadError, match="Could not load LLM checkpoint"):
        _load_step_1(tmp_path, f"{SFT_EXPERIMENT}-copy")


def test_pickled_weights_are_refused(chat_root: Path, tmp_path: Path) -> None:
    folder = _copy_as_experiment(chat_root, tmp_path, SFT_EXPERIMENT)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(RuntimeLoadError, match=r"pytorch_model\.bin: pickled weights"):
        _load_step_1(tmp_path, f"{SFT_EXPERIMENT}-copy")


def test_adapter_without_its_base_fails_clearly(chat_root: Path, tmp_path: Path) -> None:
    _copy_as_experiment(chat_root, tmp_path, LORA_EXPERIMENT,
                        base_model="experiments/nowhere/checkpoints/step_1")
    with pytest.raises(RuntimeLoadError, match=r"Base model folder .* does not exist"):
        _load_step_1(tmp_path, f"{LORA_EXPERIMENT}-copy")


def test_folder_that_is_no_model_fails_clearly(chat_root: Path, tmp_path: Path) -> None:
    folder = _copy_as_experiment(chat_root, tmp_path, SFT_EXPERIMENT)
    (folder / "config.json").unlink()
    with pytest.raises(RuntimeLoadError, match=r"neither config\.json"):
        _load_step_1(tmp_path, f"{SFT_EXPERIMENT}-copy")


# -- generate batching (server_extension/serving/generate_batching.py) ----------------------


def _queue_behind_a_running_call(wrapper: GenerateBatchingRuntime, inner: LLMRuntime,
                                 calls: list[tuple[list[str], dict[str, Any]]]) -> list[Any]:
    """Start ``calls`` at once while the model is busy, so all but the first queue up."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        with inner._lock:  # the first caller leads and waits for the model; the rest queue
            futures = [pool.submit(wrapper.generate, prompts, params)
                       for prompts, params in calls]
            deadline = time.monotonic() + 30
            while wrapper._gatherer.waiting < len(calls) - 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert wrapper._gatherer.waiting == len(calls) - 1
        return [f.exception(timeout=60) or f.result() for f in futures]


def test_concurrent_generates_share_one_call_and_match_alone(sft: LLMRuntime) -> None:
    questions = ("Hi", "What is the capital of France?", "Capital of Peru?", "Hello there")
    prompts = [sft.format_chat([{"role": "user", "content": q}]) for q in questions]
    alone = [sft.generate([p], GREEDY)[0] for p in prompts]
    wrapper = GenerateBatchingRuntime(sft)
    calls = [([p], GREEDY) for p in prompts[:3]] + [([prompts[3], prompts[0]], GREEDY)]
    results = _queue_behind_a_running_call(wrapper, sft, calls)
    assert results == [[alone[0]], [alone[1]], [alone[2]], [alone[3], alone[0]]]
    # The first ran alone (nobody was waiting yet); the three behind it ran as one call.
    assert (wrapper.batches, wrapper.batched_requests) == (1, 3)


def test_only_requests_with_the_same_settings_are_batched(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Hi"}])
    wrapper = GenerateBatchingRuntime(sft)
    short = {**GREEDY, "max_new_tokens": 4}
    results = _queue_behind_a_running_call(
        wrapper, sft, [([prompt], GREEDY), ([prompt], short), ([prompt], GREEDY),
                       ([prompt], short)])
    assert results[1] == results[3] == sft.generate([prompt], short)
    assert results[0] == results[2] == sft.generate([prompt], GREEDY)
    assert (wrapper.batches, wrapper.batched_requests) == (1, 2)  # the two short ones


def test_a_bad_request_in_a_batch_fails_alone(sft: LLMRuntime) -> None:
    prompt = sft.format_chat([{"role": "user", "content": "Hi"}])
    # Short enough to count, too long to leave room for a reply next to the others.
    near_limit = "capital " * 120
    assert 110 < sft.count_tokens(near_limit) < 128
    wrapper = GenerateBatchingRuntime(sft)
    results = _queue_behind_a_running_call(
        wrapper, sft, [([prompt], GREEDY), ([prompt], GREEDY), ([""], GREEDY),
                       ([near_limit], GREEDY), ([prompt], GREEDY)])
    expected = sft.generate([prompt], GREEDY)
    assert results[0] == results[1] == results[4] == expected
    assert isinstance(results[2], RequestError)
    assert "empty" in str(results[2])
    assert results[3] == sft.generate([near_limit], GREEDY)  # its own room, as if alone


def test_batching_mode_wraps_llms_unless_off(sft: LLMRuntime) -> None:
    assert isinstance(batching.wrap(sft, "auto"), GenerateBatchingRuntime)
    assert isinstance(batching.wrap(sft, "on"), GenerateBatchingRuntime)
    assert batching.wrap(sft, "off") is sft
    wrapped = batching.wrap(sft, "auto")
    prompt = "Hello"
    assert wrapped.count_tokens(prompt) == sft.count_tokens(prompt)  # type: ignore[attr-defined]
