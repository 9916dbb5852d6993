"""The benchmark harness runs end to end and writes its report (numbers are not checked).

``python -m benchmarks.run --quick`` with one-second load runs, a handful of agents, and
without Ray Serve and the LLM (each costs tens of seconds to start and has a harness of its
own), against a copy of the session's quick demo workspace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.loadgen import have_wrk

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not have_wrk(), reason="wrk is not installed (apt-get install wrk)"),
]

SECTIONS = [
    "## Machine and versions",
    "## 1. Floor, in-process",
    "## 2. get_action over loopback HTTP",
    "## 3. Connect to Deployed",
    "## 4. 3 agents deployed at once",
    "## 5. Dynamic batching",
    "## 6. Panel with",
    "## 7. LLM",
    "## Targets",
]


def test_quick_run_writes_every_table(tmp_path: Path, demo_experiments: Path) -> None:
    # About 75 s in CI: every table of the report, so every server kind and batching mode
    # starts once, with 1-s load runs; fewer tables would not smoke-test them.
    workspace = tmp_path / "workspace"
    shutil.copytree(demo_experiments, workspace / "experiments")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--workspace", str(workspace),
         "--out", str(out), "--seconds", "1", "--repeats", "1", "--many", "3",
         "--panel-agents", "10", "--no-ray", "--no-llm"],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("*.md"))
    assert len(files) == 1, files
    assert proc.stdout.strip().endswith(files[0].name)
    report = files[0].read_text()
    for heading in SECTIONS:
        assert heading in report, heading
    # Every server and mode got a row, and no load run saw errors.
    for row in ("| b_minimal | 16 |", "| c_workbench | 64 |", "| bench-cnn | on | 64 |",
                "| bench-mlp256 | off | 64 |", "| bench-cnn | auto | 1 |"):
        assert row in report, row
    assert "| (c) >= 0.9x (b) req/s at 16 conns |" in report
    assert "runtime per call <= 2x bare forward" in report
    raw = json.loads(report.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert list(errors(raw)), "no load runs recorded"
    assert set(errors(raw)) == {0}


def errors(tree: Any) -> Iterator[int]:
    """Every ``errors`` count in the raw results."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "errors" and isinstance(value, int):
                yield value
            else:
                yield from errors(value)
