"""Deployment code for an agent's expanded row: Python client, CLI (curl) and Manual HTTP, and
for LLM agents an OpenAI client (their ``/v1`` routes).

Pure functions of the endpoint and the experiment: no widgets and no key. Snippets read the
key from the ``ARENA_API_KEY`` environment variable (the variable the Arena client itself
falls back to), so the key is never written into the page, the notebook or a shell history.
Example::

    code = build_snippets("http://127.0.0.1:8888/agents/d/cartpole", experiment)
    code["Python client"].code      # runnable once ARENA_API_KEY is set

Which loop the Python client snippet shows follows the experiment: a gym loop; a recurrent
loop threading ``hidden_state``; PettingZoo loops with per-agent dicts, action masks and
environment-defined actions; ``generate`` for LLMs; ``predict`` for supervised models.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .client import ExperimentInfo

Kind = Literal["gym", "recurrent", "parallel", "turn_based", "llm", "supervised"]
KEY_ENV = "ARENA_API_KEY"
TITLES = ("Python client", "CLI", "Manual HTTP")
OPENAI_TITLE = "OpenAI client"  # a fourth tab, LLM agents only
LLM_FRAMEWORKS = ("transformers", "peft", "huggingface", "hf", "llm")


@dataclass(frozen=True)
class Snippet:
    """One tab of deployment code."""

    title: str
    language: Literal["python", "bash"]
    code: str


def snippet_kind(experiment: ExperimentInfo | None) -> Kind:
    """Which code fits the agent, from its experiment's project type and flags."""
    if experiment is None:
        return "gym"
    if experiment.tab == "advanced":
        framework = experiment.framework.lower()
        # LatentPPO answers /predict like supervised models, whatever decoder it records.
        if "latent" in framework or "latent" in experiment.algorithm.lower():
            return "supervised"
        llm = framework in LLM_FRAMEWORKS or (experiment.base_model and framework != "torch")
        return "llm" if llm else "supervised"
    if experiment.multi_agent:
        spec = _pettingzoo_spec(experiment.environment)
        return "turn_based" if spec and spec.get("kind") == "turn_based" else "parallel"
    return "recurrent" if experiment.recurrent else "gym"


def build_snippets(endpoint: str, experiment: ExperimentInfo | None) -> dict[str, Snippet]:
    """The three snippet tabs for an agent served at ``endpoint``."""
    endpoint = endpoint.rstrip("/")
    kind = snippet_kind(experiment)
    env_id = experiment.environment if experiment else None
    dataset = experiment.dataset if experiment else None
    width = input_width(experiment)
    snippets = {
        "Python client": Snippet("Python client", "python",
                                 python_client(endpoint, kind, env_id, dataset, width)),
        "CLI": Snippet("CLI", "bash", cli(endpoint, kind, env_id)),
        "Manual HTTP": Snippet("Manual HTTP", "python",
                               manual_http(endpoint, kind, env_id, width)),
    }
    if kind == "llm":
        snippets[OPENAI_TITLE] = Snippet(OPENAI_TITLE, "python", openai_client(endpoint))
    return snippets


def input_width(experiment: ExperimentInfo | None) -> int:
    """How many values one ``predict`` row holds: a LatentPPO policy's observation columns,
    a supervised model's feature columns, or 4 when the experiment does not say."""
    extra = experiment.extra if experiment is not None else {}
    for key in ("observation_columns", "feature_columns"):
        columns = extra.get(key)
        if isinstance(columns, list) and columns:
            return len(columns)
    return 4


# -- environments ------------------------------------------------------------------------------


def _pettingzoo_spec(environment: str | None) -> dict[str, Any] | None:
    # The demo recipes know how to build the PettingZoo environments the workbench ships.
    try:
        from server_extension.demo_classic import ENV_SPECS
    except ImportError:
        return None
    spec = ENV_SPECS.get(environment or "")
    return dict(spec) if spec else None


def _pettingzoo_setup(environment: str | None, kind: Kind) -> str:
    spec = _pettingzoo_spec(environment)
    if spec is None:
        return textwrap.dedent(f'''\
            def make_env():
                """Build the PettingZoo environment the agent was trained on ({environment})."""
                raise NotImplementedError("Build your PettingZoo environment here.")


            env = make_env()''')
    module, _, name = str(spec["module"]).rpartition(".")
    factory = "env" if kind == "turn_based" else "parallel_env"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in (spec.get("kwargs") or {}).items())
    return f"from {module} import {name}\n\nenv = {name}.{factory}({kwargs})"


def _gym_id(environment: str | None) -> str:
    return environment or "YOUR-ENV-ID"


@functools.lru_cache(maxsize=32)
def _sample_observation(environment: str) -> str | None:
    """base64 ``.npy`` of the environment's first observation (seed 0), batch axis added."""
    try:
        import gymnasium as gym

        if environment not in gym.registry:
            return None
        env = gym.make(environment)
        try:
            obs, _ = env.reset(seed=0)
        finally:
            env.close()
    except Exception:  # noqa: BLE001 - a sample is a nicety; the snippet falls back to a hint
        return None
    if not isinstance(obs, np.ndarray):
        return None
    return encode_array(obs)


def encode_array(array: Any) -> str:
    """base64 of ``np.save`` with a leading batch axis of 1, as the inference API expects."""
    buf = io.BytesIO()
    np.save(buf, np.expand_dims(np.asarray(array), 0), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# -- Python client -----------------------------------------------------------------------------

_CLIENT_HEAD = '''\
import os

{imports}from agilerl.arena.inference import Agent

# The key is read from the environment: export {key_env}=<the key above>
agent = Agent("{endpoint}", api_key=os.environ["{key_env}"])
'''

_GYM_LOOP = '''\
env = gym.make("{env_id}")
obs, info = env.reset(seed=0)
episode_return, done = 0.0, False
while not done:
    action, _ = agent.get_action(obs, info=info)
    obs, reward, terminated, truncated, info = env.step(action)
    episode_return += float(reward)
    done = terminated or truncated
print("episode return:", episode_return)
'''

_RECURRENT_LOOP = '''\
env = gym.make("{env_id}")
obs, info = env.reset(seed=0)
hidden_state = None  # None on an episode's first step: the agent starts from zeros
episode_return, done = 0.0, False
while not done:
    # Pass the hidden state from each answer into the next request.
    action, hidden_state = agent.get_action(obs, hidden_state=hidden_state, info=info)
    obs, reward, terminated, truncated, info = env.step(action)
    episode_return += float(reward)
    done = terminated or truncated
print("episode return:", episode_return)
'''

_PARALLEL_LOOP = '''\
observations, infos = env.reset(seed=0)
returns = dict.fromkeys(env.agents, 0.0)
while env.agents:
    # Per-agent dicts: legal-action masks, and actions the environment fixes itself
    # (NaN entries mean "the policy decides").
    masks = {{a: i["action_mask"] for a, i in infos.items() if "action_mask" in i}}
    env_defined = {{a: i["env_defined_actions"] for a, i in infos.items()
                   if i.get("env_defined_actions") is not None}}
    actions, _ = agent.get_action(
        observations,
        info={{"action_mask": masks}} if masks else None,
        env_defined_actions=env_defined or None,
    )
    observations, rewards, terminations, truncations, infos = env.step(actions)
    for agent_id, reward in rewards.items():
        returns[agent_id] = returns.get(agent_id, 0.0) + float(reward)
print("returns:", returns)
'''

_TURN_BASED_LOOP = '''\
env.reset(seed=0)
for agent_id in env.agent_iter():
    observation, reward, termination, truncation, info = env.last()
    if termination or truncation:
        env.step(None)
        continue
    # One agent moves at a time: send its observation and its legal-move mask as dicts.
    obs = np.asarray(observation["observation"], dtype=np.float32).reshape(-1)
    actions, _ = agent.get_action(
        {{agent_id: obs}}, info={{"action_mask": {{agent_id: observation["action_mask"]}}}}
    )
    env.step(int(actions[agent_id]))
print("final rewards:", env.rewards)
'''

_LLM_CALLS = '''\
answer = agent.generate(
    "Hello! What can you help me with?",
    params={{"max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9, "do_sample": True}},
)
print(answer.results[0].completion)

# Or stream the tokens as they are generated:
for chunk in agent.generate_stream("Tell me a very short story."):
    print(chunk, end="", flush=True)
'''

_SUPERVISED_CALLS = '''\
# One example shaped like a row of the training data ({dataset}); the client adds the
# batch axis. Pass batched=True to send many rows at once.
inputs = np.zeros({n_features}, dtype=np.float32)
prediction, meta = agent.predict(inputs)
print("prediction:", prediction, f"({{meta.inference_time_ms:.1f}} ms)")
'''


def python_client(endpoint: str, kind: Kind, environment: str | None = None,
                  dataset: str | None = None, n_inputs: int = 4) -> str:
    """The Arena client (``agilerl.arena.inference.Agent``) in a loop fitting ``kind``."""
    def head(imports: str = "") -> str:
        return _CLIENT_HEAD.format(endpoint=endpoint, key_env=KEY_ENV, imports=imports)

    fields = {"env_id": _gym_id(environment), "dataset": dataset or "your data set",
              "n_features": n_inputs}
    if kind in ("gym", "recurrent"):
        loop = _GYM_LOOP if kind == "gym" else _RECURRENT_LOOP
        return head("import gymnasium as gym\n") + "\n" + loop.format(**fields)
    if kind in ("parallel", "turn_based"):
        loop = _PARALLEL_LOOP if kind == "parallel" else _TURN_BASED_LOOP
        return (head("import numpy as np\n") + "\n" + _pettingzoo_setup(environment, kind)
                + "\n" + loop.format(**fields))
    if kind == "llm":
        return head() + "\n" + _LLM_CALLS.format(**fields)
    return head("import numpy as np\n") + "\n" + _SUPERVISED_CALLS.format(**fields)


# -- CLI ---------------------------------------------------------------------------------------


def cli(endpoint: str, kind: Kind, environment: str | None = None) -> str:
    """A curl command for the route that fits ``kind``, with a real observation when known."""
    lines = [
        "# Set the key first: export " + KEY_ENV + "=<the key above>",
        f'ENDPOINT="{endpoint}"',
        "",
        "# What the deployment serves (no key needed):",
        'curl -sS "$ENDPOINT/status"; echo',
        "",
    ]
    if kind == "llm":
        body: dict[str, Any] = {
            "prompts": ["Hello! What can you help me with?"],
            "params": {"max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9,
                       "do_sample": True},
        }
        route, note = "generate", "# Generate a completion:"
    elif kind == "supervised":
        body = {"inputs": "<base64 of np.save(one batch of inputs)>"}
        route, note = "predict", "# Predict (inputs: base64 of np.save with a batch axis):"
    else:
        sample = _sample_observation(environment) if kind == "gym" and environment else None
        if sample is not None:
            body = {"obs": sample, "batch_size": 1}
            note = (f"# One action for {environment}'s first observation (seed 0), sent as "
                    "base64 of np.save with a batch axis of 1:")
        elif kind in ("parallel", "turn_based"):
            body = {"obs": {"<agent_id>": "<base64 of np.save(obs with a batch axis)>"},
                    "batch_size": 1}
            note = "# One action per agent (obs: a dict of base64 np.save arrays per agent):"
        else:
            body = {"obs": "<base64 of np.save(obs with a batch axis of 1)>", "batch_size": 1}
            note = "# One action (obs: base64 of np.save with a batch axis of 1):"
        if kind == "recurrent":
            body["hidden_state"] = None  # null on an episode's first step
        route = "get_action"
    lines += [
        note,
        f'curl -sS -X POST "$ENDPOINT/{route}" \\',
        f'  -H "Authorization: Bearer ${KEY_ENV}" \\',
        '  -H "Content-Type: application/json" \\',
        f"  -d '{json.dumps(body)}'",
        "echo",
    ]
    return "\n".join(lines) + "\n"


# -- Manual HTTP -------------------------------------------------------------------------------

_SERDE = '''\
import base64
import io
import os

import numpy as np
import requests

HEADERS = {{"Authorization": "Bearer " + os.environ["{key_env}"]}}


def serialize(data):
    """Arrays as base64 of np.save with a batch axis of 1; dicts nest; None stays None."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {{k: serialize(v) for k, v in data.items()}}
    buf = io.BytesIO()
    np.save(buf, np.expand_dims(np.asarray(data), 0), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def deserialize(data):
    """The inverse of serialize: decode (never unpickle) and drop the batch axis."""
    if data is None:
        return None
    if isinstance(data, dict):
        return {{k: deserialize(v) for k, v in data.items()}}
    return np.load(io.BytesIO(base64.b64decode(data)), allow_pickle=False)[0]

'''

_HTTP_GYM = '''\
import gymnasium as gym

env = gym.make("{env_id}")
obs, info = env.reset(seed=0)
response = requests.post(
    "{endpoint}/get_action",
    headers=HEADERS,
    json={{"obs": serialize(obs), "batch_size": 1}},
    timeout=30,
)
response.raise_for_status()
action = deserialize(response.json()["action"])
print("action:", action)
obs, reward, terminated, truncated, info = env.step(action)
'''

_HTTP_RECURRENT = '''\
import gymnasium as gym

env = gym.make("{env_id}")
obs, info = env.reset(seed=0)
hidden_state = None  # null on an episode's first step: the agent starts from zeros
for _ in range(3):
    response = requests.post(
        "{endpoint}/get_action",
        headers=HEADERS,
        json={{"obs": serialize(obs), "hidden_state": serialize(hidden_state), "batch_size": 1}},
        timeout=30,
    )
    response.raise_for_status()
    answer = response.json()
    action = deserialize(answer["action"])
    hidden_state = deserialize(answer.get("hidden_state"))  # send it back next time
    obs, reward, terminated, truncated, info = env.step(action)
print("last action:", action)
'''

_HTTP_MULTI = '''\
{setup}
observations, infos = env.reset(seed=0)
body = {{"obs": serialize(observations), "batch_size": 1}}
masks = {{a: i["action_mask"] for a, i in infos.items() if "action_mask" in i}}
if masks:
    body["action_mask"] = serialize(masks)
response = requests.post("{endpoint}/get_action", headers=HEADERS, json=body, timeout=30)
response.raise_for_status()
actions = deserialize(response.json()["action"])  # a dict: one action per agent
print("actions:", actions)
'''

_HTTP_TURN_BASED = '''\
{setup}
env.reset(seed=0)
agent_id = env.agent_selection
observation, *_ = env.last()
obs = np.asarray(observation["observation"], dtype=np.float32).reshape(-1)
body = {{
    "obs": serialize({{agent_id: obs}}),
    "action_mask": serialize({{agent_id: observation["action_mask"]}}),
    "batch_size": 1,
}}
response = requests.post("{endpoint}/get_action", headers=HEADERS, json=body, timeout=30)
response.raise_for_status()
print("move:", deserialize(response.json()["action"]))
'''

_HTTP_LLM = '''\
response = requests.post(
    "{endpoint}/generate",
    headers=HEADERS,
    json={{
        "prompts": ["Hello! What can you help me with?"],
        "params": {{"max_new_tokens": 100, "temperature": 0.7, "top_p": 0.9, "do_sample": True}},
    }},
    timeout=120,
)
response.raise_for_status()
print(response.json()["results"][0]["completion"])
'''

_HTTP_SUPERVISED = '''\
inputs = np.zeros({n_inputs}, dtype=np.float32)  # one example shaped like a row of the inputs
response = requests.post(
    "{endpoint}/predict", headers=HEADERS, json={{"inputs": serialize(inputs)}}, timeout=30
)
response.raise_for_status()
print("prediction:", deserialize(response.json()["results"]))
'''


def manual_http(endpoint: str, kind: Kind, environment: str | None = None,
                n_inputs: int = 4) -> str:
    """``requests.post`` on the full URL (endpoint + route) with a numpy serialize helper."""
    head = _SERDE.format(key_env=KEY_ENV)
    fields: Mapping[str, str | int] = {"endpoint": endpoint, "env_id": _gym_id(environment),
                                       "n_inputs": n_inputs}
    if kind == "gym":
        body = _HTTP_GYM.format(**fields)
    elif kind == "recurrent":
        body = _HTTP_RECURRENT.format(**fields)
    elif kind in ("parallel", "turn_based"):
        template = _HTTP_MULTI if kind == "parallel" else _HTTP_TURN_BASED
        body = template.format(setup=_pettingzoo_setup(environment, kind), **fields)
    elif kind == "llm":
        body = _HTTP_LLM.format(**fields)
    else:
        body = _HTTP_SUPERVISED.format(**fields)
    return head + "\n" + body


# -- OpenAI client (LLM agents) ----------------------------------------------------------------

_OPENAI_CLIENT = '''\
import os

from openai import OpenAI

# The key is read from the environment: export {key_env}=<the key above>
client = OpenAI(base_url="{endpoint}/v1", api_key=os.environ["{key_env}"])
MODEL = "{model}"  # the agent's name is its model id (client.models.list() shows it)

reply = client.chat.completions.create(
    model=MODEL,
    messages=[{{"role": "user", "content": "Hello! What can you help me with?"}}],
    max_tokens=100,
    temperature=0.7,
)
print(reply.choices[0].message.content)

# Or stream the tokens as they are generated:
stream = client.chat.completions.create(
    model=MODEL,
    messages=[{{"role": "user", "content": "Tell me a very short story."}}],
    max_tokens=100,
    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
'''


def openai_client(endpoint: str) -> str:
    """The official ``openai`` package on the agent's ``/v1`` routes (chat, then streamed)."""
    model = endpoint.rstrip("/").rsplit("/", 1)[-1]
    return _OPENAI_CLIENT.format(endpoint=endpoint, key_env=KEY_ENV, model=model)
