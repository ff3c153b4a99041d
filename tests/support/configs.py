"""A valid agent.toml as text, for the pure config tests: a site with a 900 s period, a
heat meter and an actuator on a simulator at 127.0.0.1:5020, a 2.5 m3/h contract
enforced. Tests edit it with ``str.replace`` to make the case they need."""

from __future__ import annotations

GOOD = """
[site]
id = "sub-000123"
period_s = 900

[mqtt]
url = "mqtt://127.0.0.1:1883"

[keys]
agent_key = "agent.key"
operator_pubkeys = ["operator.pub"]

[storage]
path = "agent.db"

[contract]
flow_limit_m3h = 2.5
enforce = true

[[devices]]
name = "hm1"
role = "heat_meter"
profile = "sim-heat-meter"
transport = "tcp"
port = 5020
unit = 1

[[devices]]
name = "act1"
role = "actuator"
profile = "sim-actuator"
transport = "tcp"
port = 5020
unit = 3
"""
