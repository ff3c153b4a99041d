"""Remote configuration and commands through a real Mosquitto to a running agent
(in-process, with the simulator over Modbus TCP): every rejection, a valid change that
survives a restart, resend byte for byte, and a 2,000-payload hypothesis fuzz."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.jws import JWSError, Signer, envelope, thumbprint, verify
from agent.keys import load_public
from agent.operator import cmd_message
from agent.verify import Checker
from tests.support.mosquitto import Mosquitto
from tests.support.remote_rig import BASE, SITE, Rig, rig


def test_every_rejection_is_acked_and_changes_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with rig(tmp_path, mosquitto) as r:
            before = r.head.bodies("config/current")[-1]
            assert before["version"] == 0
            stranger = Signer(Ed25519PrivateKey.generate())
            good = r.config_msg(1, {"contract": {"flow_limit_m3h": 2.0}})
            h, p, s = good.split(".")
            bad_sig = f"{h}.{p}.{('A' if s[0] != 'A' else 'B')}{s[1:]}"
            unsigned = json.dumps(
                envelope(SITE, "config", 1, None, time.time(), {"version": 1, "config": {}})
            )
            cases: list[tuple[str | bytes, str]] = [
                (b"\x00garbage\xff", "malformed"),
                (unsigned, "malformed"),
                (bad_sig, "bad_signature"),
                (r.config_msg(1, {"contract": {"flow_limit_m3h": 2.0}}, stranger), "unknown_key"),
                (
                    r.config_msg(1, {"contract": {"flow_limit_m3h": 2.0}}, site="other-site"),
                    "wrong_site",
                ),
                (r.config_msg(0, {"contract": {"flow_limit_m3h": 2.0}}), "stale_version"),
                (
                    r.config_msg(1, {"contract": {"flow_limit_m3h": -1}}),
                    "invalid: contract.flow_limit_m3h",
                ),
                (r.config_msg(1, {"site": {"id": "x"}}), "unknown_key"),
            ]
            for payload, reason in cases:
                n = len(r.head.bodies("config/ack"))
                await r.send("config/set", payload)
                ack = await r.ack("config/ack", n)
                assert ack["result"] == "rejected" and ack["reason"].startswith(reason), (
                    reason,
                    ack,
                )
            assert r.agent.remote.version == 0
            assert r.agent.cfg.contract.flow_limit_m3h == 2.5
            assert r.agent.lparams.flow_limit_m3h == 2.5
            assert r.head.bodies("config/current")[-1] == before
            # commands: unknown command, stale ts, replayed id
            cases_cmd: list[tuple[str, str]] = []
            old = cmd_message(r.operator, SITE, {"cmd": "poll_now"}, time.time() - 3600)
            cases_cmd.append((old, "stale_ts"))
            cases_cmd.append(
                (cmd_message(r.operator, SITE, {"cmd": "format_disk"}, time.time()), "invalid: cmd")
            )
            once = cmd_message(r.operator, SITE, {"cmd": "poll_now", "id": "c-1"}, time.time())
            cases_cmd.append((once, ""))
            cases_cmd.append((once, "replayed"))
            for payload, reason in cases_cmd:
                n = len(r.head.bodies("cmd/ack"))
                await r.send("cmd", payload)
                ack = await r.ack("cmd/ack", n)
                if reason:
                    assert ack["result"] == "rejected" and ack["reason"].startswith(reason), ack
                else:
                    assert ack["result"] == "done", ack

    asyncio.run(main())


def test_valid_change_applies_survives_restart_and_replay_is_stale(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def main() -> None:
        async with rig(tmp_path, mosquitto) as r:
            msg = r.config_msg(
                1,
                {"contract": {"flow_limit_m3h": 1.75}, "devices": [{"name": "hm1", "poll_s": 0.5}]},
            )
            n = len(r.head.bodies("config/ack"))
            await r.send("config/set", msg)
            ack = await r.ack("config/ack", n)
            assert ack == {"version": 1, "result": "applied", "reason": ""}
            await r.wait(lambda: r.head.bodies("config/current")[-1]["version"] == 1)
            cur = r.head.bodies("config/current")[-1]["config"]
            assert cur["contract"]["flow_limit_m3h"] == 1.75
            assert r.agent.lparams.flow_limit_m3h == 1.75
            assert r.agent.channels["hm1"].poll_s == 0.5
            # the next records carry the new limit
            n_int = len(r.head.bodies("interval"))
            await r.wait(
                lambda: any(
                    b["device"] == "hm1" and b["flow_limit_m3h"] == 1.75
                    for b in r.head.bodies("interval")[n_int:]
                ),
                30,
            )
            events = [b["kind"] for b in r.head.bodies("event")]
            assert "config_applied" in events
        # restart: the change is still in effect, and the same message is now stale
        async with rig(tmp_path, mosquitto) as r2:
            assert r2.agent.remote.version == 1
            assert r2.agent.cfg.contract.flow_limit_m3h == 1.75
            assert r2.head.bodies("config/current")[-1]["version"] == 1
            n = len(r2.head.bodies("config/ack"))
            await r2.send("config/set", msg)
            ack = await r2.ack("config/ack", n)
            assert ack["result"] == "rejected" and ack["reason"].startswith("stale_version")
            assert r2.agent.cfg.contract.flow_limit_m3h == 1.75

    asyncio.run(main())


def test_resend_republishes_byte_identical_messages(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def main() -> None:
        async with rig(tmp_path, mosquitto) as r:
            await r.wait(lambda: len(r.head.raw.get("interval", [])) >= 6, 40)
            first = list(r.head.raw["interval"][:6])
            seqs = [e["seq"] for e in r.head.got["interval"][:6]]
            assert seqs == list(range(1, 7))
            n_raw = len(r.head.raw["interval"])
            n = len(r.head.bodies("cmd/ack"))
            await r.send(
                "cmd",
                cmd_message(
                    r.operator,
                    SITE,
                    {"cmd": "resend", "stream": "interval", "from_seq": 1, "to_seq": 6},
                    time.time(),
                ),
            )
            ack = await r.ack("cmd/ack", n)
            assert ack["result"] == "done" and ack.get("count") == 6
            await r.wait(lambda: all(m in r.head.raw["interval"][n_raw:] for m in first), 20)
            # what `dh-agent verify` checks (signature, kid, seq, chain) accepts them all,
            # the originals and the re-sent copies (duplicates, not gaps or forgeries)
            pub = load_public(tmp_path / "agent.pub")
            checker = Checker(SITE, {thumbprint(pub): pub})
            results = [
                checker.check(f"{BASE}/interval", m.encode()) for m in r.head.raw["interval"]
            ]
            assert all(x["ok"] for x in results), [x for x in results if not x["ok"]][:3]

    asyncio.run(main())


# --- fuzz ------------------------------------------------------------------------------

JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
# a version that can never be applied: not a positive integer in range
BAD_VERSION = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**63, max_value=2**90),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
)
# a partial config that can never validate: unknown top-level keys or wrong types
BAD_CONFIG = st.one_of(
    JSONISH.filter(lambda v: not isinstance(v, dict)),
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(
            lambda k: k not in ("contract", "delivery", "mqtt", "devices")
        ),
        JSONISH,
        min_size=1,
        max_size=3,
    ),
    st.fixed_dictionaries(
        {
            "contract": st.fixed_dictionaries(
                {
                    "flow_limit_m3h": st.one_of(
                        # finite only: the signer writes NaN/inf as null, which removes
                        # the limit (a valid change), so they are no bad config
                        st.floats(allow_nan=False, allow_infinity=False).filter(
                            lambda x: not 0 < x <= 1000
                        ),
                        st.text(),
                        st.lists(st.integers(), max_size=2),
                    )
                }
            )
        }
    ),
)
DEEP = st.integers(50, 3000).map(lambda d: "[" * d + "]" * d)
BAD_CMD_NAME = st.one_of(
    st.text(max_size=20).filter(lambda s: s not in ("resend", "poll_now", "rotate_key")), JSONISH
)


@st.composite
def payload(draw: st.DrawFn, op: Signer, good_config: str, good_cmd: str) -> tuple[str, bytes]:
    target = draw(st.sampled_from(["config/set", "cmd"]))
    good = good_config if target == "config/set" else good_cmd
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return target, draw(st.binary(max_size=600))
    if kind == 1:
        return target, good.encode()[: draw(st.integers(0, len(good) - 1))]
    if kind == 2:
        b = bytearray(good.encode())
        # distinct places: two changes of one byte could add up to none (hypothesis found
        # that, and the good message was applied)
        places = st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=5, unique=True)
        for i in draw(places):
            b[i] = (b[i] + draw(st.integers(1, 255))) % 256  # always a change
        return target, bytes(b)
    if kind == 3:
        return target, draw(DEEP).encode()
    now = time.time()
    if target == "config/set":
        body: Any = draw(
            st.one_of(
                st.fixed_dictionaries({"version": BAD_VERSION, "config": JSONISH}),
                st.fixed_dictionaries({"version": st.integers(1, 2**62), "config": BAD_CONFIG}),
                JSONISH,
            )
        )
        env = envelope(SITE, "config", 1, None, now, body)
    else:
        body = draw(
            st.one_of(
                st.fixed_dictionaries({"id": JSONISH, "cmd": BAD_CMD_NAME}),
                st.fixed_dictionaries(
                    {
                        "id": st.text(min_size=1, max_size=20),
                        "cmd": st.just("resend"),
                        "stream": JSONISH,
                        "from_seq": JSONISH,
                        "to_seq": JSONISH,
                    }
                ),
                JSONISH,
            )
        )
        env = envelope(SITE, "cmd", 1, None, now, body)
    if kind == 6:  # hostile envelope fields around a hostile body
        env["ts"] = draw(JSONISH)
        env["site"] = draw(st.one_of(st.just(SITE), JSONISH))
    try:
        return target, op.sign(env).encode()
    except (ValueError, TypeError, OverflowError):
        return target, json.dumps(body, default=str).encode()[:5000]


FUZZ_N = int(os.environ.get("DH_FUZZ_N", "2000"))


def test_fuzz_2000_payloads_never_crash_never_change_config(tmp_path_factory: Any) -> None:
    """The agent and its broker run on a loop in a thread; hypothesis draws one payload per
    example and each is sent and answered before the next (FUZZ_N examples)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    cm = rig(tmp, broker)
    try:
        r: Rig = on_loop(cm.__aenter__())
        cur0 = r.head.bodies("config/current")[-1]
        cfg0 = r.agent.cfg
        good_config = r.config_msg(1, {"contract": {"flow_limit_m3h": 2.0}})
        good_cmd = cmd_message(r.operator, SITE, {"cmd": "poll_now"}, time.time())
        count: dict[str, float] = {"sent": 0, "rejected": 0, "io_s": 0.0}

        async def one(target: str, p: bytes) -> dict[str, Any]:
            sub = "config/ack" if target == "config/set" else "cmd/ack"
            n = len(r.head.bodies(sub))
            await r.send(target, p)
            return await r.ack(sub, n)

        @settings(
            max_examples=FUZZ_N,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(payload(r.operator, good_config, good_cmd))
        def fuzz_one(tp: tuple[str, bytes]) -> None:
            t = time.perf_counter()
            ack = on_loop(one(*tp))
            count["io_s"] += time.perf_counter() - t
            count["sent"] += 1
            if tp[0] == "config/set":
                assert ack["result"] == "rejected", (tp, ack)
            count["rejected"] += ack["result"] == "rejected"

        fuzz_one()
        assert count["sent"] >= FUZZ_N, count
        assert r.agent.remote.version == 0
        assert r.agent.cfg == cfg0
        assert r.head.bodies("config/current")[-1] == cur0
        # still alive and answering
        ok = on_loop(
            one("cmd", cmd_message(r.operator, SITE, {"cmd": "poll_now"}, time.time()).encode())
        )
        assert ok["result"] == "done"
        print(
            f"fuzz: {count['sent']} payloads, {count['rejected']} rejected, "
            f"{count['io_s']:.1f} s I/O"
        )
    finally:
        on_loop(cm.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        broker.stop()


def test_rotate_key_announced_under_the_old_key_then_used(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def main() -> None:
        async with rig(tmp_path, mosquitto) as r:
            old_kid = r.agent.signer.kid
            n = len(r.head.bodies("cmd/ack"))
            await r.send("cmd", cmd_message(r.operator, SITE, {"cmd": "rotate_key"}, time.time()))
            ack = await r.ack("cmd/ack", n)
            assert ack["result"] == "done" and ack["new_kid"] != old_kid
            await r.wait(lambda: any(b["kind"] == "key_rotated" for b in r.head.bodies("event")))
            i = [b["kind"] for b in r.head.bodies("event")].index("key_rotated")
            raw = r.head.raw["event"][i]
            assert verify(raw, r.head.keys)["body"]["new_kid"] == ack["new_kid"]  # old key
            new_pub = serialization.load_pem_public_key(
                r.head.bodies("event")[i]["new_pubkey"].encode()
            )
            assert isinstance(new_pub, Ed25519PublicKey) and thumbprint(new_pub) == ack["new_kid"]
            # the next interval record is signed by the new key only
            n_int = len(r.head.raw.get("interval", []))
            await r.wait(lambda: len(r.head.raw.get("interval", [])) > n_int, 20)
            nxt = r.head.raw["interval"][n_int]
            with pytest.raises(JWSError):
                verify(nxt, {old_kid: r.head.keys[old_kid]})
            assert verify(nxt, {ack["new_kid"]: new_pub})["stream"] == "interval"
        # after a restart the rotated key is still the one in use
        async with rig(tmp_path, mosquitto) as r2:
            assert r2.agent.signer.kid == ack["new_kid"]

    asyncio.run(main())
