"""Shared fixtures: real Mosquitto brokers (tests/support/mosquitto.py)."""

from tests.support.mosquitto import mosquitto, mosquitto_durable, mosquitto_tls

__all__ = ["mosquitto", "mosquitto_durable", "mosquitto_tls"]
