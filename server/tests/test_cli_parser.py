"""The command line's parser imports only the modules of the command named
(cli.COMMAND_MODULES): each command must parse exactly as in the parser
with every command, and a word of no command must list them all."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from estafeta import cli


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _tree(parser: argparse.ArgumentParser) -> dict[str, object]:
    """Every command path of ``parser`` with its help text and handler."""
    tree: dict[str, object] = {"help": parser.format_help(), "func": parser.get_default("func")}
    for name, sub in _subcommands(parser).items():
        tree[name] = _tree(sub)
    return tree


FULL = cli.build_parser(["--help"])


def test_every_command_has_its_modules_listed() -> None:
    assert set(_subcommands(FULL)) == set(cli.COMMAND_MODULES)


@pytest.mark.parametrize("word", sorted(cli.COMMAND_MODULES))
def test_the_parser_of_one_command_is_that_of_all(word: str) -> None:
    for argv in ([word], ["-c", "/x.toml", word], ["--config=/x.toml", word, "--json"]):
        parser = cli.build_parser(argv)
        assert _tree(_subcommands(parser)[word]) == _tree(_subcommands(FULL)[word]), argv


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["-c", "/x.toml"], ["-c/x.toml", "-h"], ["no-such-command"]]
)
def test_without_a_command_word_every_command_is_there(argv: list[str]) -> None:
    assert set(_subcommands(cli.build_parser(argv))) == set(cli.COMMAND_MODULES)


def test_an_unknown_command_is_refused_with_the_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "estafeta", "-c", "/nonexistent.toml", "frobnicate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr
    assert "'migrate'" in result.stderr and "'sieve'" in result.stderr


def test_a_command_imports_only_its_own_modules() -> None:
    code = (
        "import sys; from estafeta import cli; cli.build_parser(['user', 'list']);"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('estafeta.cli_'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["estafeta.cli_privacy", "estafeta.cli_retention"]
