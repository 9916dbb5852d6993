"""Checkpoints made by the real libraries, the way users make them, for the import tests.

AgileRL's own training helpers with their checkpoint arguments (``train_off_policy`` and
``train_on_policy`` write ``<checkpoint_path>_<member>_<steps>.pt``), a hand-saved
``agent.save_checkpoint``, and hostile files: a pickle that exits at load, one that hangs,
a truncated checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.servers import ServerProcess

# Small on purpose: a few hundred steps prove the file layout and the import; the served
# answers are compared with the same weights loaded in-process, so skill does not matter.
STEPS = 256
EVERY = 128



def train_dqn(folder: Path) -> Path:
    """DQN on CartPole through ``train_off_policy``; returns the checkpoint_path prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    # AgileRL warns at import and while training; none of it is the test's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl.algorithms import DQN
        from agilerl.components.replay_buffer import ReplayBuffer
        from agilerl.training.train_off_policy import train_off_policy
        from agilerl.utils.utils import make_vect_envs

        env = make_vect_envs("CartPole-v1", num_envs=1)
        agent = DQN(env.single_observation_space, env.single_action_space, learn_step=32,
                    batch_size=16)
        train_off_policy(env, "CartPole-v1", "DQN", [agent], ReplayBuffer(max_size=1000),
                         max_steps=STEPS, evo_steps=EVERY, eval_loop=1, eval_steps=20,
                         checkpoint=EVERY, checkpoint_path=str(folder / "dqn"),
                         verbose=False, tournament=None, mutation=None, wb=False)
        env.close()
    return folder / "dqn"


def train_ppo(folder: Path) -> Path:
    """PPO on CartPole through ``train_on_policy``; returns the checkpoint_path prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl.algorithms import PPO
        from agilerl.training.train_on_policy import train_on_policy
        from agilerl.utils.utils import make_vect_envs

        env = make_vect_envs("CartPole-v1", num_envs=1)
        agent = PPO(env.single_observation_space, env.single_action_space, learn_step=64,
                    batch_size=32)
        train_on_policy(env, "CartPole-v1", "PPO", [agent], max_steps=STEPS, evo_steps=EVERY,
                        eval_loop=1, eval_steps=20, checkpoint=EVERY,
                        checkpoint_path=str(folder / "ppo"), verbose=False, tournament=None,
                        mutation=None, wb=False)
        env.close()
    return folder / "ppo"


def save_dqn(path: Path, env_id: str = "CartPole-v1") -> Path:
    """A DQN saved by hand with ``agent.save_checkpoint(path)`` (untrained)."""
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl.algorithms import DQN

        env = gym.make(env_id)
        agent = DQN(env.observation_space, env.action_space)
    path.parent.mkdir(parents=True, exist_ok=True)
    agent.save_checkpoint(str(path))
    return path


class _Exit:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import os

        return (os._exit, (3,))


class _Hang:
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        import time

        return (time.sleep, (3600,))


def hostile(path: Path, payload: object) -> Path:
    """A ``torch.save`` checkpoint that runs ``payload`` when unpickled and names ``agilerl``
    (so detection claims it, as it would a user's file)."""
    import torch

    torch.save({"algo": "DQN", "network_info": "agilerl.algorithms.dqn", "x": payload}, path)
    return path


def exits_at_load(path: Path) -> Path:
    """A checkpoint that ends the process that loads it."""
    return hostile(path, _Exit())


def hangs_at_load(path: Path) -> Path:
    """A checkpoint whose loading never finishes."""
    return hostile(path, _Hang())


def truncated(source: Path, path: Path) -> Path:
    """The first half of a real checkpoint, as an interrupted copy leaves it."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


class Allocate:
    """Unpickles into a 64 GiB buffer: far past any worker's memory limit."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (bytearray, (64 * 1024**3,))


def save_multi(path: Path, algo: str, **env_kwargs: Any) -> Path:
    """A MADDPG or IPPO on mpe2's ``simple_spread_v3`` (its default 3 agents), saved with
    ``agent.save_checkpoint(path)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl import algorithms
        from mpe2 import simple_spread_v3

        env = simple_spread_v3.parallel_env(**env_kwargs)
        ids = list(env.possible_agents)
        agent = getattr(algorithms, algo)(
            [env.observation_space(a) for a in ids], [env.action_space(a) for a in ids],
            agent_ids=ids)
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    agent.save_checkpoint(str(path))
    return path


def tiny_gpt2(folder: Path) -> Path:
    """A tiny GPT-2 with its own tokenizer, written by ``save_pretrained`` (model and
    tokenizer in one folder, as users save them)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from server_extension.demos.llm import build_tokenizer

    corpus = ["the cat sat on the mat", "a dog ran in the park", "hello there, how are you"]
    tokenizer = build_tokenizer(corpus * 20, vocab_size=300, max_length=64)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1,
                        n_head=2, bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPT2LMHeadModel(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def lora_adapter(base: Path, folder: Path, hub_base: str = "openai-community/gpt2") -> Path:
    """A PEFT LoRA adapter over ``base`` whose ``base_model_name_or_path`` names a Hub id
    (as adapters trained over a downloaded model do): not a folder on this machine."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            GPT2LMHeadModel.from_pretrained(base, local_files_only=True),
            LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True,
                       init_lora_weights=False, task_type="CAUSAL_LM"))
        with torch.no_grad():  # a visible change from the base
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.add_(0.5)
        model.peft_config["default"].base_model_name_or_path = hub_base
        model.save_pretrained(str(folder), save_embedding_layers=False)
    (folder / "README.md").unlink(missing_ok=True)
    return folder


def save_tictactoe_ippo(path: Path) -> Path:
    """IPPO for tic-tac-toe as users train it: the board flattened to 18 numbers (the
    environment gives 3x3x2 plus a mask), saved with ``agent.save_checkpoint``."""
    import numpy as np
    from gymnasium import spaces

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from agilerl.algorithms import IPPO
        from pettingzoo.classic import tictactoe_v3

        env = tictactoe_v3.env()
        ids = list(env.possible_agents)
        board = spaces.Box(np.zeros(18, np.float32), np.ones(18, np.float32), dtype=np.float32)
        agent = IPPO([board] * len(ids), [env.action_space(a) for a in ids], agent_ids=ids)
        env.close()
    agent.save_checkpoint(str(path))
    return path


@contextmanager
def empty_workspace_server(root: Path) -> Iterator[ServerProcess]:
    """A real server over the empty workspace ``root``, stopped on the way out."""
    with warnings.catch_warnings():
        # ServerProcess.start leaves its log handle to the collector (classic_fixtures.py).
        warnings.simplefilter("ignore", ResourceWarning)
        served = ServerProcess(root).start()
    try:
        yield served
    finally:
        served.stop()
