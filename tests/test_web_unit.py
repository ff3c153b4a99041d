"""The page's pure parts: request parsing, basic auth, plots, pages (escaping), the
systemd socket hand-over. No I/O."""

from __future__ import annotations

import base64
import os
import socket

import pytest

from agent.timefmt import rfc3339
from agent.web import charts, pages, svg
from agent.web.http import (
    SECURITY_HEADERS,
    HttpError,
    Response,
    check_auth,
    parse_head,
    render,
)
from agent.web.serve import split_listen, systemd_sockets

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def head(text: str) -> list[bytes]:
    return [ln.encode("latin-1") for ln in text.split("\r\n")]


def test_parse_head_good() -> None:
    r = parse_head(head("GET /plots?hours=2 HTTP/1.1\r\nHost: x\r\nX-A:  b "))
    assert r.method == "GET" and r.path == "/plots" and r.query == {"hours": ["2"]}
    assert r.headers == {"host": "x", "x-a": "b"}
    assert parse_head(head("HEAD / HTTP/1.0")).method == "HEAD"
    assert parse_head(head("GET /%64evices HTTP/1.1")).path == "/devices"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", 400),
        ("GET / HTTP/1.1 extra", 400),
        ("GET / FTP/1.0", 400),
        ("GET / HTTP/3", 505),
        ("G(T / HTTP/1.1", 400),
        ("PUT / HTTP/1.1", 405),
        ("OPTIONS * HTTP/1.1", 405),
        ("GET * HTTP/1.1", 400),
        ("GET //evil.example/ HTTP/1.1", 400),
        ("GET /a/../b HTTP/1.1", 400),
        ("GET /%2e%2e/x HTTP/1.1", 400),
        ("GET /%00 HTTP/1.1", 400),
        ("GET / HTTP/1.1\r\nbad header", 400),
        ("GET / HTTP/1.1\r\nX: a\x01b", 400),
        ("GET / HTTP/1.1\r\nContent-Length: -1", 400),
        ("GET / HTTP/1.1\r\nContent-Length: 10", 413),
        ("GET / HTTP/1.1\r\nTransfer-Encoding: chunked", 501),
    ],
)
def test_parse_head_refuses(text: str, code: int) -> None:
    with pytest.raises(HttpError) as e:
        parse_head(head(text) if text else [])
    assert e.value.status == code
    if code == 405:
        assert ("Allow", "GET, HEAD") in e.value.headers


def test_parse_head_non_ascii() -> None:
    with pytest.raises(HttpError) as e:
        parse_head([b"GET /\xff HTTP/1.1"])
    assert e.value.status == 400


def auth(user: str, pw: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


def test_check_auth() -> None:
    assert check_auth(auth("tech", "pw:with:colons"), "tech", "pw:with:colons")
    assert check_auth(auth("tech", "pä"), "tech", "pä")
    assert not check_auth(None, "tech", "pw")
    assert not check_auth(auth("tech", "PW"), "tech", "pw")
    assert not check_auth(auth("other", "pw"), "tech", "pw")
    assert not check_auth("Basic " + base64.b64encode(b"techpw").decode(), "tech", "pw")
    assert not check_auth("Basic ***", "tech", "pw")
    assert not check_auth("Bearer " + auth("tech", "pw")[6:], "tech", "pw")


def test_render_carries_security_headers() -> None:
    out = render(Response(200, b"hi"), head_only=False)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    for k, v in SECURITY_HEADERS:
        assert f"{k}: {v}\r\n".encode() in out
    h = render(Response(200, b"hi"), head_only=True)
    assert h.endswith(b"\r\n\r\n") and b"Content-Length: 2\r\n" in h and b"hi" not in h


def test_downsample_and_ticks() -> None:
    pts: list[tuple[float, float | None]] = [(float(t), 1.0) for t in range(100)]
    assert svg.downsample(pts, 0, 100, 200) == pts
    few = svg.downsample(pts, 0, 100, 10)
    assert len(few) == 10 and all(v == 1.0 for _, v in few)
    gaps = svg.downsample([(float(t), None) for t in range(100)], 0, 100, 10)
    assert all(v is None for _, v in gaps)
    assert svg.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert svg.nice_ticks(5, 5) == [5]


def rec(hour: int, **vals: object) -> dict[str, object]:
    start = T0 + hour * 3600
    return {"start": rfc3339(start), "end": rfc3339(start + 3600), **vals}


def test_device_plots_points_gaps_spans() -> None:
    recs = [rec(h, flow_avg_m3h=1.0 + h, supply_avg_c=80.0, flags=[]) for h in range(10)]
    recs[3] = rec(3, flow_avg_m3h=1.0, supply_avg_c=None, flags=["no_data"])
    recs[6]["flags"] = ["interpolated"]
    t0 = charts.rec_time(recs[0], "start") or 0.0
    plots = charts.device_plots("hm1", "heat_meter", recs, t0, t0 + 10 * 3600,
                                {"flow_limit_m3h": 2.5}, {"supply_min_c": 65.0})  # fmt: skip
    flow, power, temps = plots
    assert len(flow.series[0].points) == 10
    assert [r.value for r in flow.refs] == [2.5] and power.refs == []
    assert [s.kind for s in flow.spans] == ["no_data", "interpolated"]
    out = svg.render(temps, "p0")
    # the missing supply value breaks the line in two: 3 + 6 points
    assert 'data-series="supply_avg_c" data-points="9"' in out
    assert out.count('data-n="3"') == 1 and out.count('data-n="6"') == 1
    assert out.count('data-kind="no_data"') == 1 and "<script" not in out
    assert charts.device_plots("a", "actuator", recs, t0, t0 + 36000, {}, {}) == []
    dp = charts.device_plots("dp1", "dp_sensor", [rec(1, dp_min_kpa=50.0)], t0, t0 + 36000,
                             {}, {"dp_min_kpa": 60})  # fmt: skip
    assert 'data-points="1"' in svg.render(dp[0], "p1") and "<circle" in svg.render(dp[0], "p1")


def test_pages_escape_everything() -> None:
    evil = '<script>alert("x")</script>'
    snap = {
        "devices": {
            "hm1": {"health": evil, "ts": 1.0, "error": evil,
                    "values": {"flow_m3h": {"value": 1.0, "unit": evil, "quality": evil}}},
        },
        "alarms": [{"kind": evil, "device": evil, "since": 1.0}],
        "uplink": {"connected": True, "backlog": {evil: 1}},
    }  # fmt: skip
    html = pages.overview(evil, [("hm1", evil)], snap, "live", 2.0, {}, 10).decode()
    html += pages.events_page(evil, [{"kind": evil, "time": evil, evil: evil}], 7).decode()
    html += pages.devices_page(evil, [{"name": "hm1", "role": evil}], snap).decode()
    assert "<script" not in html and "&lt;script&gt;" in html


def test_split_listen() -> None:
    assert split_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_listen("[::1]:80") == ("::1", 80)
    for bad in ("8080", "host:", "host:0", "host:99999", ":80"):
        with pytest.raises(ValueError):
            split_listen(bad)


def test_systemd_sockets() -> None:
    assert systemd_sockets({}, 1) == []
    assert systemd_sockets({"LISTEN_PID": "2", "LISTEN_FDS": "1"}, 1) == []
    assert systemd_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "x"}, 1) == []
    # a real hand-over: a listening socket placed at fd 3
    lst = socket.create_server(("127.0.0.1", 0))
    saved = os.dup(3) if _fd_open(3) else None
    try:
        os.dup2(lst.fileno(), 3)
        got = systemd_sockets({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}, os.getpid())
        assert len(got) == 1 and got[0].getsockname() == lst.getsockname()
        got[0].detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        lst.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
