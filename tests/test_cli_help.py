"""``agents-workbench <command> --help`` explains every option a newcomer can pass."""

from __future__ import annotations

import argparse

import pytest

from server_extension.hosts.cli import build_parser, main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(action for action in parser._actions
               if isinstance(action, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["demo", "run", "app", "import"])
def test_every_option_has_a_sentence(command: str) -> None:
    parser = _subcommands()[command]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.option_strings
        assert action.help != argparse.SUPPRESS, action.option_strings
        # A sentence, not a label: several words that say what the option changes.
        assert len(action.help.split()) >= 5, (action.option_strings, action.help)


@pytest.mark.parametrize(("option", "words"), [
    ("--port PORT", "port JupyterLab listens on"),
    ("--ip IP", "0.0.0.0 lets other machines reach"),
    ("--no-browser", "do not open a browser"),
    ("--root ROOT", "workspace folder"),
    ("--demo {minimal,full,none}", "train nothing, start at once"),
    ("--workers WORKERS", "demo jobs trained at once"),
])
def test_run_help_names_each_option_with_its_explanation(
        capsys: pytest.CaptureFixture[str], option: str, words: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert option in text
    # The explanation follows its option (argparse prints them side by side).
    assert words in text[text.index(option):], text
