"""Deploy every Classic RL demo experiment of a running workbench and play it over HTTP.

What the issue's "done when" asks, through the platform's own client: for each Classic RL
experiment the server lists, create an agent from its best checkpoint, Connect, wait for
Deployed, then play seeded episodes through ``agilerl.arena.inference.Agent`` (action masks
for tic-tac-toe, hidden state for the recurrent policy, per-agent dicts for MPE) beside a
uniformly random policy on the same seeds. Writes a Markdown table. Example::

    python -m benchmarks.demo_families --url http://127.0.0.1:8888/ --token TOKEN \\
        --episodes 10 --out benchmarks/results/demo-families.md

The agents it creates (``check-<experiment>``) are deleted at the end.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from workbench_core.environments import env_spec
from workbench_core.episodes import client_act, play_episode


def _api(url: str, token: str, method: str, path: str, **kwargs: Any) -> Any:
    answer = requests.request(method, f"{url}agents/api/{path}", timeout=60,
                              headers={"Authorization": f"token {token}"}, **kwargs)
    if answer.status_code >= 400:
        raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
    return answer.json() if answer.text else None


def _deploy(url: str, token: str, name: str, experiment: str) -> dict[str, Any]:
    _api(url, token, "POST", "agents", json={"name": name, "experiment": experiment,
                                             "checkpoint": "best"})
    _api(url, token, "POST", f"agents/{name}/connect")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        agent = _api(url, token, "GET", f"agents/{name}")
        if agent["status"] in ("Deployed", "Failed"):
            return dict(agent)
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not reach Deployed in 120 s")


def _score(spec: dict[str, Any], act: Any, episodes: int) -> str:
    """Mean return per agent; for tic-tac-toe, the win rate against random moves."""
    if spec.get("kind") == "turn_based":
        wins = 0
        for i in range(episodes):
            side = ("player_1", "player_2")[i % 2]
            episode = play_episode(spec, act, seed=1000 + i, opponent="random", agent_side=side)
            wins += episode.returns[side] > 0
        return f"{wins / episodes:.0%} wins"
    return f"{np.mean([play_episode(spec, act, seed=1000 + i).total for i in range(episodes)]):.1f}"


def check(url: str, token: str, episodes: int) -> list[dict[str, str]]:
    """One row per Classic RL experiment: family, deploy time, its score and random's."""
    from agilerl.arena.inference import Agent

    rows = []
    for exp in _api(url, token, "GET", "experiments")["experiments"]:
        if exp["tab"] != "classic" or not exp["checkpoints"]:
            continue
        name = f"check-{exp['name']}"[:60]
        started = time.perf_counter()
        agent = _deploy(url, token, name, exp["name"])
        seconds = time.perf_counter() - started
        try:
            if agent["status"] != "Deployed":
                rows.append({"experiment": exp["name"], "algorithm": exp["algorithm"],
                             "deployed": f"Failed: {agent.get('error')}", "agent": "",
                             "random": ""})
                continue
            spec = env_spec(exp.get("environment"), exp.get("extra"))
            with Agent(agent["endpoint"], api_key=agent["api_key"]) as client:
                mine = _score(spec, client_act(client), episodes)
            family = exp["algorithm"] + (" (recurrent)" if exp.get("recurrent") else "")
            rows.append({"experiment": exp["name"], "algorithm": family,
                         "deployed": f"{seconds:.1f} s", "agent": mine,
                         "random": _score(spec, None, episodes)})
        finally:
            _api(url, token, "DELETE", f"agents/{name}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--url``, ``--token``, ``--episodes``, ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo_families")
    parser.add_argument("--url", required=True, help="the server's URL, base_url included")
    parser.add_argument("--token", required=True, help="its Jupyter token")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    url = args.url if args.url.endswith("/") else args.url + "/"
    rows = check(url, args.token, args.episodes)
    lines = [f"Every Classic RL experiment deployed from its best checkpoint and played through "
             f"`agilerl.arena.inference.Agent`, {args.episodes} seeded episodes each (seeds "
             "1000+; tic-tac-toe: alternate sides against random moves), beside uniformly "
             "random actions on the same seeds.", "",
             "| experiment | family | Connect → Deployed | agent | random |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['experiment']} | {r['algorithm']} | {r['deployed']} | {r['agent']} | "
              f"{r['random']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
