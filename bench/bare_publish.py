"""Bare baseline for bench/reconnect.py's start-up: a Python process that imports paho,
connects (MQTT 5) and publishes one retained QoS 1 message, then exits. The time from
spawning it to the message arriving at a subscriber is the floor for `dh-agent run`'s
start-to-first-publish on the same machine in the same run.

    python -m bench.bare_publish BROKER_PORT TOPIC
"""

import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-publish", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.publish(sys.argv[2], b'{"state":"online"}', qos=1, retain=True).wait_for_publish(10)
c.disconnect()
c.loop_stop()
