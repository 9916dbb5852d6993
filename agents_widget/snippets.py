"""Deployment code for an agent's expanded row, in the hosted Agents page's three tabs:
Arena client (``ArenaClient`` from the Arena SDK), Arena CLI (``arena agent ...``) and Manual
HTTP (``requests``), and for LLM agents a fourth, OpenAI client (their ``/v1`` routes).

Pure functions of the endpoint and the experiment: no widgets and no secret. The Arena client
and CLI find the workspace through ``ARENA_BASE_URL`` (the server's ``agents/arena`` control
plane) and authenticate with ``ARENA_API_KEY``, a workspace access token; Manual HTTP sends
``ARENA_API_KEY`` too (a token, or the agent's own key). So no secret is ever written into the
page, the notebook or a shell history. Example::

    code = build_snippets("http://127.0.0.1:8888/agents/d/cartpole", experiment)
    code["Arena client"].code      # runnable once ARENA_BASE_URL and ARENA_API_KEY are set

Which loop the Arena client snippet shows follows the experiment: a gym loop; a recurrent
loop threading ``hidden_state``; PettingZoo loops with per-agent dicts, action masks and
environment-defined actions; ``generate`` for LLMs; ``predict`` for supervised models. The
CLI has commands for LLM agents only (``generate``, ``sessions``); for the others the Arena
CLI tab binds the agent and adds the one SDK call the CLI lacks.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .client import ExperimentInfo

Kind = Literal["gym", "recurrent", "parallel", "turn_based", "llm", "supervised"]
KEY_ENV = "ARENA_API_KEY"
BASE_URL_ENV = "ARENA_BASE_URL"
TITLES = ("Arena client", "Arena CLI", "Manual HTTP")
DEPLOYMENT_PATH = "/agents/d/"
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
    name = agent_name(endpoint)
    kind = snippet_kind(experiment)
    env_id = experiment.environment if experiment else None
    dataset = experiment.dataset if experiment else None
    width = input_width(experiment)
    keep = kept_entries(experiment)
    snippets = {
        "Arena client": Snippet("Arena client", "python",
                                python_client(name, kind, env_id, dataset, width,
                                              base_url=control_plane_url(endpoint), keep=keep)),
        "Arena CLI": Snippet("Arena CLI", "bash", cli(endpoint, kind, env_id, width, keep=keep)),
        "Manual HTTP": Snippet("Manual HTTP", "python",
                               manual_http(endpoint, kind, env_id, width, keep=keep)),
    }
    if kind == "llm":
        snippets[OPENAI_TITLE] = Snippet(OPENAI_TITLE, "python", openai_client(endpoint))
    return snippets


def agent_name(endpoint: str) -> str:
    """The deployment name in an inference URL (``.../agents/d/<name>``)."""
    return endpoint.rstrip("/").rpartition("/")[2]


def control_plane_url(endpoint: str) -> str:
    """``ARENA_BASE_URL`` for the server serving ``endpoint``: its ``agents/arena`` prefix."""
    base, found, _ = endpoint.rstrip("/").rpartition(DEPLOYMENT_PATH)
    return f"{base}/agents/arena" if found else "<server URL>/agents/arena"


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
        from workbench_core.environments import ENV_SPECS
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


def kept_entries(experiment: ExperimentInfo | None) -> list[int] | None:
    """The observation entries a gym agent was trained on, when its experiment keeps only
    some (``extra.env.observation.keep``, e.g. the recurrent demo's CartPole without
    velocities); ``None`` when it sees the whole observation."""
    env = (experiment.extra if experiment is not None else {}).get("env")
    rule = env.get("observation") if isinstance(env, Mapping) else None
    keep = rule.get("keep") if isinstance(rule, Mapping) else None
    if isinstance(keep, list) and keep and all(isinstance(i, int) for i in keep):
        return keep
    return None


def _gym_setup(environment: str | None, keep: list[int] | None) -> str:
    make = f'gym.make("{_gym_id(environment)}")'
    if keep is None:
        return f"env = {make}"
    return textwrap.dedent(f'''\
        # The agent was trained on observation entries {keep} only (its experiment.json).
        KEEP = {keep}
        env = gym.wrappers.TransformObservation(
            {make}, lambda obs: obs[KEEP],
            gym.spaces.Box(-float("inf"), float("inf"), (len(KEEP),)))''')


# -- Python client -----------------------------------------------------------------------------

_CLIENT_HEAD = '''\
{imports}from agilerl.arena.client import ArenaClient

# ArenaClient reads the server and the credential from the environment:
#   export {base_env}="{base_url}"
#   export {key_env}=<an access token from the Agents panel's Access tokens section>
client = ArenaClient()
agent = client.open_inference_agent("{name}")
'''

_GYM_LOOP = '''\
{env_setup}
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
{env_setup}
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


def python_client(name: str, kind: Kind, environment: str | None = None,
                  dataset: str | None = None, n_inputs: int = 4, *,
                  base_url: str = "<server URL>/agents/arena",
                  keep: list[int] | None = None) -> str:
    """The Arena client (``ArenaClient().open_inference_agent(name)``) in a loop fitting
    ``kind``."""
    def head(imports: str = "") -> str:
        return _CLIENT_HEAD.format(name=name, key_env=KEY_ENV, base_env=BASE_URL_ENV,
                                   base_url=base_url,
                                   imports=imports + "\n" if imports else "")

    fields = {"env_setup": _gym_setup(environment, keep),
              "dataset": dataset or "your data set", "n_features": n_inputs}
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


# -- Arena CLI ---------------------------------------------------------------------------------

_CLI_HEAD = '''\
# The Arena CLI (pip install agilerl-arena) talks to this server's control plane:
export {base_env}="{base_url}"
# and authenticates with an access token (Access tokens section of the Agents panel):
#   export {key_env}=<your token>

arena agent list --name {name}    # status and inference URL
arena agent run {name}            # make it the active agent
'''

_CLI_LLM = '''\
arena agent generate --prompt "Hello! What can you help me with?"
# The CLI keeps one session per agent: the next prompt continues the conversation.
arena agent generate --prompt "Say that again in one sentence."
arena agent sessions list
'''

_SDK_CALL_HEAD = '''\
# The CLI has no command for {route}; the same credentials serve the SDK:
python - <<'PY'
{imports}from agilerl.arena.client import ArenaClient

agent = ArenaClient().open_inference_agent("{name}")
'''

_SDK_GYM = '''\
{env_setup}
obs, info = env.reset(seed=0)
action, _ = agent.get_action(obs, info=info)
print("action:", action)
'''

_SDK_RECURRENT = '''\
{env_setup}
obs, info = env.reset(seed=0)
# hidden_state=None on an episode's first step; pass the returned one into the next call.
action, hidden_state = agent.get_action(obs, hidden_state=None, info=info)
print("action:", action)
'''

_SDK_PARALLEL = '''\
{setup}
observations, infos = env.reset(seed=0)
actions, _ = agent.get_action(observations)
print("actions:", actions)
'''

_SDK_TURN_BASED = '''\
{setup}
env.reset(seed=0)
agent_id = env.agent_selection
observation, *_ = env.last()
obs = np.asarray(observation["observation"], dtype=np.float32).reshape(-1)
actions, _ = agent.get_action(
    {{agent_id: obs}}, info={{"action_mask": {{agent_id: observation["action_mask"]}}}}
)
print("move:", actions[agent_id])
'''

_SDK_SUPERVISED = '''\
prediction, meta = agent.predict(np.zeros({n_inputs}, dtype=np.float32))
print("prediction:", prediction)
'''


def cli(endpoint: str, kind: Kind, environment: str | None = None,
        n_inputs: int = 4, *, keep: list[int] | None = None) -> str:
    """``arena agent ...`` for the agent at ``endpoint``: generate and sessions for LLMs; for
    the other kinds, bind the agent and make the SDK call the CLI has no command for."""
    name = agent_name(endpoint)
    head = _CLI_HEAD.format(base_env=BASE_URL_ENV, key_env=KEY_ENV, name=name,
                            base_url=control_plane_url(endpoint))
    if kind == "llm":
        return head + "\n" + _CLI_LLM
    fields = {"env_setup": _gym_setup(environment, keep), "n_inputs": n_inputs}
    if kind in ("gym", "recurrent"):
        imports, route = "import gymnasium as gym\n", "get_action"
        body = (_SDK_GYM if kind == "gym" else _SDK_RECURRENT).format(**fields)
    elif kind in ("parallel", "turn_based"):
        imports, route = "import numpy as np\n", "get_action"
        template = _SDK_PARALLEL if kind == "parallel" else _SDK_TURN_BASED
        body = template.format(setup=_pettingzoo_setup(environment, kind), **fields)
    else:
        imports, route = "import numpy as np\n", "predict"
        body = _SDK_SUPERVISED.format(**fields)
    call = _SDK_CALL_HEAD.format(route=route, name=name, imports=imports + "\n")
    return head + "\n" + call + body + "PY\n"


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

{env_setup}
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

{env_setup}
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
                n_inputs: int = 4, *, keep: list[int] | None = None) -> str:
    """``requests.post`` on the full URL (endpoint + route) with a numpy serialize helper."""
    head = _SERDE.format(key_env=KEY_ENV)
    fields: Mapping[str, str | int] = {"endpoint": endpoint,
                                       "env_setup": _gym_setup(environment, keep),
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
