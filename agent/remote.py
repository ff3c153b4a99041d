"""Remote configuration and commands (contract section 7).

``decide_config`` and ``decide_cmd`` are pure: the bytes received, the operator keys,
and the agent's current state in; a decision out (the ack body, and what to apply or
run). Every message gets an answer; only a message that passes every check changes
anything. The I/O around them (persisting, applying, publishing acks) is in
``RemoteHandler`` and ``persist_overlay``.

Checks, in order, each with its reason:
``malformed`` (not a compact JWS of JSON objects, envelope fields missing or of the
wrong type, a body of the wrong shape), ``bad_signature`` (alg is not Ed25519, no or
wrong signature), ``unknown_key`` (kid is not an operator key; for config, also a key
that is not remotely manageable: ``unknown_key: PATH``), ``wrong_site``,
``stale_version`` (config), ``replayed`` / ``stale_ts`` (cmd: id seen before, ts more
than 10 minutes from the agent's clock), ``invalid: PATH: message``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.atomicfile import write_atomic
from agent.config import Config, merge_remote, remote_view, validate
from agent.ed25519 import VerifyKey
from agent.finite import all_finite
from agent.jws import JWSError, verify
from agent.protocol import CHAINED_STREAMS, CMD_RESEND, COMMANDS
from agent.timefmt import parse_time
from drivers.dataclass_lite import frozen

MAX_MESSAGE_BYTES = 64 * 1024
MAX_DEPTH = 32
CMD_WINDOW_S = 600.0


@frozen
class Decision:
    ack: dict[str, Any]
    accepted: bool
    config: Config | None = None  # config: the validated result
    version: int | None = None
    command: dict[str, Any] | None = None  # cmd: the accepted body


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _depth(v: Any, d: int = 0) -> int:
    if d > MAX_DEPTH:
        return d
    if isinstance(v, dict):
        return max((_depth(x, d + 1) for x in v.values()), default=d + 1)
    if isinstance(v, list):
        return max((_depth(x, d + 1) for x in v), default=d + 1)
    return d


def _reject_constant(s: str) -> Any:
    raise ValueError(f"non-finite number {s}")


def _loads(b: bytes) -> Any:
    return json.loads(b, parse_constant=_reject_constant)


def peek(raw: bytes) -> dict[str, Any] | None:
    """The unverified payload, only to echo `version`/`id` in a rejection (nothing is
    parsed from an oversized message)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        parts = raw.decode("ascii").split(".")
        obj = _loads(_b64d(parts[1])) if len(parts) == 3 else None
        return obj if isinstance(obj, dict) else None
    except (UnicodeDecodeError, ValueError, binascii.Error, RecursionError):
        return None


def open_message(
    raw: bytes, keys: Mapping[str, VerifyKey], site: str, stream: str
) -> tuple[dict[str, Any] | None, str]:
    """Verify an operator message; (envelope, "") or (None, reason)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None, "malformed: message too large"
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None, "malformed: not ASCII"
    parts = text.strip().split(".")
    if len(parts) != 3:
        return None, "malformed: not a JWS compact serialization"
    try:
        header = _loads(_b64d(parts[0]))
        payload = _loads(_b64d(parts[1]))
    except (ValueError, binascii.Error, RecursionError):
        return None, "malformed: header or payload is not base64url JSON"
    if not isinstance(header, dict) or not isinstance(payload, dict):
        return None, "malformed: header and payload must be JSON objects"
    if header.get("alg") != "Ed25519":
        return None, f"bad_signature: alg {str(header.get('alg'))[:20]!r} is not Ed25519"
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        return None, "unknown_key: the signing key is not an operator key"
    try:
        env = verify(text.strip(), {kid: keys[kid]})
    except JWSError:
        return None, "bad_signature"
    if _depth(env) > MAX_DEPTH:
        return None, "malformed: nested too deeply"
    if not all_finite(env):
        return None, "malformed: non-finite number"
    if env.get("v") != 1 or not isinstance(env.get("site"), str):
        return None, "malformed: envelope v/site"
    if env.get("stream") != stream:
        return None, f"malformed: stream must be {stream!r}"
    if not isinstance(env.get("ts"), str) or not isinstance(env.get("body"), dict):
        return None, "malformed: envelope ts/body"
    if env["site"] != site:
        return None, "wrong_site"
    return env, ""


def decide_config(
    raw: bytes,
    *,
    keys: Mapping[str, VerifyKey],
    site: str,
    active_version: int,
    active: Config,
) -> Decision:
    """Decide a `config/set` message."""
    p = peek(raw)
    body = p.get("body") if p else None
    v = body.get("version") if isinstance(body, dict) else None
    echo = v if isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63 else None

    def reject(reason: str) -> Decision:
        return Decision({"version": echo, "result": "rejected", "reason": reason}, False)

    env, why = open_message(raw, keys, site, "config")
    if env is None:
        return reject(why)
    b = env["body"]
    if set(b) - {"version", "config"}:
        return reject(f"unknown_key: {sorted(set(b) - {'version', 'config'})[0]}")
    version = b.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version < 2**63:
        return reject("malformed: version must be a non-negative integer")
    if version <= active_version:
        return reject(f"stale_version: {version} <= active {active_version}")
    merged, why = merge_remote(active.doc, b.get("config"))
    if merged is None:
        return reject(why)
    cfg, problems = validate(merged, active.base)
    if cfg is None:
        return reject(f"invalid: {problems[0]}")
    return Decision(
        {"version": version, "result": "applied", "reason": ""},
        True,
        config=cfg,
        version=version,
    )


def decide_cmd(
    raw: bytes,
    *,
    keys: Mapping[str, VerifyKey],
    site: str,
    now: float,
    seen_ids: set[str],
) -> Decision:
    """Decide a `cmd` message (not yet run: the caller runs an accepted command)."""
    p = peek(raw)
    body = p.get("body") if p else None
    i = body.get("id") if isinstance(body, dict) else None
    echo = i if isinstance(i, str) and len(i) <= 128 else None

    def reject(reason: str) -> Decision:
        return Decision({"id": echo, "result": "rejected", "reason": reason}, False)

    env, why = open_message(raw, keys, site, "cmd")
    if env is None:
        return reject(why)
    b = env["body"]
    cid, name = b.get("id"), b.get("cmd")
    if not isinstance(cid, str) or not 1 <= len(cid) <= 128:
        return reject("malformed: id must be a string of 1-128 characters")
    t = parse_time(env["ts"], naive=False)
    if t is None:
        return reject("malformed: ts is not an RFC 3339 time")
    if abs(now - t) > CMD_WINDOW_S:
        return reject(f"stale_ts: ts is {now - t:+.0f} s from the agent's clock")
    if cid in seen_ids:
        return reject("replayed: id already used")
    if name not in COMMANDS:
        return reject(f"invalid: cmd: unknown command {str(name)[:32]!r}")
    if name == CMD_RESEND:
        stream, a, z = b.get("stream"), b.get("from_seq"), b.get("to_seq")
        if not isinstance(stream, str) or stream not in CHAINED_STREAMS:  # JSON: maybe a list
            return reject("invalid: stream: must be interval or event")
        for key, n in (("from_seq", a), ("to_seq", z)):
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n < 2**63:
                return reject(f"invalid: {key}: must be a positive integer")
        assert isinstance(a, int) and isinstance(z, int)
        if z < a or z - a >= 100_000:
            return reject("invalid: to_seq: must be >= from_seq and span < 100000")
    if name == "limit_override":
        from agent import limiter_override  # a limit_override command: rare

        _, why = limiter_override.parse(b, now)
        if why:
            return reject(why)
    return Decision({"id": cid, "result": "done", "reason": ""}, True, command=dict(b))


# --- persistence -----------------------------------------------------------------------


def overlay_path(cfg: Config) -> Path:
    """Remote config lives beside the database (the state directory), not in /etc."""
    return cfg.storage.path.parent / "remote-config.json"


def persist_overlay(cfg: Config, version: int) -> None:
    doc = {"version": version, "config": remote_view(cfg)}
    write_atomic(overlay_path(cfg), json.dumps(doc, sort_keys=True, indent=1).encode())


def apply_overlay(base: Config) -> tuple[Config, int, str]:
    """The config in effect at start: the local file plus the last applied remote
    overlay. Returns (config, version, problem); a broken overlay is ignored
    (version 0 keeps counting from the file's) and reported."""
    path = overlay_path(base)
    if not path.exists():
        return base, 0, ""
    try:
        doc = json.loads(path.read_text())
        version = int(doc["version"])
        over = doc["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return base, 0, f"{path}: unreadable ({e})"
    # the overlay holds whole tables: they replace the file's
    start = dict(base.doc)
    for t in ("contract", "delivery"):
        if t in over:
            start[t] = {}
    merged, why = merge_remote(start, over)
    if merged is None:
        return base, version, f"{path}: {why}"
    cfg, problems = validate(merged, base.base)
    if cfg is None:
        return base, version, f"{path}: invalid: {problems[0]}"
    return cfg, version, ""
