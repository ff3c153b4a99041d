"""The page in a real browser (slow lane): dh-sim, Mosquitto, `dh-agent run` and
`dh-agent serve`, the pages loaded in headless Chromium (Debian's `chromium`, installed by
tests/bootstrap.sh), the rendered DOM checked against the agent's own data (its live
snapshot and its store), screenshots saved under tests/artifacts/."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.web.data import StoreReader
from tests.support.mosquitto import Mosquitto, mosquitto_binary
from tests.support.rig import simulator, start_agent, stop, wait_until, write_config
from tests.support.web import serve

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--no-first-run"]  # fmt: skip


def chromium(tmp: Path, *args: str) -> str:
    assert CHROMIUM is not None
    r = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium'}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def screenshot(tmp: Path, url: str, name: str, size: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    out = ARTIFACTS / name
    chromium(tmp, f"--screenshot={out}", f"--window-size={size}", url)
    assert out.exists() and out.stat().st_size > 5000, out
    print(f"screenshot: {out}")
    return out


class SnapshotLog:
    """Every version of live.json while it runs, by its `written` time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[str, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                doc = json.loads(self.path.read_bytes())
                self.seen[repr(float(doc["written"]))] = doc
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)

    def __enter__(self) -> SnapshotLog:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def record_counts(db: Path) -> dict[str, int]:
    """Records per device; none while the agent is still creating the database (it opens
    it early, while it starts: a reader can see it between two migrations)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
            q = "SELECT device, count(*) FROM intervals GROUP BY 1"
            return {d: n for d, n in c.execute(q)}
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return {}
        raise


def value_cells(dom: str, device: str) -> dict[str, tuple[str, str, str]]:
    """name -> (quality, shown number, unit) of one device card."""
    m = re.search(rf'<section class="device" data-device="{device}".*?</section>', dom, re.S)
    assert m, f"device {device} not on the page"
    rows = re.findall(
        r'<tr data-value="(\w+)" data-quality="(\w+)"><th>\w+</th>'
        r'<td class="num">([^<]*)</td><td>([^<]*)</td>',
        m.group(0),
    )
    return {name: (q, num, unit) for name, q, num, unit in rows}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (tests/run.sh installs it)")
@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto not installed")
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        with simulator(tmp_path, "winter-peak") as sim:
            cfg = write_config(tmp_path, sim.port, broker.url,
                               contract="flow_limit_m3h = 2.5\nenforce = true\n")  # fmt: skip
            agent = start_agent(cfg, tmp_path / "agent.log")
            try:
                db = tmp_path / "agent.db"
                assert wait_until(lambda: db.exists() and min(
                    record_counts(db).values(), default=0) >= 4, 120), "no records"  # fmt: skip
                with serve(cfg) as srv:
                    check_pages(tmp_path, db, f"http://127.0.0.1:{srv.port}")
            finally:
                assert stop(agent) == 0
    finally:
        broker.stop()


def check_pages(tmp: Path, db: Path, base: str) -> None:
    # --- the overview: every device with the values of the snapshot it was drawn from
    with SnapshotLog(tmp / "live.json") as snaps:
        time.sleep(0.5)
        dom = chromium(tmp, "--dump-dom", base + "/")
        time.sleep(0.2)
    written = re.search(r'id="agent-state" data-written="([^"]+)"', dom)
    assert written, dom[:2000]
    snap = snaps.seen.get(written.group(1))
    assert snap is not None, f"page drawn from snapshot {written.group(1)}, not seen"
    assert 'class="state live"' in dom
    for name, dev in snap["devices"].items():
        cells = value_cells(dom, name)
        assert dev["values"], f"{name}: no live values in the snapshot"
        for k, v in dev["values"].items():
            q, shown, unit = cells[k]
            assert q == v["quality"] and unit == v["unit"], (name, k)
            assert float(shown) == pytest.approx(v["value"], rel=1e-4, abs=1e-9), (name, k)
        assert f'data-device="{name}" data-health="{dev["health"]}"' in dom
    lim = snap["limiter"]
    state = "limiting" if lim["limiting"] else "watching"
    assert f'id="limiter" data-state="{state}"' in dom
    assert f'id="uplink" data-connected="{str(snap["uplink"]["connected"]).lower()}"' in dom
    assert snap["uplink"]["connected"] is True
    # --- the plots: one point per stored record (records are not closed while we count)
    for _ in range(5):
        before = record_counts(db)
        plots = chromium(tmp, "--dump-dom", base + "/plots")
        if record_counts(db) == before:
            break
    else:
        pytest.fail("records kept arriving during every load of /plots")
    reader = StoreReader(db)
    now = time.time()
    recs = {d: reader.intervals(d, now - 49 * 3600, now + 60) for d in before}
    reader.close()
    assert {d: len(r) for d, r in recs.items()} == before
    series: dict[str, list[int]] = {}
    for field_, n in re.findall(r'data-series="(\w+)" data-points="(\d+)"', plots):
        series.setdefault(field_, []).append(int(n))
    hm, dp = recs["hm1"], recs["dp1"]
    assert series["flow_avg_m3h"] == [sum(r.get("flow_avg_m3h") is not None for r in hm)]
    assert series["supply_avg_c"] == [sum(r.get("supply_avg_c") is not None for r in hm)]
    assert series["dp_min_kpa"] == [sum(r.get("dp_min_kpa") is not None for r in dp)]
    assert series["flow_avg_m3h"][0] >= 4
    assert 'data-ref="contract" data-value="2.5"' in plots
    # --- the other pages render, and the screenshots
    for path in ("/events", "/advice", "/devices"):
        assert "<h2>" in chromium(tmp, "--dump-dom", base + path), path
    screenshot(tmp, base + "/", "web-overview.png", "1280,1600")
    screenshot(tmp, base + "/", "web-overview-phone.png", "390,1800")
    screenshot(tmp, base + "/plots", "web-plots.png", "1280,2400")
