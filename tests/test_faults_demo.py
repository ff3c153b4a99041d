"""Issue 13 item 10: Ctrl-C on `dh-agent demo` stops it cleanly, printing nothing
alarming (no 'Future exception was never retrieved', no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ALARMING = ("Traceback", "exception was never retrieved", "MqttCodeError", "Task was destroyed")


def test_ctrl_c_on_the_demo_prints_nothing_alarming(tmp_path: Path) -> None:
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        p = subprocess.Popen(
            [str(BIN / "dh-agent"), "demo", "--plain", "--dir", str(tmp_path / "work")],
            stdout=out,
            stderr=err,
            start_new_session=True,  # Ctrl-C reaches the whole process group, as in a shell
        )
        try:
            end = time.monotonic() + 90
            while "verified status online" not in out_path.read_text(errors="replace"):
                assert p.poll() is None and time.monotonic() < end, err_path.read_text()
                time.sleep(0.2)
            time.sleep(2)
            os.killpg(p.pid, signal.SIGINT)
            code = p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    text = out_path.read_text(errors="replace") + err_path.read_text(errors="replace")
    assert code == 0, text[-3000:]
    for word in ALARMING:
        assert word not in text, text[-3000:]
    assert "demo:" in text and "rejected" in text
