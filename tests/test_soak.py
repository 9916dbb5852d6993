"""The soak benchmark in short: ``python -m benchmarks.soak`` for ~30 s must find no violation.

The full run (180 s by default) is a benchmark, run by hand; this keeps its invariants in CI:
no lost or wrong answers, errors only inside the chaos windows that explain them, every chaos
operation exercised, server memory flat. The verdict helpers get a quick check of their own so
a soak that cannot fail would be noticed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.soak import ALLOWED, OPS, Target, rss_verdict
from tests.servers import REPO

SOAK_SECONDS = 30


def test_short_soak_finds_no_violation(tmp_path: Path, demo_experiments: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--duration", str(SOAK_SECONDS),
         "--clients", "32", "--experiments", str(demo_experiments), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=SOAK_SECONDS + 240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no violations" in proc.stdout
    summary = json.loads(out.read_text())

    assert summary["violations"] == []
    assert summary["clients"] == 32
    assert summary["requests"] > 200, summary
    classes: dict[str, int] = summary["classes"]
    assert classes["ok"] == summary["checked"] > 0
    # Every answer is either checked correct or an error a chaos window explains.
    assert sum(classes.values()) == summary["requests"]
    for cls in classes:
        assert cls == "ok" or cls.startswith("expected "), (cls, summary["examples"])
        if cls != "ok":
            status, kinds = int(cls.split()[1]), cls.split(" in ")[1].split("+")
            assert any(status in ALLOWED[k] for k in kinds), cls
    agents = summary["agents"]
    assert sum(a["chaos"] for a in agents.values()) >= 2
    assert sum(not a["chaos"] for a in agents.values()) >= 2
    assert all(a["requests"] > 0 for a in agents.values()), agents
    assert set(summary["chaos_ops"]) == set(OPS)
    assert all(n >= 1 for n in summary["chaos_ops"].values())
    rss = summary["rss"]
    assert rss["flat"]
    assert rss["samples"] >= SOAK_SECONDS * 0.8
    assert rss["end_mib"] - rss["mid_mib"] <= rss["growth_bound_mib"]


def test_rss_verdict_flags_growth_and_passes_a_flat_line() -> None:
    flat = [(float(t), 400.0 + (t % 3)) for t in range(120)]
    assert rss_verdict(flat, 120)["flat"]
    leaking = [(float(t), 400.0 + 2.0 * t) for t in range(120)]  # 2 MiB/s
    verdict = rss_verdict(leaking, 120)
    assert not verdict["flat"]
    assert verdict["slope_mib_per_min"] > 100


def test_windows_explain_only_the_requests_they_overlap() -> None:
    target = Target(name="t", experiment="e", step=0, endpoint="", key="k", reference=None,
                    chaos=True)
    _, before = target.snapshot()
    with target.window("rotate"):
        _, inside = target.snapshot()
    _, after = target.snapshot()
    assert target.kinds_between(before, before) == set()
    assert target.kinds_between(before, inside) == {"rotate"}
    assert target.kinds_between(inside, after) == {"rotate"}
    assert target.kinds_between(after, after) == set()
