"""What the panel says about imports: the Import dialog's Detect preview, the "evaluating k/n"
line, and the wizard's note on where each score came from.

The shapes fed in are the server's own (``POST agents/api/experiments`` with ``preview``, and
the listing's ``evaluation``); the end-to-end path through a real server and a browser is in
``test_browser_import.py`` and ``test_import.py``.
"""

from __future__ import annotations

from typing import Any

from agents_widget.client import CheckpointInfo, ExperimentInfo
from agents_widget.import_dialog import preview_html
from agents_widget.training_view import training_html
from agents_widget.wizard import score_notes

FOUND: dict[str, Any] = {
    "name": "my_agent", "framework": "agilerl",
    "checkpoints": [{"step": 0, "path": "/w/my_agent.pt"}], "steps_from": "file names",
    "description": {"algorithm": "DQN", "project_type": "classic", "recurrent": False,
                    "agent_ids": [], "observation_space": "Box(-inf, inf, (4,), float32)",
                    "action_space": "Discrete(2)", "warnings": [],
                    "needs": ["env: the environment it was trained on, e.g. CartPole-v1"]},
    "needs": ["env: the environment it was trained on, e.g. CartPole-v1"],
    "size_mb": 0.1, "copy_limit_mb": 512.0,
}


def test_preview_names_what_was_found_and_what_is_still_needed() -> None:
    bare = preview_html(FOUND, {"env": None, "scores": None, "link": None})
    assert "DQN" in bare
    assert "Discrete(2)" in bare
    assert "1 at steps [0]" in bare
    assert "copied into the workspace" in bare
    assert "Still needed" in bare
    assert "CartPole-v1" in bare
    assert "Best is the final checkpoint" in bare
    ready = preview_html(FOUND, {"env": "CartPole-v1", "scores": None, "link": True})
    assert "Still needed" not in ready
    assert "Ready to import" in ready
    assert "linked where they are" in ready
    assert "evaluates each checkpoint over 10 seeded episodes" in ready
    scored = preview_html(FOUND, {"env": "CartPole-v1", "scores": "/w/tb", "link": None})
    assert "from /w/tb" in scored


def _imported(evaluation: dict[str, Any] | None, scores: list[float | None]
              ) -> ExperimentInfo:
    return ExperimentInfo(
        name="ppo", tab="classic", algorithm="PPO", framework="agilerl",
        checkpoints=tuple(CheckpointInfo(step=s, evaluation_score=v)
                          for s, v in zip((128, 256, 384), scores, strict=True)),
        extra={"import": {"scores": "workbench evaluation over 10 seeded episodes"},
               "evaluation_score": "workbench evaluation: mean return of 10 greedy episodes"},
        evaluation=evaluation)


def test_evaluating_line_and_score_note_follow_the_evaluation() -> None:
    running = {"state": "evaluating", "done": 1, "total": 3, "episodes": 10, "seed": 1000,
               "failed": {}}
    line = training_html([_imported(running, [20.0, None, None])])
    assert "ppo</b> (evaluating 1/3)" in line
    assert "<progress max='3' value='1'>" in line
    notes = " ".join(score_notes(_imported(running, [20.0, None, None])))
    assert "workbench evaluation over 10 seeded episodes" in notes
    assert "1 of 3 checkpoints scored so far" in notes
    waiting = " ".join(score_notes(_imported({**running, "done": 0}, [None, None, None])))
    assert "<i>Best</i> is the final checkpoint until one is" in waiting
    done = {**running, "state": "done", "done": 3, "failed": {"256": "RuntimeError: bad"}}
    assert training_html([_imported(done, [20.0, None, 30.0])]) == ""
    notes = " ".join(score_notes(_imported(done, [20.0, None, 30.0])))
    assert "failed (no score): step 256 (RuntimeError: bad)" in notes
    none = " ".join(score_notes(_imported(None, [None, None, None])))
    assert "TensorBoard log folder" in none
