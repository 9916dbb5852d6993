"""Dynamic batching: concurrent calls gathered into one forward answer each caller as if alone.

Real AgileRL networks throughout (fresh, seeded, untrained: batching does not care what the
weights learned). No timing is asserted; only that answers match and batches happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server_extension.serving.batching import BatchingRuntime, forward_costs, wrap
from server_extension.serving.deployer import Deployer
from server_extension.serving.runtimes import RequestError, Runtime, load_runtime
from server_extension.serving.runtimes.agilerl import AgileRLRuntime, GreedyPolicy
from server_extension.workspace.registry import AgentRecord, Registry
from workbench_core.store import ExperimentStore

pytestmark = [
    # AgileRL's own noise when a recurrent PPO is built and loaded back.
    pytest.mark.filterwarnings(r"ignore:Attribute \w+ not found in checkpoint:UserWarning"),
    pytest.mark.filterwarnings(r"ignore:TensorDict\.to_module\(\):FutureWarning"),
]

THREADS = 16
CALLS = 20


def fresh_runtime(algorithm: str, env_id: str) -> AgileRLRuntime:
    from agents_widget.agilerl_training import create_agent

    agent = create_agent(algorithm, env_id, seed=0,
                         net_config={"encoder_config": {"hidden_size": [64, 64]},
                                     "head_config": {"hidden_size": [64]}})
    for network in agent.evolvable_attributes(networks_only=True).values():
        network.eval()
    return AgileRLRuntime(GreedyPolicy(agent), algo=algorithm)


@pytest.fixture(scope="module")
def dqn() -> AgileRLRuntime:
    return fresh_runtime("DQN", "CartPole-v1")


@pytest.fixture(scope="module")
def td3() -> AgileRLRuntime:
    return fresh_runtime("TD3", "Pendulum-v1")


def hammer(batched: BatchingRuntime, requests: list[dict[str, Any]]) -> list[Any]:
    """Send every request from THREADS threads at once; each slot gets its answer or error."""
    answers: list[Any] = [None] * len(requests)
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> None:
        start.wait()
        for i in range(offset, len(requests), THREADS):
            try:
                answers[i] = batched.get_action(**requests[i])[0]
            except Exception as exc:  # noqa: BLE001 - compared with the unbatched error
                answers[i] = exc

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def observations(rng: np.random.Generator, width: int, n: int) -> list[np.ndarray]:
    # Batches of 1 to 3 rows, as clients that send one env or a few vectorised envs.
    return [rng.normal(size=(int(rng.integers(1, 4)), width)).astype(np.float32)
            for _ in range(n)]


def test_discrete_answers_equal_unbatched(dqn: AgileRLRuntime) -> None:
    batched = BatchingRuntime(dqn)
    requests = [{"obs": obs} for obs in observations(np.random.default_rng(0), 4,
                                                     THREADS * CALLS)]
    answers = hammer(batched, requests)
    for request, answer in zip(requests, answers, strict=True):
        expected, _ = dqn.get_action(request["obs"])
        assert isinstance(answer, np.ndarray), answer
        assert answer.dtype == expected.dtype
        np.testing.assert_array_equal(answer, expected)
    assert batched.batches > 0  # concurrent callers really shared forwards


def test_continuous_answers_equal_unbatched(td3: AgileRLRuntime) -> None:
    batched = BatchingRuntime(td3)
    requests = [{"obs": obs} for obs in observations(np.random.default_rng(1), 3,
                                                     THREADS * CALLS)]
    answers = hammer(batched, requests)
    for request, answer in zip(requests, answers, strict=True):
        expected, _ = td3.get_action(request["obs"])
        assert answer.shape == expected.shape
        assert answer.dtype == expected.dtype
        # A matrix product may round its last bit differently at another batch size.
        np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-6)
    assert batched.batches > 0


def test_masks_and_bad_requests_stay_per_request(dqn: AgileRLRuntime) -> None:
    """Masked and unmasked requests mix; a malformed one fails alone with its own error."""
    rng = np.random.default_rng(2)
    requests: list[dict[str, Any]] = []
    for i, obs in enumerate(observations(rng, 4, THREADS * CALLS)):
        if i % 3 == 0:
            mask = np.zeros((obs.shape[0], 2), np.int8)
            mask[:, i % 2] = 1  # only one legal action: the answer must be it
            requests.append({"obs": obs, "action_mask": mask})
        elif i % 7 == 0:
            requests.append({"obs": np.zeros((1, 5), np.float32)})  # wrong width
        elif i % 11 == 0:
            requests.append({"obs": np.full((1, 4), np.nan, np.float32)})  # refused values
        else:
            requests.append({"obs": obs})
    batched = BatchingRuntime(dqn)
    answers = hammer(batched, requests)
    for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        if isinstance(answer, Exception):
            assert isinstance(answer, RequestError), (i, answer)
            with pytest.raises(RequestError) as unbatched:
                dqn.get_action(**request)
            assert str(answer) == str(unbatched.value)
            continue
        expected, _ = dqn.get_action(**request)
        np.testing.assert_array_equal(answer, expected)
        if "action_mask" in request:
            assert (answer == i % 2).all()


def test_other_calls_pass_through(dqn: AgileRLRuntime) -> None:
    batched = BatchingRuntime(dqn)
    with pytest.raises(RequestError, match="not recurrent"):
        batched.get_action(np.zeros((1, 4), np.float32),
                           hidden_state={"h": np.zeros((1, 1, 4), np.float32)})
    with pytest.raises(RequestError, match="shape"):
        batched.get_action(np.zeros((4,), np.float32))
    with pytest.raises(RequestError, match="does not answer predict"):
        batched.predict(np.zeros((1, 4), np.float32))
    batched.probe()
    assert batched.kind == dqn.kind
    assert batched.batches == 0


def save_recurrent(root: Path) -> Runtime:
    """A real recurrent PPO, saved as an experiment and loaded by the workbench's loader."""
    import torch
    from agilerl.algorithms import PPO
    from gymnasium import spaces

    from agents_widget.tracking import save_checkpoint, start_experiment

    torch.manual_seed(0)
    agent = PPO(spaces.Box(-1, 1, (2,), np.float32), spaces.Discrete(2), recurrent=True,
                net_config={"encoder_config": {"hidden_state_size": 8},
                            "head_config": {"hidden_size": [8]}})
    writer = start_experiment("memory", project_type="classic", algorithm="PPO",
                              framework="agilerl", environment="CartPole-v1", root=root,
                              recurrent=True)
    save_checkpoint(writer, 1, agent.save_checkpoint, evaluation_score=0.0)
    experiment = ExperimentStore(root).get("memory")
    return load_runtime(experiment, experiment.checkpoint(1))


def test_recurrent_is_never_batched(tmp_path: Path) -> None:
    runtime = save_recurrent(tmp_path)
    assert runtime.kind.recurrent
    assert wrap(runtime, "on") is runtime
    assert wrap(runtime, "auto") is runtime
    # Even wrapped by hand, recurrent calls go straight through with their hidden state.
    batched = BatchingRuntime(runtime)
    obs = np.zeros((1, 2), np.float32)
    action, hidden = batched.get_action(obs)
    expected, expected_hidden = runtime.get_action(obs)
    np.testing.assert_array_equal(action, expected)
    assert set(hidden) == set(expected_hidden)
    assert batched.batches == 0


def test_wrap_modes(dqn: AgileRLRuntime) -> None:
    assert wrap(dqn, "off") is dqn
    assert isinstance(wrap(dqn, "on"), BatchingRuntime)
    with pytest.raises(ValueError, match="auto, on, off"):
        wrap(dqn, "sometimes")
    one, eight = forward_costs(dqn, repeats=3)
    assert one > 0
    assert eight > 0


def test_deployer_wraps_loaded_runtimes(tmp_path: Path) -> None:
    """With batching "on" the deployer serves through the wrapper; "off" serves it bare."""
    from agents_widget.tracking import save_checkpoint, start_experiment

    agent_save: Callable[[str], Any] = fresh_agent_saver()
    writer = start_experiment("cart", project_type="classic", algorithm="DQN",
                              framework="agilerl", environment="CartPole-v1", root=tmp_path)
    save_checkpoint(writer, 1, agent_save, evaluation_score=0.0)
    registry = Registry(tmp_path / "registry.sqlite3")
    try:
        registry.create_agent(AgentRecord(name="cart", tab="classic", experiment="cart",
                                          checkpoint_rule="best", checkpoint_step=1,
                                          algo="DQN"))
        store = ExperimentStore(tmp_path)
        for mode, wrapped in (("on", True), ("off", False)):
            deployer = Deployer(registry, store, batching=mode, health_check_interval=0)
            runtime = deployer._load_and_probe(registry.get("cart"))
            assert isinstance(runtime, BatchingRuntime) is wrapped
            runtime.close()
        with pytest.raises(ValueError, match="batching"):
            Deployer(registry, store, batching="yes")
    finally:
        registry.close()


def fresh_agent_saver() -> Callable[[str], Any]:
    from agents_widget.agilerl_training import create_agent

    agent = create_agent("DQN", "CartPole-v1", seed=0)
    return agent.save_checkpoint  # type: ignore[no-any-return]
