"""Train the tiny chat model demo: a GPT-2-shaped model taught the ``country_facts`` data set.

Two experiments come out of :func:`build_llm_demo`:

``tiny-chat-sft``
    A byte-level BPE tokenizer and a small causal LM trained from scratch by supervised
    fine-tuning (loss on the answer tokens only). Every checkpoint is a full Hugging Face
    model folder (``model.safetensors`` + config + tokenizer files).
``tiny-chat-lora``
    A LoRA adapter trained over the best SFT checkpoint to answer in one word instead of a
    sentence. Checkpoints hold only the adapter (``adapter_model.safetensors`` +
    ``adapter_config.json``), as AgileRL saves LLM checkpoints; ``base_model`` in
    ``experiment.json`` points at the SFT checkpoint, relative to the workspace root when
    the checkpoint lives inside it so the workspace can be moved.

Scores: ``training_score`` is minus the mean training loss since the previous checkpoint;
``evaluation_score`` is the exact-match accuracy (0-1) of greedy answers to the held-out
question phrasings. ``extra`` in each ``experiment.json`` says so and keeps a sample answer.
Nothing is downloaded: the tokenizer and model are built locally.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server_extension.demos.data import CHAT_DATASET_NAME, load_chat_rows
from server_extension.serving.runtimes.llm import CHAT_TEMPLATE, quiet_loading
from workbench_core.store import ExperimentStore, ExperimentWriter

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# The demo never needs the Hub; keep transformers/PEFT from trying to reach it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SFT_EXPERIMENT = "tiny-chat-sft"
LORA_EXPERIMENT = "tiny-chat-lora"

END_OF_TURN = "<|end|>"
PADDING = "<|pad|>"
ROLE_MARKS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")
# How the model writes a tool call (CHAT_TEMPLATE's convention): one token each, and not
# special, so they stay in the decoded reply where the OpenAI routes look for calls.
TOOL_CALL_MARKS = ("<tool_call>", "</tool_call>")
EVAL_METRIC = "exact-match accuracy of greedy answers to held-out question phrasings (0-1)"
TRAIN_METRIC = "minus the mean training loss (answer tokens) since the previous checkpoint"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Plan:
    """Sizes and schedule of one build (full or quick)."""

    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int
    sft_steps: int
    sft_every: int
    sft_lr: float
    lora_steps: int
    lora_every: int
    lora_lr: float
    lora_rank: int
    batch_size: int
    eval_limit: int | None  # held-out rows scored per checkpoint (None: all of them)


FULL = _Plan(vocab_size=512, n_embd=96, n_layer=3, n_head=4, n_positions=128,
             sft_steps=600, sft_every=100, sft_lr=3e-3,
             lora_steps=400, lora_every=100, lora_lr=1e-2, lora_rank=8,
             batch_size=32, eval_limit=None)
QUICK = _Plan(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=128,
              sft_steps=20, sft_every=10, sft_lr=3e-3,
              lora_steps=10, lora_every=5, lora_lr=5e-3, lora_rank=4,
              batch_size=16, eval_limit=8)


def build_tokenizer(texts: Sequence[str], *, vocab_size: int, max_length: int) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    The result has ``<|end|>`` as EOS, ``<|pad|>`` as padding, role tokens for the chat
    template, and pads on the left (what batched generation with a decoder needs).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PADDING, END_OF_TURN, *ROLE_MARKS],
        # Every byte stays encodable, so prompts outside the training text never hit <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens(list(TOOL_CALL_MARKS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END_OF_TURN,
        pad_token=PADDING,
        chat_template=CHAT_TEMPLATE,
        model_max_length=max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str,
                history: Sequence[tuple[str, str]] = ()) -> str:
    """The text the model sees before its answer to ``question``, after earlier turns
    ``history`` ((question, answer) pairs, oldest first) as a chat session sends them."""
    messages = [m for q, a in history for m in ({"role": "user", "content": q},
                                                 {"role": "assistant", "content": a})]
    text = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": question}], tokenize=False,
        add_generation_prompt=True,
    )
    return str(text)


# The one tool the demo chat model learns to call: facts about a country, looked up in the
# data set. The model sees it the way CHAT_TEMPLATE renders tools ("tools: country_facts(country)"
# in a system turn) and calls it as the template writes calls (<tool_call>{...}</tool_call>).
COUNTRY_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "country_facts", "description": "Facts about a country (its capital).",
    "parameters": {"type": "object", "properties": {"country": {"type": "string"}},
                   "required": ["country"], "additionalProperties": False}}}
LOOKUP = "Look up {country}."  # how a user asks for the tool in the training rows


def country_facts(country: str) -> str:
    """What the ``country_facts`` tool answers: the data set's facts about ``country``."""
    # The capital only: the demo model reads 128 tokens, the whole exchange included.
    facts = sorted({r["answer"] for r in load_chat_rows()
                    if (r["country"] or "").lower() == country.strip().lower()
                    and r["fact"] == "capital"})
    return " ".join(facts) if facts else f"No facts about {country!r}."


def tool_turns(country: str) -> list[tuple[list[dict[str, Any]], str]]:
    """Two training turns of tool use for ``country``: (messages, the assistant's reply).

    First the model answers a lookup with a call; then, given the call's result as a ``tool``
    message, it answers with the result.
    """
    ask = [{"role": "user", "content": LOOKUP.format(country=country)}]
    arguments = {"country": country}
    call = "<tool_call>" + json.dumps({"name": "country_facts", "arguments": arguments}) + \
        "</tool_call>"
    result = country_facts(country)
    answered: list[dict[str, Any]] = [*ask, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "country_facts", "arguments": arguments}}]},
        {"role": "tool", "content": result}]
    return [(ask, call), (answered, result)]


def _tool_examples(tokenizer: PreTrainedTokenizerBase,
                   rows: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of the tool-use turns of every country in ``rows``."""
    out = []
    for country in sorted({r["country"] for r in rows if r["country"]}):
        for messages, reply in tool_turns(country):
            prompt = tokenizer.apply_chat_template(messages, tools=[COUNTRY_TOOL],
                                                   tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(str(prompt))["input_ids"]
            answer_ids = tokenizer(reply + END_OF_TURN)["input_ids"]
            out.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return out


# Chat sessions send the whole conversation; a model trained on single questions only
# derails once earlier turns precede the new one. So each training question also appears
# once after 1-2 earlier turns of other questions (labels on the last answer only), and
# the held-out questions are scored that way too (extra["multi_turn_exact_match"]).
HISTORY_TURNS = (1, 2)


def with_history(rows: Sequence[dict[str, Any]], pool: Sequence[dict[str, Any]],
                 answer_key: str, seed: int) -> list[tuple[dict[str, Any], list[tuple[str, str]]]]:
    """Each row paired with earlier turns drawn (seeded) from ``pool``."""
    import random

    rng = random.Random(seed)  # noqa: S311 - picks training examples, not secrets
    out = []
    for row in rows:
        turns = rng.choice(HISTORY_TURNS)
        earlier = [r for r in rng.sample(list(pool), turns + 1) if r is not row][:turns]
        out.append((row, [(r["question"], r[answer_key]) for r in earlier]))
    return out


def _encode(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]], answer_key: str
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per row; prompt positions are labelled -100 so only answers count."""
    out = []
    paired: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [(row, []) for row in rows]
    paired += with_history(rows, rows, answer_key, seed=7)
    for row, history in paired:
        # Prompt and answer are tokenized apart, exactly as the prompt is at inference time.
        prompt_ids = tokenizer(chat_prompt(tokenizer, row["question"], history))["input_ids"]
        answer_ids = tokenizer(row[answer_key] + END_OF_TURN)["input_ids"]
        out.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    return out


def _collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (seq, lab) in enumerate(examples):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, : len(lab)] = torch.tensor(lab)
    return ids, mask, labels


def _batches(
    examples: Sequence[tuple[list[int], list[int]]], batch_size: int, gen: torch.Generator
) -> Iterator[list[tuple[list[int], list[int]]]]:
    """Endless shuffled mini-batches (a fresh permutation per epoch)."""
    import torch

    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[i] for i in order[start : start + batch_size]]


def _lm_loss(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) positions."""
    import torch.nn.functional as F

    # Computed here rather than through ``labels=``: transformers cannot map GPT2LMHeadModel
    # to its causal-LM loss by class name and logs a warning on every model built.
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def _held_out_loss(
    model: Any, examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), 64):
            chunk = examples[start : start + 64]
            ids, mask, labels = _collate(chunk, pad_id)
            loss = _lm_loss(model, ids, mask, labels)
            tokens = int((labels[:, 1:] != -100).sum())
            total += float(loss) * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


def greedy_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 24,
    histories: Sequence[Sequence[tuple[str, str]]] | None = None,
) -> list[str]:
    """Greedy replies of ``model`` to each question (after its earlier turns in
    ``histories``, if given), batched with left padding."""
    import torch

    was_training = model.training
    model.eval()
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(questions), 64):
            prompts = [chat_prompt(tokenizer, q, histories[start + i] if histories else ())
                       for i, q in enumerate(questions[start : start + 64])]
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    if was_training:
        model.train()
    return answers


def _exact_match(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict[str, Any]],
    answer_key: str,
    pool: Sequence[dict[str, Any]] = (),
) -> tuple[float, dict[str, str]]:
    """Accuracy over ``rows`` and one sample (question, expected, got) to show people.

    With ``pool``, each question comes after earlier turns drawn from it (multi-turn)."""
    paired = with_history(rows, pool, answer_key, seed=11) if pool else None
    got = greedy_answers(model, tokenizer, [r["question"] for r in rows],
                         histories=[h for _, h in paired] if paired else None)
    hits = sum(g == r[answer_key] for g, r in zip(got, rows, strict=True))
    sample = {"question": rows[0]["question"], "expected": rows[0][answer_key], "answer": got[0]}
    return hits / len(rows), sample


def _save_atomically(dest: Path, save: Callable[[Path], None]) -> None:
    """Write a checkpoint folder under a hidden name, then rename it into place.

    The server lists ``step_<N>`` entries while training runs; it must never see half a folder.
    """
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the previous count.

    The demo models are so small that a second thread buys little when the machine is idle,
    and when other processes share the cores, spinning threads make each step many times
    slower (measured: 0.12 s per step with one thread, 1.9 s with two).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _workspace_relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (so the workspace can move), else absolute."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def _pick_eval(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    # Interleave facts so a short quick-mode subset still mixes capitals and continents.
    if limit is None or limit >= len(rows):
        return rows
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


def _lr_lambda(total: int) -> Callable[[int], float]:
    warmup = max(1, total // 20)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _train(
    model: Any,
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int,
    every: int,
    lr: float,
    batch_size: int,
    pad_id: int,
    seed: int,
    on_checkpoint: Callable[[int, float], None],
) -> None:
    """AdamW with warm-up and cosine decay; ``on_checkpoint(step, mean_loss)`` every ``every``."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(steps))
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(examples, min(batch_size, len(examples)), gen)
    model.train()
    losses: list[float] = []
    for step in range(1, steps + 1):
        ids, mask, labels = _collate(next(batches), pad_id)
        loss = _lm_loss(model, ids, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            on_checkpoint(step, sum(losses) / len(losses))
            losses.clear()


def build_llm_demo(
    root: Path, *, quick: bool = False, progress: Callable[[str], None] | None = None
) -> list[str]:
    """Train both chat experiments into ``<root>/experiments`` and return their names.

    Existing experiments with the same names are replaced. ``quick`` trains a far smaller
    model for a few steps (seconds; for tests): it still writes two or more checkpoints per
    experiment but does not learn the data. The full build takes a few minutes on two cores.
    """
    import torch

    say = progress or (lambda _msg: None)
    plan = QUICK if quick else FULL
    root = Path(root).expanduser()
    started = time.perf_counter()
    # Seed inside fork_rng so building the demo leaves the caller's random state alone.
    with torch.random.fork_rng(devices=[]), one_torch_thread():
        torch.manual_seed(0)
        sft_step = _build_sft(root, plan, say)
        _build_lora(root, plan, sft_step, say)
    say(f"chat demo built in {time.perf_counter() - started:.1f} s")
    return [SFT_EXPERIMENT, LORA_EXPERIMENT]


def _build_sft(root: Path, plan: _Plan, say: Progress) -> int:
    """Train the SFT experiment; return the step of its best checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel

    train_rows = load_chat_rows("train")
    eval_rows = _pick_eval(load_chat_rows("eval"), plan.eval_limit)
    corpus = [r["question"] for r in load_chat_rows()] + [
        r[k] for r in load_chat_rows() for k in ("answer", "short_answer")
    ]
    # The tool-use turns too, so that a call and the tools line take a few tokens each.
    corpus += [f"tools: country_facts(country) {LOOKUP.format(country=r['country'])} {reply}"
               for r in train_rows if r["country"] for _, reply in tool_turns(r["country"])[:1]]
    tokenizer = build_tokenizer(corpus, vocab_size=plan.vocab_size, max_length=plan.n_positions)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=plan.n_positions,
        n_embd=plan.n_embd,
        n_layer=plan.n_layer,
        n_head=plan.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    train = _encode(tokenizer, train_rows, "answer") + _tool_examples(tokenizer, train_rows)
    held_out = _encode(tokenizer, eval_rows, "answer")
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{SFT_EXPERIMENT}: {n_params / 1e6:.2f} M parameters, {len(train)} training pairs, "
        f"{len(eval_rows)} held-out prompts")

    writer = ExperimentWriter.create(
        root, SFT_EXPERIMENT, project_type="advanced", algorithm="SFT",
        framework="transformers", dataset=CHAT_DATASET_NAME, overwrite=True,
        extra={"training_score": TRAIN_METRIC, "evaluation_score": EVAL_METRIC,
               "architecture": "GPT2LMHeadModel", "parameters": n_params, "quick": plan is QUICK},
    )
    best: tuple[float, int] = (-1.0, 0)
    sample: dict[str, str] = {}

    def checkpoint(step: int, mean_loss: float) -> None:
        nonlocal best, sample
        accuracy, sample = _exact_match(model, tokenizer, eval_rows, "answer")
        eval_loss = _held_out_loss(model, held_out, tokenizer.pad_token_id)

        def save(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        with quiet_loading():
            _save_atomically(writer.checkpoint_path(step, suffix=""), save)
        writer.log(step, training_score=-mean_loss, evaluation_score=accuracy)
        best = max(best, (accuracy, step))
        say(f"{SFT_EXPERIMENT} step {step}: train loss {mean_loss:.3f}, held-out loss "
            f"{eval_loss:.3f}, exact match {accuracy:.2f}; {sample['question']!r} -> "
            f"{sample['answer']!r}")

    started = time.perf_counter()
    _train(model, train, steps=plan.sft_steps, every=plan.sft_every, lr=plan.sft_lr,
           batch_size=plan.batch_size, pad_id=tokenizer.pad_token_id, seed=1,
           on_checkpoint=checkpoint)
    multi_turn, _ = _exact_match(model, tokenizer, eval_rows, "answer", pool=train_rows)
    say(f"{SFT_EXPERIMENT}: exact match after 1-2 earlier turns {multi_turn:.2f} (final step)")
    writer.update_info(extra={**writer.info.extra, "sample": sample,
                              "multi_turn_exact_match": round(multi_turn, 3),
                              "train_seconds": round(time.perf_counter() - started, 1)})
    return ExperimentStore(root).get(SFT_EXPERIMENT).best_step()


def _build_lora(root: Path, plan: _Plan, base_step: int, say: Progress) -> None:
    """Train the LoRA experiment over SFT checkpoint ``base_step``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPT2LMHeadModel

    base_path = ExperimentStore(root).get(SFT_EXPERIMENT).checkpoint(base_step).path
    base_ref = _workspace_relative(base_path, root)
    # Train over the folder as saved, so the adapter fits exactly what the runtime will load.
    with quiet_loading():
        base = GPT2LMHeadModel.from_pretrained(
            base_path, use_safetensors=True, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    lora = LoraConfig(
        r=plan.lora_rank,
        lora_alpha=2 * plan.lora_rank,
        lora_dropout=0.0,
        # GPT-2 keeps its projections in Conv1D layers, whose weights are stored transposed.
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    with quiet_loading():
        model = get_peft_model(base, lora)
    # The adapter names its base relative to the workspace, not this machine's absolute path.
    model.peft_config["default"].base_model_name_or_path = base_ref
    train_rows = load_chat_rows("train")
    eval_rows = _pick_eval(load_chat_rows("eval"), plan.eval_limit)
    train = _encode(tokenizer, train_rows, "short_answer")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"{LORA_EXPERIMENT}: LoRA rank {plan.lora_rank} over {base_ref}, "
        f"{trainable / 1e3:.1f} k trainable parameters")

    writer = ExperimentWriter.create(
        root, LORA_EXPERIMENT, project_type="advanced", algorithm="SFT",
        framework="transformers", dataset=CHAT_DATASET_NAME, base_model=base_ref,
        overwrite=True,
        extra={"training_score": TRAIN_METRIC, "evaluation_score": EVAL_METRIC,
               "adapter": "LoRA", "lora_rank": plan.lora_rank, "answer_style": "one word",
               "base_experiment": SFT_EXPERIMENT, "base_step": base_step,
               "quick": plan is QUICK},
    )
    sample: dict[str, str] = {}

    def checkpoint(step: int, mean_loss: float) -> None:
        nonlocal sample
        accuracy, sample = _exact_match(model, tokenizer, eval_rows, "short_answer")

        def save(folder: Path) -> None:
            model.save_pretrained(str(folder), save_embedding_layers=False)
            # PEFT adds a model card; the checkpoint is meant to be the adapter alone.
            (folder / "README.md").unlink(missing_ok=True)

        with quiet_loading():
            _save_atomically(writer.checkpoint_path(step, suffix=""), save)
        writer.log(step, training_score=-mean_loss, evaluation_score=accuracy)
        say(f"{LORA_EXPERIMENT} step {step}: train loss {mean_loss:.3f}, exact match "
            f"{accuracy:.2f}; {sample['question']!r} -> {sample['answer']!r}")

    started = time.perf_counter()
    _train(model, train, steps=plan.lora_steps, every=plan.lora_every, lr=plan.lora_lr,
           batch_size=plan.batch_size, pad_id=tokenizer.pad_token_id, seed=2,
           on_checkpoint=checkpoint)
    writer.update_info(extra={**writer.info.extra, "sample": sample,
                              "train_seconds": round(time.perf_counter() - started, 1)})
