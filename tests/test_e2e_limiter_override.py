"""`cmd limit_override` end to end with real processes: dh-sim over Modbus TCP,
`dh-agent run`, a real Mosquitto and an operator client (paho) signing commands. The
override is applied (ack, event, config/current, the valve), survives a kill -9 and
restart (status, config/current, still limiting), expires on time by itself, and is
rejected when it would raise the limit or reach past 24 h."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.jws import Signer, thumbprint, verify
from agent.keys import load_private, load_public
from agent.operator import cmd_message
from tests.support.mosquitto import Mosquitto
from tests.support.records import stored, ts_of
from tests.support.rig import BIN, simulator, start_agent, stop, wait_until, write_config

SITE = "test-site"
BASE = f"dh/v1/{SITE}"
LIMIT = 2.5


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class Operator:
    """Subscribes to everything the agent publishes (verified), signs commands."""

    def __init__(self, tmp: Path, port: int) -> None:
        pub = load_public(tmp / "agent.pub")
        self.keys = {thumbprint(pub): pub}
        self.signer = Signer(load_private(tmp / "operator.key"))
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *_: c.subscribe(f"{BASE}/#", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        sub = m.topic[len(BASE) + 1 :]
        if sub in ("cmd", "config/set"):
            return
        body = verify(m.payload.decode(), self.keys)["body"]
        with self.lock:
            self.got.append((sub, body))

    def bodies(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for s, b in self.got if s == sub]

    def cmd(self, body: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        cid = uuid.uuid4().hex
        msg = cmd_message(self.signer, SITE, {**body, "id": cid}, time.time())
        self.c.publish(f"{BASE}/cmd", msg, qos=1)
        assert wait_until(lambda: any(a.get("id") == cid for a in self.bodies("cmd/ack")), timeout)
        return next(a for a in self.bodies("cmd/ack") if a.get("id") == cid)

    def ready(self, timeout: float = 40.0) -> None:
        """The agent answers commands (subscribed)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            cid = uuid.uuid4().hex
            msg = cmd_message(self.signer, SITE, {"cmd": "poll_now", "id": cid}, time.time())
            self.c.publish(f"{BASE}/cmd", msg, qos=1)
            if wait_until(lambda c=cid: any(a.get("id") == c for a in self.bodies("cmd/ack")), 1.5):
                return
        raise AssertionError("the agent never answered")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def flow_avg(truth: list[dict[str, Any]], a: float, b: float) -> float:
    xs = [x for x in truth if a <= x["t"] <= b]
    assert len(xs) >= 2, (a, b)
    return float((xs[-1]["volume_m3"] - xs[0]["volume_m3"]) * 3600.0 / (xs[-1]["t"] - xs[0]["t"]))


def rejections(op: Operator) -> None:
    """Raising the limit, more than 24 h ahead, no until: rejected with the reason."""
    now = time.time()
    a = op.cmd({"cmd": "limit_override", "flow_limit_m3h": 3.0, "until": iso(now + 60)})
    assert a["result"] == "rejected"
    assert a["reason"].startswith("invalid: flow_limit_m3h: must be below"), a
    a = op.cmd({"cmd": "limit_override", "flow_limit_m3h": 1.5, "until": iso(now + 90_000)})
    assert a == {**a, "result": "rejected", "reason": "invalid: until: at most 24 h ahead"}
    a = op.cmd({"cmd": "limit_override", "flow_limit_m3h": 1.5})
    assert a["result"] == "rejected" and a["reason"].startswith("invalid: until")


@pytest.mark.slow
def test_limit_override_applied_survives_restart_expires_and_rejections(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with simulator(tmp_path, "winter-peak", "--seed", "1") as sim:
        cfg = write_config(
            tmp_path,
            sim.port,
            mosquitto.url,
            10,
            f"flow_limit_m3h = {LIMIT}\nenforce = true\n",
            '[limiter]\nvalve_characteristic = "linear"\n',
        )
        log = tmp_path / "agent.log"
        agent = start_agent(cfg, log)
        op = Operator(tmp_path, mosquitto.port)
        try:
            op.ready()
            rejections(op)
            # applied
            until = float(int(time.time()) + 75)
            a = op.cmd({"cmd": "limit_override", "flow_limit_m3h": 1.5, "until": iso(until)})
            assert a["result"] == "done", a
            assert a["limit_override"]["flow_limit_m3h"] == 1.5
            assert a["limit_override"]["until"] == iso(until)
            applied = time.time()
            assert wait_until(
                lambda: any(
                    c.get("limit_override", {}).get("until") == iso(until)
                    for c in op.bodies("config/current")
                ),
                10,
            )
            time.sleep(20)
            # kill -9 and restart: the override is still in force
            agent.send_signal(signal.SIGKILL)
            agent.wait(10)
            n_current = len(op.bodies("config/current"))
            agent = start_agent(cfg, log)
            op.ready()
            assert wait_until(
                lambda: any(
                    c.get("limit_override", {}).get("flow_limit_m3h") == 1.5
                    for c in op.bodies("config/current")[n_current:]
                ),
                15,
            ), "config/current after the restart does not show the override"
            status = subprocess.run(
                [str(BIN / "dh-agent"), "status", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert f"limit override: flow_limit_m3h 1.5 until {iso(until)}" in status.stdout
            # it expires by itself
            time.sleep(max(0.0, until + 25 - time.time()))
        finally:
            op.close()
            code = stop(agent)
        truth = sim.truth_lines()
    assert code == 0
    assert "limiter state restored" in log.read_text()
    events = stored(tmp_path, "event")
    starts = [e for e in events if e["kind"] == "limit_override_start"]
    ends = [e for e in events if e["kind"] == "limit_override_end"]
    assert len(starts) == 1 and starts[0]["flow_limit_m3h"] == 1.5, starts
    assert len(ends) == 1 and ts_of(ends[0]["time"]) == until, ends
    assert ends[0]["reason"] == "expired"
    # the valve held the lower limit while in force (through the restart) and the
    # contract's again after it ended, by the simulator's truth
    during = flow_avg(truth, applied + 10, until - 1)
    assert 0.85 * 1.5 <= during <= 1.05 * 1.5, during
    after = flow_avg(truth, until + 8, until + 24)
    assert after > 1.3 * 1.5, after
    assert json.dumps(ends[0])  # plain JSON
