"""`dh-agent`'s parser built for one subcommand (``agent.cli.build_parser(argv)``) parses
exactly as the whole parser does, and holds only that subcommand (pure: no I/O)."""

from __future__ import annotations

import argparse

import pytest

from agent.cli import _SUBCOMMANDS, build_parser

ARGVS = [
    ["run", "--config", "a.toml"],
    ["--log-level", "debug", "run", "--config", "a.toml"],
    ["--log-level=warning", "check-config", "--config", "a.toml"],
    ["export", "--config", "c", "--from", "2026-01-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z"],
    ["keygen", "--out", "k", "--name", "agent"],
    ["demo", "--plain", "--seconds", "5"],
    ["status", "--config", "c"],
]


def subcommands(p: argparse.ArgumentParser) -> list[str]:
    acts = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return list(acts[0].choices)


@pytest.mark.parametrize("argv", ARGVS)
def test_one_subcommand_parses_as_the_whole_parser(argv: list[str]) -> None:
    assert build_parser(argv).parse_args(argv) == build_parser().parse_args(argv)
    assert subcommands(build_parser(argv)) == [args_cmd(argv)]


def args_cmd(argv: list[str]) -> str:
    return str(build_parser().parse_args(argv).cmd)


@pytest.mark.parametrize("argv", [[], ["--help"], ["bogus"], ["--log-level", "run"], ["-h", "run"]])
def test_no_subcommand_of_ours_gets_the_whole_parser(argv: list[str]) -> None:
    assert subcommands(build_parser(argv)) == list(_SUBCOMMANDS)


def test_an_unknown_subcommand_is_refused_with_every_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser(["bogus"]).parse_args(["bogus"])
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in _SUBCOMMANDS)
