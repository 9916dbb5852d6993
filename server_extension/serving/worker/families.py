"""Framework families: which warm template a worker forks from, and what that template imports.

A template imports a family's libraries once, before any fork, so a worker starts in tens of
milliseconds. One template per family (not one that imports everything the workspace holds)
keeps a CartPole agent from waiting for transformers: Classic RL is ready first, the LLM stack
after it, and a family no experiment uses is never started.

To serve a new framework, add one line to :data:`FAMILY_OF`; a framework missing there forks
from the ``full`` family, which imports everything (slow, never wrong).
"""

from __future__ import annotations

_RUNTIMES = "server_extension.serving.runtimes"

_CLASSIC = (
    "numpy", "torch", "gymnasium", "pettingzoo",
    # AgileRL through its runtimes; ``:algorithm_classes`` also imports the algorithm modules.
    f"{_RUNTIMES}.agilerl:algorithm_classes", f"{_RUNTIMES}.agilerl_multi",
    f"{_RUNTIMES}.agilerl_recurrent", f"{_RUNTIMES}.supervised", f"{_RUNTIMES}.latent",
)

# family -> what its template imports, in order ("module" or "module:function to call").
# Only imports and calls that start no threads: torch's pools do not survive a fork.
FAMILIES: dict[str, tuple[str, ...]] = {
    "classic": _CLASSIC,
    # Not a superset of Classic: an LLM worker loads through transformers (and PEFT for an
    # adapter) and never imports AgileRL, whose algorithms alone take about 5 s to import here.
    "llm": ("numpy", "torch", "transformers", "peft", f"{_RUNTIMES}.llm"),
    "onnx": ("numpy", "onnxruntime"),
    # Stable-Baselines3 apart from AgileRL: a Classic AgileRL template need not import it.
    "sb3": ("numpy", "torch", "gymnasium", f"{_RUNTIMES}.sb3:warm"),
}
FULL = "full"
FAMILIES[FULL] = tuple(dict.fromkeys(m for mods in list(FAMILIES.values()) for m in mods))
# Small AgileRL policies served from their numpy form (``runtimes/numpy_policy.py``): no torch,
# no AgileRL, ready in a fraction of a second. Not in FULL: no framework needs it, the deployer
# picks it for a checkpoint with a policy sidecar.
NUMPY = "numpy"
FAMILIES[NUMPY] = ("numpy", "gymnasium.spaces", f"{_RUNTIMES}.numpy_policy")

# framework in experiment.json -> family. One line per framework.
FAMILY_OF: dict[str, str] = {
    "agilerl": "classic",
    "latent_ppo": "classic",
    "torch": "classic",
    "pytorch": "classic",
    "torchscript": "classic",
    "torch_export": "classic",
    "sb3": "sb3",
    "transformers": "llm",
    "onnx": "onnx",
    # Not a framework of experiment.json: what the deployer asks for when it serves a
    # checkpoint's policy sidecar (and the extension when the workspace has sidecars).
    NUMPY: NUMPY,
}

# The order templates start in: what a first Connect most likely needs comes first, and each
# starts once the one before it has finished importing (two at once would share the CPUs).
# The numpy family goes first: it is ready within a second, so sidecar policies never wait.
ORDER = (NUMPY, "classic", "sb3", "onnx", "llm", FULL)


def family_of(framework: str) -> str:
    """The family whose template serves ``framework`` (``full`` when it is not listed)."""
    return FAMILY_OF.get(framework, FULL)


def families_for(frameworks: list[str] | set[str]) -> list[str]:
    """The families ``frameworks`` need, in the order their templates start."""
    wanted = {family_of(f) for f in frameworks}
    return [f for f in ORDER if f in wanted]
