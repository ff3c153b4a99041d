"""Issue 13 item 9: `dh-agent status` and `export` open the database read-only; a missing
database is an error, never a new empty one."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.jws import envelope
from agent.store import Store
from simulator.layout import devices_toml
from tests.test_store import SIGNER, SITE


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        '[site]\nid = "s"\n[mqtt]\nurl = "mqtt://h"\n[keys]\nagent_key = "a.key"\n'
        '[storage]\npath = "data/agent.db"\n' + devices_toml("127.0.0.1", 5020)
    )
    return cfg


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("cmd", [["status"], ["export", "--from", "2025-01-01T00:00:00Z",
                                               "--to", "2025-01-02T00:00:00Z"]])  # fmt: skip
def test_a_missing_database_is_an_error_and_is_not_created(
    tmp_path: Path, cmd: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--config", str(cfg)])
    assert e.value.code == 1
    err = capsys.readouterr()
    assert "no database" in err.err and "backlog" not in err.out
    assert not (tmp_path / "data").exists()


def test_status_and_export_never_write_or_migrate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While the agent runs (its connection open, the newest commits still in the WAL) the
    tools change nothing: no checkpoint, no optimize, not one byte of the database file. An
    older database (schema 1) is read as it is, not migrated."""
    cfg = write_config(tmp_path)
    db = tmp_path / "data" / "agent.db"
    live = Store(db)  # the running agent
    live.append_message("event", "p/s/event", 1, False, lambda s, p: SIGNER.sign(
        envelope(SITE, "event", s, p, time.time(), {"kind": "x"})
    ))  # fmt: skip
    before = digest(db)
    assert main(["status", "--config", str(cfg)]) == 0
    assert "backlog: event 1" in capsys.readouterr().out
    assert main(["export", "--config", str(cfg), "--from", "2025-01-01T00:00:00Z",
                 "--to", "2025-01-02T00:00:00Z"]) == 0  # fmt: skip
    assert digest(db) == before, "a read-only tool wrote to the database"
    live.close()
    c = sqlite3.connect(db)
    c.execute("DROP TABLE IF EXISTS refusals")
    c.execute("PRAGMA user_version = 1")
    c.close()
    before = digest(db)
    assert main(["status", "--config", str(cfg)]) == 0
    assert "backlog: event 1" in capsys.readouterr().out
    assert digest(db) == before
    c = sqlite3.connect(db)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    c.close()


def test_status_lists_refused_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    st = Store(tmp_path / "data" / "agent.db")
    for _ in range(2):
        st.append_message("event", "p/s/event", 1, False, lambda s, p: SIGNER.sign(
            envelope(SITE, "event", s, p, time.time(), {"kind": "x"})
        ))  # fmt: skip
    mid = st.unsent(10)[0].id
    st.mark_refused([(mid, 0x87, "not authorized")])
    st.close()
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "backlog: event 1" in out
    assert "refused by the broker: event 1" in out
    assert any("event seq 1: not authorized (0x87)" in line for line in out)
