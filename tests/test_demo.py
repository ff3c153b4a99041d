"""`dh-agent demo` headless: simulator, broker, agent and head-end in one command; the
interval records must come back from the broker with their signatures verified."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole system for 30 s

BIN = Path(sys.executable).parent


def test_demo_plain_shows_verified_interval_records(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(BIN / "dh-agent"), "demo", "--plain", "--seconds", "30", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    hm = re.findall(r"verified interval #\d+ hm1 \S+ energy ([\d.]+) kWh", out.stdout)
    assert len(hm) >= 2, out.stdout
    assert all(float(e) > 0 for e in hm)
    assert "verified status online" in out.stdout and "verified status offline" in out.stdout
    m = re.search(
        r"demo: (\d+) messages verified \((\d+) interval records\), (\d+) rejected", out.stdout
    )
    assert m is not None and int(m.group(3)) == 0 and int(m.group(2)) >= 6
