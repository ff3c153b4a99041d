"""Backlog drain throughput: the agent's uplink against a bare paho-mqtt QoS 1 publisher.

Stores N interval records (signed, chained) through ``agent.store.Store`` as the agent
stores them (``commit_intervals``: typed columns, plus the compressed payload until the
broker has it; ``--form blob`` stores plain signed messages instead), starts a local
Mosquitto on a free port, then measures in the same run:

- agent: ``Uplink.run()`` draining the store (QoS 1, window 32, marks sent in the store)
  until nothing is unsent;
- bare: one paho-mqtt client publishing the same stored payloads to the same topic with
  QoS 1 and the same in-flight window (32), until every PUBACK is in; with MQTT 5, the
  protocol the agent negotiates with Mosquitto (the ratio), and for information with
  MQTT 3.1.1 too (paho decodes MQTT 5 PUBACKs noticeably slower).

The agent's round ends when its uplink has written every acknowledged message as sent
(``Uplink.published``, counted after each ``mark_sent`` returns), checked on the event loop
every millisecond; after the round the store is asked that nothing is left unsent.

The two sides alternate for ``--rounds`` rounds (every agent round starts from a copy of
the database as filled, so it drains the same undelivered backlog; the MQTT 3.1.1
publisher runs in every other round). The machine is shared and noisy, so every round is
printed and the median of each side counts (the ratio of the medians; each round's own
ratio is printed too). Last line: JSON ``{"agent_msgs_s", "bare_msgs_s", "ratio", ...}``;
target ratio >= 0.8.

    python -m bench.drain [--n 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.jws import Signer, envelope
from agent.store import Store
from agent.store_intervals import CODEC_FIELDS
from agent.timefmt import rfc3339
from agent.uplink import MqttSettings, Uplink
from tests.support.mosquitto import Mosquitto

SITE = "bench-site"
PREFIX = "dh/v1"
WINDOW = 32


def interval_body(i: int, t0: float) -> dict[str, Any]:
    start = t0 + i * 3600
    return {
        "device": "hm1",
        "role": "heat_meter",
        "start": rfc3339(start),
        "end": rfc3339(start + 3600),
        "period_s": 3600,
        "samples": 3600,
        "flags": [],
        "energy_start_kwh": 1000.0 + i * 50,
        "energy_end_kwh": 1050.0 + i * 50,
        "energy_kwh": 50.0,
        "volume_start_m3": 200.0 + i,
        "volume_end_m3": 201.0 + i,
        "volume_m3": 1.0,
        "flow_avg_m3h": 1.0,
        "flow_max_m3h": 1.4,
        "power_avg_kw": 50.0,
        "power_max_kw": 61.2,
        "supply_avg_c": 78.1,
        "return_avg_c": 41.9,
        "cooling_avg_c": 36.2,
    }


def fill(store: Store, signer: Signer, n: int, form: str = "fields") -> float:
    """``n`` interval records stored as the agent stores them (``commit_intervals``: kept
    as typed columns and rebuilt when read) or, with ``form="blob"``, as plain signed
    messages (``append_message``: kept as a compressed blob)."""
    t0 = time.time()
    topic = f"{PREFIX}/{SITE}/interval"

    def sign_body(body: dict[str, Any], seq: int, prev: str | None) -> str:
        return signer.sign(envelope(SITE, "interval", seq, prev, time.time(), body))

    if form == "fields":
        for k in range(0, n, 500):
            recs = [interval_body(i, 1.7e9) for i in range(k, min(n, k + 500))]
            store.commit_intervals("hm1", "{}", recs, topic, sign_body)
        return time.time() - t0
    for i in range(n):
        body = interval_body(i, 1.7e9)

        def sign(seq: int, prev: str | None, body: dict[str, Any] = body) -> str:
            return sign_body(body, seq, prev)

        store.append_message("interval", topic, 1, False, sign)
    return time.time() - t0


def backlog(db: Path, filled: Path) -> Store:
    """The store as it was filled (nothing sent), for one agent round."""
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        p.unlink(missing_ok=True)
    shutil.copyfile(filled, db)
    return Store(db)


def agent_round(url: str, store: Store, signer: Signer, ex: ThreadPoolExecutor, n: int) -> float:
    async def main() -> float:
        up = Uplink(
            MqttSettings(url=url, topic_prefix=PREFIX, site=SITE, client_id="bench-agent"),
            signer,
            store,
            ex,
            boot=1,
            window=WINDOW,
        )
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        task = asyncio.create_task(up.run())
        while up.published < n and not task.done():
            await asyncio.sleep(0.001)
        dt = time.perf_counter() - t0
        await up.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        left = await loop.run_in_executor(ex, store.unsent, 1)
        if up.published < n or left:
            raise SystemExit(f"agent: {up.published} of {n} marked sent, unsent left: {left}")
        return dt

    return asyncio.run(main())


def bare_round(
    port: int, payloads: list[tuple[str, bytes]], protocol: MQTTProtocolVersion
) -> float:
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(payloads):
                done.set()

    connected = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=protocol)
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.on_connect = lambda *_: connected.set()
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not connected.wait(10):
            raise SystemExit("bare client did not connect")
        for topic, p in payloads:
            c.publish(topic, p, qos=1)
        if not done.wait(300):
            raise SystemExit(f"bare publisher: {acked} of {len(payloads)} acknowledged")
        return time.perf_counter() - t0
    finally:
        c.disconnect()
        c.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--form",
        choices=["fields", "blob"],
        default="fields",
        help="how the records are stored: as the agent stores them (default) or as blobs",
    )
    args = ap.parse_args(argv)
    n = args.n
    with tempfile.TemporaryDirectory(prefix="dh-drain-") as tmp:
        work = Path(tmp)
        signer = Signer(Ed25519PrivateKey.generate())
        db = work / "agent.db"
        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        store: Store = ex.submit(Store, db).result()
        fill_s = ex.submit(fill, store, signer, n, args.form).result()
        as_fields = ex.submit(
            lambda: store.conn.execute(
                "SELECT count(*) FROM messages WHERE codec = ?", (CODEC_FIELDS,)
            ).fetchone()[0]
        ).result()
        if args.form == "fields" and as_fields != n:
            raise SystemExit(f"only {as_fields} of {n} records were stored as fields")
        stored = ex.submit(store.unsent, n + 1).result()
        payloads = [(m.topic, m.payload.encode("ascii")) for m in stored]
        size = sum(len(p) for _, p in payloads) / max(1, len(payloads))
        print(f"stored {len(payloads)} interval messages in {fill_s:.2f} s, {size:.0f} B each")
        # every agent round drains the same backlog: the database as filled, copied back
        ex.submit(store.close).result()
        shutil.copyfile(db, work / "filled.db")
        broker = Mosquitto(work / "broker", persistence=False)
        broker.start()
        agent_s: list[float] = []
        bare_s: list[float] = []
        bare311_s: list[float] = []
        try:
            for r in range(args.rounds):
                # alternate which side goes first, so a drift hits both alike
                for side in ("agent", "bare") if r % 2 == 0 else ("bare", "agent"):
                    if side == "agent":
                        store = ex.submit(backlog, db, work / "filled.db").result()
                        dt = agent_round(broker.url, store, signer, ex, n)
                        ex.submit(store.close).result()
                        agent_s.append(dt)
                        what = "agent drained"
                    else:
                        dt = bare_round(broker.port, payloads, paho.MQTTv5)
                        bare_s.append(dt)
                        what = "bare paho (MQTT 5) published"
                    print(f"round {r + 1}: {what} {n} in {dt:.3f} s = {n / dt:.0f} msg/s")
                print(f"round {r + 1}: ratio {bare_s[-1] / agent_s[-1]:.3f}")
                if r % 2 == 0:  # for information: paho decodes MQTT 5 PUBACKs slower
                    dt = bare_round(broker.port, payloads, paho.MQTTv311)
                    bare311_s.append(dt)
                    print(
                        f"round {r + 1}: bare paho (MQTT 3.1.1) published {n} in {dt:.3f} s"
                        f" = {n / dt:.0f} msg/s"
                    )
        finally:
            broker.stop()
            ex.submit(store.close).result()
            ex.shutdown()
    agent_rate = n / statistics.median(agent_s)
    bare_rate = n / statistics.median(bare_s)
    bare311_rate = n / statistics.median(bare311_s)
    result = {
        "agent_msgs_s": round(agent_rate, 1),
        "bare_msgs_s": round(bare_rate, 1),
        "ratio": round(agent_rate / bare_rate, 3),
        "round_ratios": [round(b / a, 3) for a, b in zip(agent_s, bare_s, strict=True)],
        "best_ratio": round(min(bare_s) / min(agent_s), 3),
        "protocol": "MQTT 5 (agent and bare)",
        "bare_mqtt311_msgs_s": round(bare311_rate, 1),
        "ratio_vs_mqtt311": round(agent_rate / bare311_rate, 3),
        "n": n,
        "window": WINDOW,
        "payload_bytes": round(size),
        "rounds": args.rounds,
        "form": args.form,
        "stored_as_fields": as_fields,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
