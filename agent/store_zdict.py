"""The preset compression dictionary of stored messages (version 1).

Raw deflate with a preset dictionary of typical envelopes: deflate finds the key names
here, so a stored record costs little more than its numbers. The dictionary is written into
the database when the schema is created (``zdicts``), so a stored message can always be
inflated with the very bytes it was deflated with, whatever later versions of this module say.
"""

from __future__ import annotations

import json


def _zdict_v1() -> bytes:
    """Typical envelopes (sorted keys, compact, as ``agent.jws`` signs them): interval
    records of each role and a few events. Deflate finds the key names here, so a record
    costs little more than its numbers. Stored in the database at schema creation."""
    hm = {
        "cooling_avg_c": 0,
        "device": "hm1",
        "end": "2025-01-01T01:00:00Z",
        "energy_end_kwh": 0,
        "energy_kwh": 0,
        "energy_start_kwh": 0,
        "flags": ["interpolated", "partial", "limited", "meter_error", "clock_unsynced"],
        "flow_avg_m3h": 0,
        "flow_limit_m3h": 2.5,
        "flow_max_m3h": 0,
        "limit_exceeded": False,
        "period_s": 3600,
        "power_avg_kw": 0,
        "power_limit_kw": None,
        "power_max_kw": 0,
        "return_avg_c": 0,
        "role": "heat_meter",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
        "supply_avg_c": 0,
        "volume_end_m3": 0,
        "volume_m3": 0,
        "volume_start_m3": 0,
    }
    dp = {
        "device": "dp1",
        "dp_avg_kpa": 0,
        "dp_max_kpa": 0,
        "dp_min_kpa": 0,
        "end": "2025-01-01T01:00:00Z",
        "flags": ["no_data", "counter_reset"],
        "period_s": 3600,
        "role": "dp_sensor",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
    }
    act = {
        "device": "act1",
        "end": "2025-01-01T01:00:00Z",
        "flags": [],
        "limit_min_pct": 0,
        "period_s": 3600,
        "position_avg_pct": 0,
        "role": "actuator",
        "samples": 3600,
        "start": "2025-01-01T00:00:00Z",
    }
    ev = {
        "basis": "period",
        "device": "hm1",
        "duration_s": 0,
        "kind": "supply_temp_low_end",
        "period_start": "2025-01-01T00:00:00Z",
        "source": "limiter",
        "start": "2025-01-01T00:00:00Z",
        "threshold": 0,
        "time": "2025-01-01T00:00:00.000Z",
        "value": 0,
    }
    parts = []
    for stream, body in (("event", ev), ("interval", act), ("interval", dp), ("interval", hm)):
        env = {
            "body": body,
            "prev": "A" * 43,
            "seq": 1,
            "site": "sub-000123",
            "stream": stream,
            "ts": "2025-01-01T00:00:00.000Z",
            "v": 1,
        }
        parts.append(json.dumps(env, separators=(",", ":"), sort_keys=True))
    return "".join(parts).encode("utf-8")


ZDICT_V1 = _zdict_v1()
