"""One command-line vocabulary: every parser holds its shared flags to the table, prints each default once,
offers the closed sets as choices, and still takes the old spellings (with a warning)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from semaim.cli import build_parser, main
from semaim.cli.vocabulary import DEPRECATED, VOCABULARY

DOCS = Path(__file__).resolve().parents[1] / "docs" / "command-line.md"
CLOSED = {"--precision", "--order", "--target", "--format", "--pool", "--select", "--optimizer", "--model"}


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its full name, e.g. ``study payoff``."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                found[full] = sub
                found |= commands(sub, full)
    return found


PARSERS = commands(build_parser())


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_shared_flag_means_what_the_table_says(command):
    for action in PARSERS[command]._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or "-h" in action.option_strings:
            continue
        flag = action.option_strings[-1]
        assert action.help, f"{command} {flag}: no help"
        assert "(default:" not in action.help and action.help.count("[default:") <= 1, f"{command} {flag}"
        if flag in VOCABULARY:
            assert action.help.startswith(VOCABULARY[flag]), f"{command} {flag}: {action.help!r}"
        if flag in CLOSED:
            assert action.choices, f"{command} {flag}: a closed set without choices"


def test_every_training_command_takes_the_training_flags():
    for command, flags in {
        "pretrain": ("--config", "--epochs", "--batch-size", "--lr", "--blr", "--seed", "--resume"),
        "linprobe": ("--config", "--epochs", "--batch-size", "--blr", "--seed", "--init-seed"),
        "finetune": ("--config", "--epochs", "--batch-size", "--blr", "--seed", "--init-seed", "--resume"),
        "segment": ("--config", "--epochs", "--batch-size", "--lr", "--seed", "--init-seed", "--resume"),
    }.items():
        given = {
            s for a in PARSERS[command]._actions for s in a.option_strings if a.help != argparse.SUPPRESS
        }
        assert set(flags) <= given, f"{command} lacks {set(flags) - given}"


def test_the_documented_table_is_the_vocabulary():
    text = DOCS.read_text()
    for flag, meaning in VOCABULARY.items():
        assert f"| `{flag}` | {meaning} |" in text, flag
    for old, new in DEPRECATED.items():
        assert f"| `{old}` | {new} |" in text, old


def test_old_spellings_still_work_with_a_warning(capsys):
    args = build_parser().parse_args(["pretrain", "--preset", "paper-vit-b16"])
    assert args.config == "paper-vit-b16"
    assert "--preset is deprecated and goes in semaim 0.3: use --config" in capsys.readouterr().err
    args = build_parser().parse_args(
        ["linprobe", "--random", "--recipe", "paper", "--probe-batch-size", "64"]
    )
    assert (args.config, args.batch_size) == ("paper", 64)
    args = build_parser().parse_args(["knn", "--random", "--preset", "cpu-tiny", "--batch-size", "32"])
    assert (args.model_config, args.extract_batch_size) == ("cpu-tiny", 32)
    assert build_parser().parse_args(["bench", "--config", "vit-t4-32"]).model == ["vit-t4-32"]
    assert capsys.readouterr().err.count("is deprecated") == 5


def test_version_and_defaults(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("semaim 0.")
    assert build_parser().parse_args(["bench"]).device == "auto"  # as every other command
    resume = build_parser().parse_args(["pretrain", "--resume", "runs/a"])
    assert resume.resume == "runs/a"
    assert build_parser().parse_args(["pretrain", "--resume"]).resume is True


def test_resume_path_and_force_are_checked(tmp_path, capsys):
    assert main(["pretrain", "--resume", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 2
    assert "--resume" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert main(["pretrain", "--resume", "--force", "--out", str(tmp_path / "c")]) == 2
    assert "--force with --resume" in capsys.readouterr().err


def test_an_interrupted_command_says_how_to_go_on_in_its_own_terms(monkeypatch, capsys):
    from semaim import cli

    def interrupted(args):
        raise KeyboardInterrupt

    for command in ("study", "pretrain", "knn"):
        monkeypatch.setitem(cli.COMMANDS, command, interrupted)
    assert main(["study", "payoff"]) == 130
    assert capsys.readouterr().err.strip() == (
        "semaim study: interrupted; rerun the same command to continue (finished runs are kept)"
    )  # a study has no --resume: rerunning it resumes
    assert main(["pretrain"]) == 130
    assert "continue with the same command and --resume" in capsys.readouterr().err
    assert main(["knn", "--pixels"]) == 130
    assert capsys.readouterr().err.strip() == "semaim knn: interrupted"
