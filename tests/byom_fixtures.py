"""Models "people actually have", made in the test by their own libraries: Stable-Baselines3
and sb3-contrib policies, and torch models as a state dict with its class, TorchScript,
torch.export and ONNX. Each writer puts the user's files into a workspace experiment the way
an import does (``step_<N>.<ext>`` checkpoints, VecNormalize statistics, code/), until the
import orchestrator lands and the tests go through its doors.

Training is kept to seconds: the tests compare the served answer with the library's own
``predict`` on the same inputs, which holds for any weights.
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from workbench_core.store import ExperimentWriter

# A CleanRL-style DQN network: its sizes come from the vector env passed to the constructor,
# and the user's script is the only place the class lives.
CLEANRL_AGENT = '''
import numpy as np
import torch.nn as nn


class QNetwork(nn.Module):
    def __init__(self, envs, hidden=32):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(int(np.array(envs.single_observation_space.shape).prod()), hidden),
            nn.ReLU(),
            nn.Linear(hidden, int(envs.single_action_space.n)),
        )

    def forward(self, x):
        return self.network(x)
'''


def write_experiment(root: Path, name: str, *, framework: str, algorithm: str,
                     checkpoints: dict[int, Path], project_type: str = "classic",
                     environment: str | None = None, extra: dict[str, Any] | None = None,
                     files: dict[str, Path] | None = None, recurrent: bool = False) -> Path:
    """Copy the user's checkpoint files (and ``files``: relative destination -> source) into
    a new experiment; its folder."""
    writer = ExperimentWriter.create(
        root, name, project_type=project_type, algorithm=algorithm,  # type: ignore[arg-type]
        framework=framework, environment=environment,
        dataset=None if project_type == "classic" else "user model",
        recurrent=recurrent, extra=dict(extra or {}))
    for step, src in sorted(checkpoints.items()):
        shutil.copyfile(src, writer.checkpoint_path(step, "".join(src.suffixes[-1:])))
        writer.log(step)
    for rel, src in (files or {}).items():
        dest = writer.folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return writer.folder


# -- Stable-Baselines3 ----------------------------------------------------------------------

def sb3_ppo_cartpole(out: Path, steps: int = 2048) -> Path:
    """A PPO trained on CartPole with CheckpointCallback saves: the folder of zips."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    folder = out / "ppo-checkpoints"
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=512, batch_size=128, n_epochs=2, seed=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    model.learn(steps, callback=CheckpointCallback(save_freq=1024, save_path=str(folder)))
    return folder


def sb3_dqn_cartpole(out: Path, steps: int = 2000) -> Path:
    """A DQN trained on CartPole, saved with model.save."""
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=500, train_freq=4, seed=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    model.learn(steps)
    model.save(out / "dqn_cartpole")
    return out / "dqn_cartpole.zip"


def sb3_sac_pendulum_vecnormalize(out: Path, steps: int = 300) -> tuple[Path, Path]:
    """A SAC trained on Pendulum inside VecNormalize: (the zip, the statistics file)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(make_vec_env("Pendulum-v1", n_envs=1, seed=0), norm_reward=False)
    model = SAC("MlpPolicy", venv, learning_starts=100, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(steps)
    model.save(out / "sac_pendulum")
    # Kept apart from the zip, so a test decides whether the import finds it beside it.
    (out / "stats").mkdir(exist_ok=True)
    venv.save(str(out / "stats" / "vecnormalize.pkl"))
    return out / "sac_pendulum.zip", out / "stats" / "vecnormalize.pkl"


def sb3_recurrent_cartpole(out: Path, steps: int = 256) -> Path:
    """An sb3-contrib RecurrentPPO on CartPole."""
    from sb3_contrib import RecurrentPPO

    model = RecurrentPPO("MlpLstmPolicy", "CartPole-v1", n_steps=128, batch_size=64,
                         n_epochs=1, seed=0, device="cpu",
                         policy_kwargs={"lstm_hidden_size": 16, "net_arch": [16]})
    model.learn(steps)
    model.save(out / "recurrent_ppo")
    return out / "recurrent_ppo.zip"


def sb3_maskable(out: Path, steps: int = 256) -> Path:
    """An sb3-contrib MaskablePPO on its own invalid-action test environment."""
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete

    env = InvalidActionEnvDiscrete(dim=6, n_invalid_actions=3)
    model = MaskablePPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0,
                        device="cpu", policy_kwargs={"net_arch": [16]})
    model.learn(steps)
    model.save(out / "maskable_ppo")
    return out / "maskable_ppo.zip"


def sb3_dict_obs(out: Path, steps: int = 128) -> Path:
    """A PPO with MultiInputPolicy on SB3's own Dict-observation test environment."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    model = PPO("MultiInputPolicy", SimpleMultiObsEnv(random_start=True), n_steps=64,
                batch_size=64, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    model.learn(steps)
    model.save(out / "ppo_dict")
    return out / "ppo_dict.zip"


def break_zip(src: Path, dest: Path, member: str) -> Path:
    """A copy of zip ``src`` without ``member``: a truncated or hand-edited save."""
    import zipfile

    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dest, "w") as new:
        for item in old.infolist():
            if item.filename != member:
                new.writestr(item, old.read(item.filename))
    return dest


def observations(space: Any, n: int, seed: int = 0) -> Any:
    """``n`` observations sampled from ``space``, batched (a dict of batches for Dict)."""
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    if isinstance(samples[0], dict):
        return {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    return np.stack([np.asarray(s) for s in samples])


# -- torch models ----------------------------------------------------------------------------

def cleanrl_files(out: Path) -> tuple[Any, Path, Path]:
    """A CleanRL-style QNetwork for CartPole: (the model, its script, its state dict)."""
    import importlib.util

    import gymnasium as gym
    import torch

    script = out / "cleanrl_agent.py"
    script.write_text(CLEANRL_AGENT, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("cleanrl_agent", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # As if the user's script were importable here (pickling the whole module needs it).
    sys.modules.setdefault("cleanrl_agent", module)
    torch.manual_seed(0)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])
    model = module.QNetwork(envs).eval()
    torch.save(model.state_dict(), out / "qnetwork.pt")
    return model, script, out / "qnetwork.pt"


def export_formats(model: Any, example: Any, out: Path, stem: str,
                   names: tuple[list[str], list[str]] = (["obs"], ["output"])) -> dict[str, Path]:
    """``model`` as TorchScript, torch.export (.pt2) and ONNX, each with a free batch axis."""
    import torch

    examples = example if isinstance(example, tuple) else (example,)
    paths = {"torchscript": out / f"{stem}_script.pt", "torch_export": out / f"{stem}.pt2",
             "onnx": out / f"{stem}.onnx"}
    with warnings.catch_warnings():
        # torch marks jit.trace and the TorchScript ONNX exporter deprecated; users' files
        # are still made with them, which is what these stand for.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(model, examples), str(paths["torchscript"]))
        batch = torch.export.Dim("batch")
        program = torch.export.export(model, examples,
                                      dynamic_shapes=tuple({0: batch} for _ in examples))
        torch.export.save(program, str(paths["torch_export"]))
        input_names, output_names = names
        torch.onnx.export(model, examples, str(paths["onnx"]), input_names=input_names,
                          output_names=output_names, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in input_names + output_names})
    return paths


def tiny_cnn() -> Any:
    """A tiny image classifier: (B, 1, 8, 8) images -> (B, 3) class logits."""
    import torch
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).eval()


def two_input_model() -> Any:
    """A model of two named inputs: features (B, 3) and context (B, 2) -> (B, 2)."""
    import torch
    from torch import nn

    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(2, 2)

        def forward(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return self.a(features) * torch.tanh(self.b(context))

    torch.manual_seed(2)
    return TwoInputs().eval()
