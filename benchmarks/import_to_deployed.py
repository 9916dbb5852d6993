"""Time from ``agents-workbench import`` to a Deployed agent, for each kind the import takes.

Each case's files are made by the real libraries (``tests/import_support.py``), imported with
the one CLI command a user would type, then an agent is created and connected through the
management API; the time runs from starting the command to the agent reading Deployed, and
on to the server's background evaluation having scored every checkpoint (Classic cases: no
scores were given, so the workbench evaluates them).

    python -m benchmarks.import_to_deployed [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import import_support
from tests.servers import ServerProcess

BIN = Path(sys.executable).parent


def _cases(base: Path) -> list[tuple[str, list[str]]]:
    dqn = import_support.train_dqn(base / "dqn-run")
    ppo = import_support.train_ppo(base / "ppo-run")
    saved = import_support.save_dqn(base / "my_agent.pt")
    maddpg = import_support.save_multi(base / "spread_maddpg.pt", "MADDPG")
    ippo = import_support.save_multi(base / "spread_ippo.pt", "IPPO")
    ttt = import_support.save_tictactoe_ippo(base / "ttt_ippo.pt")
    gpt2 = import_support.tiny_gpt2(base / "tiny-gpt2")
    lora = import_support.lora_adapter(gpt2, base / "my-lora")
    return [
        ("AgileRL DQN, train_off_policy files", [f"{dqn}_*.pt", "--env", "CartPole-v1"]),
        ("AgileRL PPO, train_on_policy folder", [str(ppo.parent), "--env", "CartPole-v1"]),
        ("AgileRL save_checkpoint file", [str(saved), "--env", "CartPole-v1"]),
        ("MADDPG, simple_spread_v3 (3 agents)", [str(maddpg), "--env", "mpe2.simple_spread_v3"]),
        ("IPPO, simple_spread_v3 (3 agents)", [str(ippo), "--env", "mpe2.simple_spread_v3"]),
        ("IPPO, tic-tac-toe", [str(ttt), "--env", "pettingzoo.classic.tictactoe_v3"]),
        ("Hugging Face save_pretrained folder", [str(gpt2)]),
        ("PEFT LoRA adapter", [str(lora), "--base-model", str(gpt2)]),
    ]


def _scored(server: ServerProcess, name: str, started: float) -> tuple[str, str]:
    """Wait for the server's background evaluation of ``name`` (if it has one): the time
    from the import's start until every checkpoint is scored, and the scores."""
    while True:
        listing = server.api("GET", "experiments").json()["experiments"]
        experiment = next(e for e in listing if e["name"] == name)
        plan = experiment.get("evaluation")
        if not plan:
            return "-", "none (no environment: Best is the final)"
        if plan["state"] == "done":
            scored = time.perf_counter() - started
            values = [c["evaluation_score"] for c in experiment["checkpoints"]]
            text = ", ".join("failed" if v is None else f"{v:.3g}" for v in values)
            return f"{scored:.1f}", f"evaluated over {plan['episodes']} episodes: {text}"
        time.sleep(0.5)


def main() -> None:
    """Run every case against one server over an empty workspace; print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cases = _cases(base / "files")
        (base / "ws").mkdir()
        server = ServerProcess(base / "ws").start()
        rows = ["| case | command | import (s) | import to Deployed (s) | import to scored (s) "
                "| scores |", "|---|---|---|---|---|---|"]
        try:
            for i, (label, argv) in enumerate(cases):
                name = f"case-{i}"
                command = ["agents-workbench", "import", *argv, "--name", name,
                           "--root", str(server.root)]
                started = time.perf_counter()
                done = subprocess.run([str(BIN / command[0]), *command[1:]], check=False,
                                      capture_output=True, text=True)
                imported = time.perf_counter() - started
                if done.returncode != 0:
                    rows.append(f"| {label} | refused | {done.stderr.strip()[:200]} | |")
                    continue
                server.deploy(name, name, "final", timeout=600)
                deployed = time.perf_counter() - started
                scored, scores = _scored(server, name, started)
                shown = " ".join(shlex.quote(a) for a in command[:-2]).replace(tmp, "…")
                rows.append(f"| {label} | `{shown}` | {imported:.1f} | {deployed:.1f} | "
                            f"{scored} | {scores} |")
                print(rows[-1], flush=True)
        finally:
            server.stop()
    table = "\n".join(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
