"""The simulator's device layout as agent config: one ``[[devices]]`` table per Modbus
unit dh-sim serves (unit 1 heat meter, 2 dp sensor, 3 actuator, contract section 6)."""

from __future__ import annotations

UNITS = (
    ("heat_meter", "sim-heat-meter", 1),
    ("dp_sensor", "sim-dp-sensor", 2),
    ("actuator", "sim-actuator", 3),
)


def devices_toml(
    host: str, port: int, names: tuple[str, str, str] = ("hm1", "dp1", "act1"), poll_s: float = 1.0
) -> str:
    """TOML ``[[devices]]`` tables reaching a dh-sim at host:port over Modbus TCP."""
    out = ""
    for name, (role, profile, unit) in zip(names, UNITS, strict=True):
        out += (
            f'\n[[devices]]\nname = "{name}"\nrole = "{role}"\nprofile = "{profile}"\n'
            f'transport = "tcp"\nhost = "{host}"\nport = {port}\nunit = {unit}\n'
            f"poll_s = {poll_s}\n"
        )
    return out
