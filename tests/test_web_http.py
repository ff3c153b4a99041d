"""`dh-agent serve` over real HTTP: the pages from a known store and snapshot, read-only,
security headers, basic auth, and bad requests (each a clear 4xx; the server keeps
serving)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.rig import BIN, free_port, wait_until
from tests.support.web import SITE, Server, SiteData, get, make_site, raw, serve, status_of


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteData:
    return make_site(tmp_path_factory.mktemp("web-site"))


@pytest.fixture(scope="module")
def server(site: SiteData) -> Iterator[Server]:
    with serve(site.config) as s:
        yield s


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.name.startswith("agent.db")
    }


def test_overview_lists_every_device_with_live_values(server: Server) -> None:
    code, hdrs, body = get(server.port, "/")
    assert code == 200 and hdrs["content-type"].startswith("text/html")
    for name in ("hm1", "dp1", "act1"):
        assert f'data-device="{name}"' in body
    assert 'data-device="hm1" data-health="ok"' in body
    assert 'data-device="dp1" data-health="degraded"' in body
    # values with their quality and unit
    assert re.search(r'data-value="flow_m3h" data-quality="good">.*?2\.345.*?m3/h', body)
    assert re.search(r'data-value="power_kw" data-quality="implausible">.*?999\.5', body)
    assert re.search(r'data-value="dp_kpa" data-quality="good">.*?87\.5.*?kPa', body)
    assert 'id="limiter" data-state="limiting"' in body and "42.5 %" in body
    assert 'id="uplink" data-connected="true"' in body
    assert re.search(r'id="backlog">event 2, interval 5<', body)
    assert "dp_low on dp1" in body
    assert re.search(r'id="agent-state" data-written="[\d.]+">Agent live', body)
    assert '<meta http-equiv="refresh"' in body


def test_security_headers_on_every_answer(server: Server) -> None:
    for path in ("/", "/plots", "/style.css", "/nope"):
        _, h, _ = get(server.port, path)
        assert "default-src 'none'" in h["content-security-policy"]
        assert "frame-ancestors 'none'" in h["content-security-policy"]
        assert h["x-frame-options"] == "DENY"
        assert h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-store"


def test_no_external_resources(server: Server) -> None:
    for path in ("/", "/plots", "/events", "/advice", "/devices"):
        code, _, body = get(server.port, path)
        assert code == 200, path
        assert "<script" not in body and "http://" not in body and "https://" not in body
        assert 'style="' not in body  # the CSP allows no inline style


def test_plots_have_one_point_per_record(server: Server, site: SiteData) -> None:
    code, _, body = get(server.port, "/plots")
    assert code == 200
    pts = dict(re.findall(r'data-series="(\w+)" data-points="(\d+)"', body))
    assert int(pts["flow_avg_m3h"]) == site.heat_in_window
    assert int(pts["power_avg_kw"]) == site.heat_in_window
    # the no_data record has no temperatures: one point fewer, and a visible span
    assert int(pts["supply_avg_c"]) == site.heat_in_window - 1
    assert int(pts["dp_min_kpa"]) == site.heat_in_window
    # each heat-meter plot marks one no_data and one interpolated period
    assert body.count('data-kind="no_data"') == 3
    assert body.count('data-kind="interpolated"') == 3
    assert 'data-ref="contract" data-value="2.5"' in body
    assert 'data-ref="dp min" data-value="60"' in body
    assert 'data-ref="supply min" data-value="65"' in body


def test_plots_shorter_span(server: Server, site: SiteData) -> None:
    now = time.time()
    code, _, body = get(server.port, "/plots?hours=2")
    want = sum(1 for k in range(1, 61) if site.now_hour - k * 3600 + 1800 >= now - 7200)
    assert code == 200
    assert f'data-series="flow_avg_m3h" data-points="{want}"' in body


def test_events_advice_devices(server: Server) -> None:
    _, _, ev = get(server.port, "/events")
    assert 'data-kind="dp_low"' in ev and 'data-kind="flow_limit_enforced"' in ev
    assert "old_event" not in ev  # 30 days old
    _, _, adv = get(server.port, "/advice")
    # the largest hour: 2.0 + 60/100 m3, against the contracted 2.5 m3/h
    assert "largest hourly flow" in adv and "2.6 m3/h (" in adv and "1.04" in adv
    _, _, dev = get(server.port, "/devices")
    assert "HM-0042" in dev and "127.0.0.1:5020" in dev and "polls_failed" in dev


def test_head_has_no_body(server: Server) -> None:
    ans = raw(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = ans.partition(b"\r\n\r\n")
    assert status_of(ans) == 200 and body == b"" and b"Content-Length:" in head


BAD = [
    (b"GET /nope HTTP/1.1\r\n\r\n", 404),
    (b"GET /plots/../../etc/passwd HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
    (b"DELETE / HTTP/1.1\r\n\r\n", 405),
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n", 400),
    (b"GET http://evil.example/ HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /%ff%fe HTTP/1.1\r\n\r\n", 400),
    (b"GET /plots?hours=1000 HTTP/1.1\r\n\r\n", 400),
    (b"GET /plots?hours=nan HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"c" * 4000 + b"\r\n" * 1 + b"X: 1\r\n" * 5
     + b"X-More: " + b"d" * 4000 + b"\r\n" + b"X-Even: " + b"e" * 4000 + b"\r\n"
     + b"X-Last: " + b"f" * 4000 + b"\r\n" + b"X-End: " + b"g" * 4000 + b"\r\n\r\n", 431),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "code"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_a_clear_4xx(server: Server, request_bytes: bytes, code: int) -> None:
    ans = raw(server.port, request_bytes)
    assert status_of(ans) == code, ans[:200]
    assert b"Traceback" not in ans
    assert get(server.port, "/")[0] == 200  # still serving


def test_slow_and_silent_clients_time_out_and_the_server_keeps_serving(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), 30) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        with socket.create_connection(("127.0.0.1", server.port), 30):
            pass  # connects and closes without a byte
        assert get(server.port, "/")[0] == 200  # served while the slow one hangs
        t0 = time.monotonic()
        ans = slow.recv(4096)
        assert status_of(ans) == 408, ans
        assert time.monotonic() - t0 < 25
    assert server.proc.poll() is None
    assert get(server.port, "/")[0] == 200


def test_the_store_is_never_written(site: SiteData, server: Server) -> None:
    before = digest(site.folder)
    for path in ("/", "/plots", "/events", "/advice", "/devices"):
        assert get(server.port, path)[0] == 200
    assert digest(site.folder) == before


def test_without_snapshot_the_devices_are_listed_as_not_running(tmp_path: Path) -> None:
    s = make_site(tmp_path / "a")
    (s.folder / "live.json").unlink()
    with serve(s.config) as srv:
        code, _, body = get(srv.port, "/")
        assert code == 200 and "Agent not running" in body
        for name in ("hm1", "dp1", "act1"):
            assert f'data-device="{name}"' in body
        (s.folder / "live.json").write_text('{"v": 1, "devices": {')  # half-written
        assert get(srv.port, "/")[0] == 200
        (s.folder / "live.json").write_text(
            json.dumps({"v": 1, "site": SITE, "written": 1000, "devices": {}})
        )
        assert "STALE" in get(srv.port, "/")[2]


def basic(user: str, pw: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode() + "\r\n"


def test_basic_auth(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "web.pw").write_text(secret + "\n")
    s = make_site(tmp_path / "a", web='[web]\npassword_file = "web.pw"\nuser = "tech"\n')
    with serve(s.config) as srv:
        code, h, _ = get(srv.port, "/")
        assert code == 401 and h["www-authenticate"].startswith('Basic realm="dh-agent"')
        for wrong in (basic("tech", "nope"), basic("root", secret), "Authorization: Bearer x\r\n",
                      "Authorization: Basic !!!\r\n", basic("tech", secret + "x")):  # fmt: skip
            assert get(srv.port, "/", wrong)[0] == 401, wrong
        for path in ("/", "/plots", "/events", "/advice", "/devices", "/style.css"):
            code, _, body = get(srv.port, path, basic("tech", secret))
            assert code == 200, path
            assert secret not in body
        assert get(srv.port, "/nope", basic("tech", secret))[0] == 404
        assert srv.proc.poll() is None


ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate not installed")
def test_socket_activation_serves_and_exits_when_idle(tmp_path: Path) -> None:
    """As dh-agent-web.socket runs it: systemd listens, starts the server on the first
    connection with the socket as fd 3 (LISTEN_FDS/LISTEN_PID); the server exits after
    [web] idle_exit_s without a request."""
    assert ACTIVATE is not None
    s = make_site(tmp_path / "a", web="[web]\nidle_exit_s = 3\n")
    port = free_port()
    log = (tmp_path / "activate.log").open("wb")
    proc = subprocess.Popen(
        [ACTIVATE, "-l", f"127.0.0.1:{port}", str(BIN / "dh-agent"), "serve",
         "--config", str(s.config)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_until(lambda: can_connect_raw(port), 30)
        code, _, body = get(port, "/")
        assert code == 200 and 'data-device="hm1"' in body
        assert get(port, "/nope")[0] == 404
        assert proc.wait(30) == 0  # idle for 3 s: exits by itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
    text = (tmp_path / "activate.log").read_text()
    assert "idle for" in text and "Traceback" not in text, text


def can_connect_raw(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True
