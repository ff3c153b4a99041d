"""The protocol's names, in one place: device roles, streams, topics, commands, ack
results and reasons, event kinds.

Everything here is public (docs/topics.md, docs/events.md, docs/commands.md): a name
may be added, never renamed. ``tests/test_docs.py`` checks that each one is documented
and that the event kinds and commands the code uses are listed here. Pure data, no
imports from the rest of the project, so any module (drivers included) may use it.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from drivers.dataclass_lite import frozen

# --- device roles -----------------------------------------------------------------------

Role = Literal["heat_meter", "dp_sensor", "actuator"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
HEAT_METER: Final[Role] = "heat_meter"
DP_SENSOR: Final[Role] = "dp_sensor"
ACTUATOR: Final[Role] = "actuator"

# --- streams (the envelope's ``stream``) --------------------------------------------------

Stream = Literal["status", "telemetry", "interval", "event", "config", "ack", "cmd"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)
CHAINED_STREAMS: Final = frozenset({"interval", "event"})  # stored, seq + prev chain


# --- topics (below ``<topic_prefix>/<site>/``) ---------------------------------------------


@frozen
class Topic:
    suffix: str  # after "<topic_prefix>/<site>/"
    stream: Stream  # the stream its envelope names
    outbound: bool  # sent by the agent (else received by it)
    qos: int
    retain: bool


TOPICS: Final[tuple[Topic, ...]] = (
    Topic("status", "status", True, 1, True),
    Topic("telemetry", "telemetry", True, 0, False),
    Topic("interval", "interval", True, 1, False),
    Topic("event", "event", True, 1, False),
    Topic("config/set", "config", False, 1, False),
    Topic("config/ack", "ack", True, 1, False),
    Topic("config/current", "config", True, 1, True),
    Topic("cmd", "cmd", False, 1, False),
    Topic("cmd/ack", "ack", True, 1, False),
)
TOPIC_STREAMS: Final[dict[str, str]] = {t.suffix: t.stream for t in TOPICS}

# --- commands (``cmd`` body ``cmd``) --------------------------------------------------------

CMD_RESEND: Final = "resend"
CMD_POLL_NOW: Final = "poll_now"
CMD_ROTATE_KEY: Final = "rotate_key"
CMD_LIMIT_OVERRIDE: Final = "limit_override"
COMMANDS: Final[tuple[str, ...]] = (
    CMD_RESEND,
    CMD_POLL_NOW,
    CMD_ROTATE_KEY,
    CMD_LIMIT_OVERRIDE,
)

# --- acks ---------------------------------------------------------------------------------

CONFIG_RESULTS: Final = ("applied", "rejected")
CMD_RESULTS: Final = ("done", "rejected")
# the first word of a rejection's ``reason`` (the rest says more)
REJECT_REASONS: Final = (
    "malformed",
    "bad_signature",
    "unknown_key",
    "wrong_site",
    "stale_version",  # config/set
    "replayed",  # cmd
    "stale_ts",  # cmd
    "invalid",
    "failed",  # cmd: accepted, but running it failed
)

# --- interval record flags (``interval`` body ``flags``) --------------------------------------

RECORD_FLAGS: Final[tuple[str, ...]] = (
    "no_data",  # no reading in the period (the counters are interpolated)
    "partial",  # readings, but a gap longer than the gap limit
    "interpolated",  # a boundary's register value bridged across a gap
    "counter_reset",  # a register went backwards (not a rollover): that step counts 0
    "meter_error",  # the meter flagged an error, or a register value is missing
    "clock_unsynced",  # readings taken before the clock was synchronised, restamped
    "limited",  # the limiter held the valve during the period
    "meter_replaced",  # the first record of a new meter's series (the old one ended)
)

# --- event kinds (``event`` body ``kind``) ------------------------------------------------

EVENT_KINDS: Final[tuple[str, ...]] = (
    # delivery terms (agent.monitors), live
    "supply_temp_low",
    "supply_temp_low_end",
    "supply_temp_high",
    "supply_temp_high_end",
    "heat_outage_start",
    "heat_outage_end",
    "dp_low",
    "dp_low_end",
    "device_offline",
    "device_online",
    # delivery terms, per period (interval records)
    "cooling_low",
    "cooling_low_end",
    "return_temp_high",
    "return_temp_high_end",
    # the contract and the limiter (agent.limiter, agent.monitors, agent.advice)
    "flow_limit_exceeded",
    "power_limit_exceeded",
    "flow_limit_enforced",
    "flow_limit_released",
    "limiter_failsafe",
    "limiter_failsafe_end",
    "contract_review",
    # the agent itself (agent.commands, agent.runner)
    "config_applied",
    "key_rotated",
    "clock_step",
    "data_pruned",
    "config_conflict",
    # meter identity (agent.meters)
    "meter_replaced",
    "meter_stored_values",
    # limiter modes (agent.limiter_events, agent.commands)
    "return_limit_engaged",
    "return_limit_released",
    "limit_override_start",
    "limit_override_end",
    # measurement plausibility, terms 6.9-6.10 (agent.plausibility)
    "meter_drift_suspected",
    "meter_drift_end",
    "temp_sensors_swapped",
    "temp_sensors_swapped_end",
    "temp_sensor_fault",
    "temp_sensor_fault_end",
    "flow_sensor_stuck",
    "flow_sensor_stuck_end",
    "meter_register_decrease",
    # storage and uplink faults (agent.degraded, agent.uplink)
    "message_refused",
    "subscription_refused",
    "storage_degraded",
    "storage_recovered",
    "storage_replaced",
)
