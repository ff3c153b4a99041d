"""Issue 13 item 7: a local config edit that makes the stored remote overlay inapplicable
is reported (config/current shows the version in effect and the conflict, an event), and
the operator can re-send. Real processes: simulator, `dh-agent run`, Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.jws import Signer, b64u_decode
from agent.keys import load_private
from agent.operator import config_message
from tests.support.mosquitto import Mosquitto
from tests.support.rig import simulator, start_agent, stop, wait_until, write_config

SITE = "test-site"
BASE = f"dh/v1/{SITE}"


class Head:
    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="head")
        self.c.on_connect = lambda c, *a: c.subscribe(f"{BASE}/#", qos=1)
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port, 10)
        self.c.loop_start()

    def _on(self, c: Any, u: Any, m: paho.MQTTMessage) -> None:
        env = json.loads(b64u_decode(m.payload.split(b".")[1].decode()))
        with self.lock:
            self.got.append((m.topic[len(BASE) + 1 :], env["body"]))

    def bodies(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for t, b in self.got if t == sub]

    def send(self, sub: str, payload: str) -> None:
        self.c.publish(f"{BASE}/{sub}", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_a_dropped_overlay_is_reported_and_can_be_sent_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    head = Head(mosquitto.port)
    with simulator(tmp_path, "steady") as sim:
        cfg = write_config(tmp_path, sim.port, mosquitto.url, 5)
        op = Signer(load_private(tmp_path / "operator.key"))
        log = tmp_path / "agent.log"
        p = start_agent(cfg, log)
        try:
            assert wait_until(lambda: bool(head.bodies("config/current")), 30), log.read_text()
            partial = {"devices": [{"name": "dp1", "poll_s": 2.0}]}
            head.send("config/set", config_message(op, SITE, 3, partial, time.time()))
            assert wait_until(lambda: bool(head.bodies("config/ack")), 20), log.read_text()
            assert head.bodies("config/ack")[-1]["result"] == "applied"
        finally:
            assert stop(p) == 0
        # the technician renames the device in the local file: the overlay no longer applies
        cfg.write_text(cfg.read_text().replace('name = "dp1"', 'name = "dp-main"'))
        n_cur = len(head.bodies("config/current"))
        p = start_agent(cfg, log)
        try:
            assert wait_until(lambda: len(head.bodies("config/current")) > n_cur, 30)
            cur = head.bodies("config/current")[-1]
            assert cur["version"] == 0, cur  # the local file alone is in effect
            assert cur["conflict"]["overlay_version"] == 3 and "dp1" in cur["conflict"]["reason"]
            assert wait_until(
                lambda: any(b.get("kind") == "config_conflict" for b in head.bodies("event")), 30
            )
            # the operator re-sends, for the renamed device
            n_ack = len(head.bodies("config/ack"))
            partial = {"devices": [{"name": "dp-main", "poll_s": 2.0}]}
            head.send("config/set", config_message(op, SITE, 4, partial, time.time()))
            assert wait_until(lambda: len(head.bodies("config/ack")) > n_ack, 20)
            assert head.bodies("config/ack")[-1]["result"] == "applied"
            assert wait_until(lambda: head.bodies("config/current")[-1]["version"] == 4, 20)
            assert "conflict" not in head.bodies("config/current")[-1]
        finally:
            assert stop(p) == 0
    head.close()
