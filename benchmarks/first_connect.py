"""First Connect on a fresh server (issue #33), written to ``benchmarks/results/``.

    python -m benchmarks.first_connect            # every case: about 5 minutes on a quiet
                                                  # 2-core machine
    python -m benchmarks.first_connect --quick    # DQN and the chat model, offsets 0 and 5
    python -m benchmarks.first_connect --no-sidecars   # the same without policy sidecars:
                                                  # every Classic policy through torch

For each workspace (``full``: the quick-trained Classic demo runs, MADDPG and the tiny chat
model; ``classic``: the same without the chat model), each policy and each offset, a fresh
``jupyter server`` is started; at ``offset`` seconds after it first answers, the agent is
created and connected, and Connect -> Deployed is timed (the agent's status polled every
10 ms). Then, on one server whose templates have finished importing: warm Connects, and the
memory of each template (RSS and PSS, from ``/proc``). The machine's load average (1 min) is
recorded beside every figure: on a busy machine the imports, and so the first Connects, are
slower by about that factor. Each row also says which runtime served the agent (``numpy``:
its policy sidecar; ``full``: its framework's own runtime).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .run import machine, say
from .servers import WorkbenchServer

RESULTS = Path(__file__).resolve().parent / "results"
QUIET = ["--AgentsWorkbenchApp.health_check_interval=0",
         "--AgentsWorkbenchApp.load_timeout=600"]
POLICIES = {"dqn": "cartpole-dqn", "ppo": "cartpole-ppo", "maddpg": "spread-maddpg",
            "sb3-ppo": "sb3-ppo", "chat": "tiny-chat-sft"}
CLASSIC = ("dqn", "ppo", "maddpg", "sb3-ppo")
OFFSETS = (0.0, 1.0, 3.0, 5.0)
GOALS = {"classic": 1.0, "chat": 3.0, "warm": 0.1}


def versions() -> dict[str, str]:
    """Versions of what the templates import."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for dist in ("torch", "agilerl", "transformers", "peft", "jupyter_server"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    return out


def build(work: Path) -> dict[str, Path]:
    """The two workspaces under ``work`` (reused when there already)."""
    from server_extension.demos.classic import build_demo
    from server_extension.demos.classic_multi_recurrent import SPREAD, build_classic_demo
    from server_extension.demos.llm import build_llm_demo

    classic, full = work / "classic", work / "full"
    if not (classic / "experiments" / POLICIES["sb3-ppo"]).exists():
        shutil.rmtree(classic, ignore_errors=True)
        say("training the quick Classic demo (DQN, PPO, ... and MADDPG)")
        build_demo(classic, quick=True)
        build_classic_demo(classic, quick=True, only=[SPREAD])
        say("training and importing a Stable-Baselines3 PPO")
        _import_sb3_ppo(classic, work / "sb3")
    if not (full / "experiments" / POLICIES["chat"]).exists():
        shutil.rmtree(full, ignore_errors=True)
        shutil.copytree(classic / "experiments", full / "experiments")
        say("training the quick tiny chat model")
        build_llm_demo(full, quick=True)
    for root in (classic, full):
        _sidecars_of_imports(root)
    return {"full": full, "classic": classic}


def _sidecars_of_imports(root: Path) -> None:
    """The policy sidecars an imported checkpoint gets once its first Connect has loaded it
    (its worker writes them in the background); written here, so every fresh server below
    sees the workspace as it is after that first Connect. Trained AgileRL runs have theirs
    from the trainer already."""
    from server_extension.serving.runtimes.numpy_export import try_export
    from server_extension.serving.runtimes.numpy_policy import sidecar_path
    from workbench_core.store import ExperimentStore

    experiment = ExperimentStore(root).get(POLICIES["sb3-ppo"])
    for checkpoint in experiment.checkpoints():
        if not sidecar_path(checkpoint.path).exists():
            try_export(experiment, checkpoint)


def _import_sb3_ppo(root: Path, scratch: Path) -> None:
    """A Stable-Baselines3 PPO on CartPole, saved by CheckpointCallback and imported."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    from server_extension.serving.importing.orchestrator import import_experiment
    from server_extension.serving.runtimes.detection import ImportHints

    folder = scratch / "ppo-checkpoints"
    shutil.rmtree(folder, ignore_errors=True)
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=512, batch_size=128, n_epochs=2, seed=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    model.learn(1024, callback=CheckpointCallback(save_freq=512, save_path=str(folder)))
    import_experiment(root, [folder], ImportHints(name=POLICIES["sb3-ppo"], env="CartPole-v1"))


def _fresh(source: Path, logs: Path, label: str, sidecars: bool = True) -> WorkbenchServer:
    """A server over a fresh copy of ``source`` (without policy sidecars unless ``sidecars``:
    then every Classic policy is served through torch)."""
    root = logs / f"root-{label}"
    shutil.rmtree(root, ignore_errors=True)
    ignore = None if sidecars else shutil.ignore_patterns("*.policy.npz")
    shutil.copytree(source / "experiments", root / "experiments", ignore=ignore)
    return WorkbenchServer(root, logs, label=label, extra=QUIET)


def _first_answer(server: WorkbenchServer, timeout: float = 300.0) -> float:
    """Launch ``server``; the monotonic time its REST API first answered."""
    server.launch()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if server.session.get(server.url + "api/status", timeout=2).ok:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"server did not answer; log {server.log_path}")


def _connect(server: WorkbenchServer, name: str, timeout: float = 600.0,
             ) -> tuple[float, list[str]]:
    """Connect -> Deployed in seconds, and the notes the agent showed while Pending."""
    started = time.perf_counter()
    server.api("POST", f"agents/{name}/connect").raise_for_status()
    notes: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent = server.api("GET", f"agents/{name}").json()
        if agent["status"] == "Deployed":
            seconds = time.perf_counter() - started
            if agent.get("runtime"):
                notes.append(f"runtime: {agent['runtime']}")
            return seconds, notes
        if agent["status"] == "Failed":
            raise RuntimeError(f"{name} failed: {agent.get('error')}")
        if agent.get("error") and agent["error"] not in notes:
            notes.append(agent["error"])
        time.sleep(0.01)
    raise TimeoutError(f"{name} not Deployed within {timeout} s")


def first_connect(source: Path, logs: Path, policy: str, offset: float,
                  sidecars: bool = True) -> dict[str, Any]:
    """One fresh server: create and Connect ``policy`` ``offset`` s after it first answers."""
    server = _fresh(source, logs, f"{policy}-{offset:g}", sidecars)
    launched = time.monotonic()
    try:
        answered = _first_answer(server)
        time.sleep(max(0.0, answered + offset - time.monotonic()))
        load = os.getloadavg()[0]
        server.create(policy, POLICIES[policy])
        seconds, notes = _connect(server, policy)
    finally:
        server.stop()
    return {"policy": policy, "offset_s": offset, "connect_s": round(seconds, 3),
            "server_answered_s": round(answered - launched, 2), "load_1m": round(load, 2),
            "runtime": next((n.split(": ", 1)[1] for n in notes
                             if n.startswith("runtime: ")), "?"),
            "notes": [n for n in notes if not n.startswith("runtime: ")][-1:]}


def _template_memory(pid: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                rollup = Path(f"/proc/{child}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            family = next((e.split(b"=", 1)[1].decode() for e in env
                           if e.startswith(b"AGENTS_WORKBENCH_PRELOAD=")), None)
            if family is None:
                continue
            kb = {line.split(":")[0]: int(line.split()[1]) for line in rollup
                  if line.split(":")[0] in ("Rss", "Pss")}
            out[family] = {"pid": child, "rss_mb": round(kb.get("Rss", 0) / 1024, 1),
                           "pss_mb": round(kb.get("Pss", 0) / 1024, 1)}
    return out


def warm_and_memory(source: Path, logs: Path, warm: int, sidecars: bool = True
                    ) -> dict[str, Any]:
    """A server whose templates have imported: warm Connects, template memory."""
    server = _fresh(source, logs, "warm", sidecars)
    try:
        _first_answer(server)
        # The chat model's Connect waits for the last template: after it, all have imported.
        server.create("chat-first", POLICIES["chat"])
        _connect(server, "chat-first")
        server.disconnect("chat-first")
        server.create("dqn-first", POLICIES["dqn"])
        _connect(server, "dqn-first")
        times = {}
        for policy in (*CLASSIC, "chat"):
            runs = []
            for i in range(warm):
                name = f"{policy}-warm-{i}"
                server.create(name, POLICIES[policy])
                runs.append(_connect(server, name)[0])
                server.disconnect(name)
            times[policy] = {"median_s": round(statistics.median(runs), 3),
                             "max_s": round(max(runs), 3),
                             "load_1m": round(os.getloadavg()[0], 2)}
        memory = _template_memory(server.pid)
    finally:
        server.stop()
    return {"warm": times, "templates": memory}


def render(results: dict[str, Any]) -> str:
    """The Markdown results file."""
    lines = [f"# First Connect on a fresh server ({results['date']})", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}", f"Versions: {results['versions']}", "",
             "Workspaces are quick-trained demo runs (scores meaningless; load cost is what "
             "counts). Each row is a fresh server; Connect -> Deployed in seconds, with the "
             "1-minute load average when the agent was created.", "",
             "| workspace | policy | offset s | Connect -> Deployed s | runtime | "
             "server answered s | load 1m | note while Pending |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["first"]:
        note = "; ".join(row["notes"])
        lines.append(f"| {row['workspace']} | {row['policy']} | {row['offset_s']:g} | "
                     f"{row['connect_s']} | {row.get('runtime', '?')} | "
                     f"{row['server_answered_s']} | {row['load_1m']} | {note} |")
    lines += ["", "Worst case per policy and workspace (goal: Classic <= 1 s, chat <= 3 s):",
              ""]
    worst: dict[tuple[str, str], float] = {}
    for row in results["first"]:
        key = (row["workspace"], row["policy"])
        worst[key] = max(worst.get(key, 0.0), row["connect_s"])
    for (workspace, policy), seconds in sorted(worst.items()):
        goal = GOALS["chat" if policy == "chat" else "classic"]
        lines.append(f"- {workspace} / {policy}: {seconds} s "
                     f"({'met' if seconds <= goal else 'missed'}, goal {goal:g} s)")
    lines += ["", "Warm Connect (templates imported; goal <= 0.1 s):", ""]
    for policy, row in results["warm"]["warm"].items():
        lines.append(f"- {policy}: median {row['median_s']} s, max {row['max_s']} s "
                     f"(load {row['load_1m']})")
    lines += ["", "Template memory (full workspace, after the chat model's Connect):", ""]
    for family, row in results["warm"]["templates"].items():
        lines.append(f"- {family}: RSS {row['rss_mb']} MiB, PSS {row['pss_mb']} MiB")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark; the path of the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="DQN and the chat model only, offsets 0 and 5 s, 2 warm Connects")
    parser.add_argument("--work", type=Path,
                        default=Path.home() / ".cache" / "agents-workbench-first-connect",
                        help="where the workspaces are built (reused by the next run)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-sidecars", action="store_true",
                        help="serve every Classic policy through torch (no policy sidecars)")
    parser.add_argument("--only", choices=sorted(POLICIES), action="append", default=None,
                        help="measure these policies only (repeatable)")
    args = parser.parse_args(argv)
    sidecars = not args.no_sidecars
    started = {"machine": machine(), "versions": versions()}
    workspaces = build(args.work)
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    offsets = (0.0, 5.0) if args.quick else OFFSETS
    first = []
    for workspace, source in workspaces.items():
        policies = ["dqn"] if args.quick else list(CLASSIC)
        if workspace == "full":
            policies.append("chat")
        if args.only:
            policies = [p for p in policies if p in args.only]
        for policy in policies:
            for offset in offsets:
                row = first_connect(source, logs, policy, offset, sidecars)
                row["workspace"] = workspace
                say(f"{workspace} {policy} +{offset:g} s: {row['connect_s']} s "
                    f"(load {row['load_1m']})")
                first.append(row)
    warm = warm_and_memory(workspaces["full"], logs, 2 if args.quick else 5, sidecars)
    results = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "command": "python -m benchmarks.first_connect " + " ".join(argv or []),
               **started, "first": first, "warm": warm}
    out = args.out or RESULTS / (dt.date.today().isoformat() + "-first-connect"
                                 + ("-quick" if args.quick else "")
                                 + ("-no-sidecars" if args.no_sidecars else "") + ".md")
    out.write_text(render(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    say(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
