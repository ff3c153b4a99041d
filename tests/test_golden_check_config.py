"""Golden cases for ``dh-agent check-config``: one folder per case under
``tests/golden/check-config/``, each with ``agent.toml`` and ``expected.txt`` (the exact
output, run from inside the folder). Exit 0 when the output is ``agent.toml: ok``, else 2.
``DH_GOLDEN_UPDATE=1`` rewrites ``expected.txt`` from the current output (review the diff).
A new case is a new folder: nothing to register."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli import main

CASES_DIR = Path(__file__).resolve().parent / "golden" / "check-config"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if (p / "agent.toml").is_file())


def test_there_are_cases_of_both_outcomes() -> None:
    expected = [(CASES_DIR / c / "expected.txt").read_text() for c in CASES]
    assert len(CASES) >= 10
    assert any(e == "agent.toml: ok\n" for e in expected)
    assert sum(e != "agent.toml: ok\n" for e in expected) >= 8


@pytest.mark.parametrize("case", CASES)
def test_check_config_case(
    case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = CASES_DIR / case
    monkeypatch.chdir(folder)
    code = main(["check-config", "--config", "agent.toml"])
    out = capsys.readouterr().out
    if os.environ.get("DH_GOLDEN_UPDATE") == "1":
        (folder / "expected.txt").write_text(out)
    expected = (folder / "expected.txt").read_text()
    assert out == expected
    assert code == (0 if expected == "agent.toml: ok\n" else 2)
