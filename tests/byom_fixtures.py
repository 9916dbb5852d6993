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
