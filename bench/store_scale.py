"""Three years of hourly interval records in the store: database size and export time.

Fills a fresh store with 3 years x 8760 hourly records for 3 devices (78,840 records by
default), each signed (``agent.jws.Signer``, a fresh Ed25519 key) and stored through
``Store.commit_intervals`` exactly as the agent does (chained ``interval`` stream, one
durable transaction per device-day here, the agent's is per closed period), then marked
delivered at the end of each day, as the uplink marks them after the broker's PUBACK.

The records are real aggregator output (``agent.aggregator.close_periods``) over synthetic
readings every ``--sample-s`` seconds at the meter's register resolution (energy 0.1 kWh,
volume 1 litre) with a seasonal and daily demand profile and noise. By default all three
devices are heat meters with a flow contract (the largest records: the worst case for
size); ``--mix`` uses a heat meter, a dp sensor and an actuator instead.

Then: WAL checkpoint, close, the database file size; reopen and export every record as
CSV through ``agent.export.export_records`` to a file, timed from opening the store to
the last row written. Baseline in the same run: a bare ``sqlite3`` SELECT of the same rows
in their stored form (every record column of ``interval_fields``, in export order; the
run stops if any record is stored otherwise), iterated in Python without decoding;
export and bare SELECT alternate ``--rounds`` times and the best of each counts:
``export_ratio`` = export_s / bare_select_s. Targets: ``db_mb`` <= 25 (10^6 bytes),
``export_ratio`` <= 3.0. Last line JSON: {"db_mb", "export_s", "export_ratio",
"bare_select_s", ...}.

    python -m bench.store_scale [--years 3] [--mix]
"""

from __future__ import annotations

import argparse
import calendar
import json
import math
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import aggregator as agg
from agent.export import export_records
from agent.jws import Signer, envelope
from agent.store import Store
from agent.store_fields import BODY_COLUMNS

SITE = "sub-000123"
TOPIC = f"dh/v1/{SITE}/interval"
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86400


def readings(role: str, t: float, rnd: random.Random, st: dict[str, float]) -> dict[str, float]:
    """One reading at t; ``st`` carries the counters (exact) between calls."""
    doy = (t - T0) / DAY
    season = 0.5 + 0.5 * math.cos(2 * math.pi * doy / 365.25)  # 1 in winter, 0 in summer
    hour = (t % DAY) / 3600
    daily = 1.0 + 0.25 * math.sin(2 * math.pi * (hour - 6) / 24)
    if role == "heat_meter":
        flow = max(0.05, (0.25 + 2.2 * season) * daily * rnd.uniform(0.85, 1.15))
        supply = 72 + 30 * season + rnd.gauss(0, 1.5)
        ret = 38 + 8 * season + rnd.gauss(0, 1.0)
        power = flow * 1.163 * (supply - ret)
        dt_h = st.get("dt_h", 0.0)
        st["energy"] = st.get("energy", 48_000.0) + power * dt_h
        st["volume"] = st.get("volume", 1_800.0) + flow * dt_h
        return {
            "energy_kwh": math.floor(st["energy"] * 10) / 10,  # 0.1 kWh register
            "volume_m3": math.floor(st["volume"] * 1000) / 1000,  # 1 litre register
            "flow_m3h": round(flow, 3),
            "power_kw": round(power, 1),
            "supply_c": round(supply, 2),
            "return_c": round(ret, 2),
            "status": 0.0,
        }
    if role == "dp_sensor":
        return {"dp_kpa": round(95 - 30 * season * daily + rnd.gauss(0, 2), 2)}
    pos = min(100.0, max(0.0, 40 + 50 * season + rnd.gauss(0, 5)))
    return {"position_pct": round(pos, 1), "limit_pct": 100.0 if season < 0.8 else 85.0}


def fill(db: Path, devices: list[tuple[str, str]], days: int, sample_s: int) -> tuple[int, float]:
    signer = Signer(Ed25519PrivateKey.generate())
    store = Store(db)
    rnd = random.Random(1)
    params = {
        name: agg.RecordParams(
            device=name,
            role=role,
            period_s=3600,
            flow_limit_m3h=2.5 if role == "heat_meter" else None,
            rollover={"energy_kwh": 1e8, "volume_m3": 1e5} if role == "heat_meter" else {},
        )
        for name, role in devices
    }
    states = {name: agg.AggState.initial() for name, _ in devices}
    counters: dict[str, dict[str, float]] = {name: {"dt_h": sample_s / 3600} for name, _ in devices}
    # one reading just before the first hour, so the first period (from T0) has its record
    pending: dict[str, list[agg.Sample]] = {
        name: [agg.Sample(ts=T0 - 60.0, values=readings(role, T0 - 60.0, rnd, counters[name]))]
        for name, role in devices
    }
    n = 0
    t_start = time.perf_counter()
    for day in range(days + 1):  # one more day so the last period of the last day closes
        for name, role in devices:
            ss = pending[name]
            for k in range(DAY // sample_s):
                t = T0 + day * DAY + k * sample_s + 1.0
                ss.append(agg.Sample(ts=t, values=readings(role, t, rnd, counters[name])))
            recs, new = agg.close_periods(states[name], ss, params[name])
            recs = [r for r in recs if r["start"] < _iso(T0 + days * DAY)]

            def sign(body: dict[str, Any], seq: int, prev: str | None) -> str:
                end = datetime_ts(body["end"]) + 2.0
                return signer.sign(envelope(SITE, "interval", seq, prev, end, body))

            if recs:
                n += len(store.commit_intervals(name, new.to_json(), recs, TOPIC, sign))
            states[name] = new
            b = new.boundary
            pending[name] = [s for s in ss if b is None or s.ts > b]
        # delivered, as the uplink marks them after the broker's PUBACK (an undelivered
        # record also keeps its compressed payload until then: see docs/performance.md)
        store.mark_sent([m.id for m in store.unsent(10_000)])
    store.checkpoint()
    store.close()
    return n, time.perf_counter() - t_start


# the records' fields as stored (agent/store_fields.py): every body column, no envelope
BARE_SQL = (
    "SELECT "
    + ", ".join(f'f."{k}"' for k in BODY_COLUMNS)
    + " FROM intervals i JOIN interval_fields f ON f.msg = i.msg"
    " WHERE i.start >= ? AND i.start < ? ORDER BY i.device, i.start"
)


def bare_select(db: Path, start: float, end: float) -> tuple[int, float]:
    """The same rows as the export, straight from sqlite3 in their stored form (the typed
    record columns), iterated without decoding: (rows, seconds)."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(str(db))
    n = 0
    try:
        for _row in conn.execute(BARE_SQL, (int(start), int(end))):
            n += 1
    finally:
        conn.close()
    return n, time.perf_counter() - t0


def export_once(db: Path, out: Path, start: float, end: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    store = Store(db)
    try:
        with out.open("w", encoding="utf-8", newline="") as f:
            rows = export_records(store, start, end, "csv", f)
    finally:
        store.close()
    return rows, time.perf_counter() - t0


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def datetime_ts(s: str) -> float:
    return float(calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--years", type=float, default=3.0)
    ap.add_argument("--sample-s", type=int, default=300, help="synthetic reading interval")
    ap.add_argument("--mix", action="store_true", help="heat meter + dp sensor + actuator")
    ap.add_argument("--dir", type=Path, default=None, help="keep the database here")
    ap.add_argument("--rounds", type=int, default=2, help="export/bare rounds (best counts)")
    args = ap.parse_args(argv)
    devices = (
        [("hm1", "heat_meter"), ("dp1", "dp_sensor"), ("act1", "actuator")]
        if args.mix
        else [("hm1", "heat_meter"), ("hm2", "heat_meter"), ("hm3", "heat_meter")]
    )
    days = round(args.years * 365)
    with tempfile.TemporaryDirectory(prefix="dh-scale-") as tmp:
        work = args.dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db = work / "scale.db"
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            p.unlink(missing_ok=True)
        n, fill_s = fill(db, devices, days, args.sample_s)
        size = db.stat().st_size
        wal = db.with_name(db.name + "-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        print(
            f"stored {n} records ({', '.join(r for _, r in devices)}) in {fill_s:.1f} s;"
            f" db {size / 1e6:.2f} MB, wal {wal_size} B, {size / max(1, n):.0f} B/record"
        )
        out = work / "export.csv"
        lo, hi = float(T0), float(T0 + days * DAY)
        ex_s: list[float] = []
        bare_s: list[float] = []
        for _ in range(max(1, args.rounds)):
            rows, dt = export_once(db, out, lo, hi)
            ex_s.append(dt)
            csv_mb = out.stat().st_size / 1e6
            print(f"exported {rows} records as CSV ({csv_mb:.1f} MB) in {dt:.3f} s")
            if rows != n:
                raise SystemExit(f"export wrote {rows} rows, {n} records stored")
            bare_rows, dt = bare_select(db, lo, hi)
            bare_s.append(dt)
            print(f"bare SELECT of the same {bare_rows} rows in {dt:.3f} s")
            if bare_rows != n:  # a record not in the typed form: the baseline would skip it
                raise SystemExit(f"bare SELECT read {bare_rows} rows, {n} records stored")
        export_s, bare = min(ex_s), min(bare_s)
    result = {
        "db_mb": round(size / 1e6, 2),
        "export_s": round(export_s, 3),
        "export_ratio": round(export_s / bare, 2),
        "bare_select_s": round(bare, 3),
        "records": n,
        "devices": [r for _, r in devices],
        "bytes_per_record": round(size / max(1, n)),
        "fill_s": round(fill_s, 1),
        "csv_mb": round(csv_mb, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
