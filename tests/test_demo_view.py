"""The demo's head-end and terminal view, without I/O: the head-end checks with
``dh-agent verify``'s checker, the view draws the agent's snapshot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from agent import snapshot
from agent.demo import PREFIX, SITE, HeadEnd, render
from agent.jws import Signer, chain_hash, envelope
from agent.keys import keygen, load_private
from drivers.types import Reading, Value


def _head(tmp_path: Path) -> tuple[HeadEnd, Signer]:
    keygen(tmp_path, "agent")
    return HeadEnd(0, tmp_path / "agent.pub", plain=False), Signer(
        load_private(tmp_path / "agent.key")
    )


def _interval(signer: Signer, seq: int, prev: str | None) -> str:
    body = {"device": "hm1", "role": "heat_meter", "start": "t", "energy_kwh": 1.5}
    return signer.sign(envelope(SITE, "interval", seq, prev, 1e9 + seq, body))


def test_head_end_counts_a_chain_and_rejects_a_broken_link(tmp_path: Path) -> None:
    head, signer = _head(tmp_path)
    topic = f"{PREFIX}/{SITE}/interval"
    first = _interval(signer, 1, None)
    head.check(topic, first.encode())
    head.check(topic, _interval(signer, 2, chain_hash(first)).encode())
    assert (head.ok, head.bad, head.verified_intervals) == (2, 0, 2)
    assert head.records[-1]["energy_kwh"] == 1.5
    head.check(topic, _interval(signer, 3, "0" * 43).encode())  # prev is not seq 2's hash
    assert (head.ok, head.bad) == (2, 1)
    assert "chain_broken" in head.lines[-1]


def test_head_end_rejects_a_foreign_signature_and_a_wrong_site(tmp_path: Path) -> None:
    head, own = _head(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, foreign = _head(other)
    topic = f"{PREFIX}/{SITE}/interval"
    head.check(topic, _interval(foreign, 1, None).encode())
    wrong_site = own.sign(envelope("elsewhere", "interval", 1, None, 1e9, {}))
    head.check(topic, wrong_site.encode())
    assert (head.ok, head.bad) == (0, 2)
    assert "unknown_kid" in head.lines[0] and "wrong_site" in head.lines[1]


def test_view_draws_the_snapshot(tmp_path: Path) -> None:
    head, _ = _head(tmp_path)
    r = Reading(
        device="hm1",
        role="heat_meter",
        ts=1e9,
        mono=1.0,
        synced=True,
        ok=True,
        values={"flow_m3h": Value(2.345678, "m3/h")},
    )
    view = snapshot.DeviceView("hm1", "heat_meter", "tcp", "sim", "online", last=r)
    snap = snapshot.build_snapshot(
        site=SITE, wall=1e9, mono=1.0, clock_synced=True, boot=1, pid=1, config_version=0,
        period_s=60, contract={"flow_limit_m3h": 2.5}, delivery={}, devices=[view],
        limiter={"limiting": True}, alarms=[], uplink=None, last_records={},
    )  # fmt: skip
    console = Console(record=True, width=160)
    console.print(render(snap, head, "mosquitto", 0.0))
    text = console.export_text()
    assert "hm1" in text and "flow_m3h 2.346" in text and "online" in text
    assert "limit 2.5 m3/h" in text and "LIMITING" in text
