"""Store-and-forward after a broker outage, and start-up latency, of `dh-agent run`.

1. first_publish_s: from spawning `dh-agent run` to the first message arriving at a
   subscriber on the broker (the retained signed `online` status). Baseline in the same
   run: ``bench/bare_publish.py``, a bare paho process that connects and publishes one
   retained QoS 1 message (spawned 3 times before the agent, the median counts):
   first_publish_ratio = agent / bare.
2. backlog_s: the broker is stopped for --outage seconds (default 60) while the agent
   keeps polling with a 5 s period, so interval and event messages pile up in its store;
   then the broker returns on the same port. Measured: seconds from the broker's return
   until every interval message created before the return has arrived at the subscriber
   (they are published in seq order, so this is when the backlog is through).
Targets: backlog_s <= 2, first_publish_ratio <= 2.0. Last line JSON
{"backlog_s", "first_publish_s", "first_publish_ratio", "bare_first_publish_s"}.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import Rig


def payload_env(raw: bytes) -> dict[str, object]:
    p = raw.decode().split(".")[1]
    env = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    assert isinstance(env, dict)
    return env


class Sub:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[float, str, dict[str, object]]] = []
        # a persistent session on a persistent broker: what the agent publishes while this
        # subscriber is still reconnecting after the outage is queued for it, so the
        # figure is the agent's delivery, not a race between the two reconnections
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False
        )
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("dh/v1/bench-1/#", 1), ("bare/#", 1)]
        )
        self.c.on_message = self.on
        self.c.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho takes floats
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def on(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        env = {} if m.topic.startswith("bare/") else payload_env(bytes(m.payload))
        with self.lock:
            self.got.append((t, m.topic, env))

    def snapshot(self) -> list[tuple[float, str, dict[str, object]]]:
        with self.lock:
            return [m for m in self.got if not m[1].startswith("bare/")]

    def bare_first_publish(self, port: int, n: int) -> float:
        """Median over n spawns of bench/bare_publish.py: spawn to arrival."""
        times = []
        for i in range(n):
            topic = f"bare/{i}"
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "bench.bare_publish", str(port), topic])
            arrived = float("nan")
            while time.monotonic() - t0 < 30:
                with self.lock:
                    hit = [t for t, top, _ in self.got if top == topic]
                if hit:
                    arrived = hit[0] - t0
                    break
                time.sleep(0.002)
            proc.wait(30)
            times.append(arrived)
        return statistics.median(times)


def ts_of(env: dict[str, object]) -> float:
    return datetime.fromisoformat(str(env["ts"]).replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outage", type=float, default=60.0)
    a = ap.parse_args()
    with Rig(period_s=5, persistence=True) as rig:
        sub = Sub(rig.broker.port)
        time.sleep(0.5)
        bare_s = sub.bare_first_publish(rig.broker.port, 3)
        t_spawn = time.monotonic()
        rig.start_agent()
        while not sub.snapshot() and time.monotonic() - t_spawn < 30:
            time.sleep(0.005)
        first = sub.snapshot()
        first_publish_s = first[0][0] - t_spawn if first else float("nan")
        time.sleep(8)
        rig.broker.stop()
        time.sleep(a.outage)
        rig.broker.start()
        t_back_wall, t_back = time.time(), time.monotonic()
        deadline = t_back + 120
        backlog_s = float("nan")
        while time.monotonic() < deadline:
            time.sleep(0.05)
            msgs = [m for m in sub.snapshot() if m[1].endswith("/interval")]
            seqs = {int(str(e["seq"])): (t, e) for t, _, e in msgs}
            before = [s for s, (_, e) in seqs.items() if ts_of(e) < t_back_wall]
            if not before:
                continue
            top = max(before)
            if all(s in seqs for s in range(1, top + 1)) and any(
                ts_of(e) >= t_back_wall for _, e in seqs.values()
            ):
                backlog_s = max(t for s, (t, _) in seqs.items() if s <= top) - t_back
                print(f"backlog: interval seq 1..{top} complete")
                break
        rc = rig.stop_agent()
    print(f"agent exit {rc}")
    print(
        json.dumps(
            {
                "backlog_s": round(backlog_s, 3),
                "first_publish_s": round(first_publish_s, 3),
                "first_publish_ratio": round(first_publish_s / bare_s, 2),
                "bare_first_publish_s": round(bare_s, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
