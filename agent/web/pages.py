"""The pages as HTML. Pure: plain data (the live snapshot, records, events, the advice,
the configured devices) in, markup out. Every text from data is escaped; nothing secret
is ever passed in (the page gets the config's public parts only)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from agent.web import svg

NAV = (("/", "Overview"), ("/plots", "Plots 48 h"), ("/events", "Events"),
       ("/advice", "Contract"), ("/devices", "Devices"))  # fmt: skip


def e(v: Any) -> str:
    return escape(str(v), quote=True)


def when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def ago(t: Any, now: float) -> str:
    if not isinstance(t, int | float):
        return "never"
    d = max(0.0, now - t)
    if d < 120:
        return f"{d:.0f} s ago"
    if d < 7200:
        return f"{d / 60:.0f} min ago"
    return f"{d / 3600:.1f} h ago"


def num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"


def page(title: str, site: str, current: str, body: str, refresh_s: int | None = None) -> bytes:
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{e(label)}</a>'
        for href, label in NAV
    )
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'{meta}<title>{e(title)} · {e(site)}</title><link rel=stylesheet href="/style.css">'
        f"</head><body><header><h1>{e(site)}</h1><nav>{nav}</nav></header>"
        f"<main><h2>{e(title)}</h2>{body}</main></body></html>"
    ).encode()


def dl(items: Sequence[tuple[str, str]], cls: str = "") -> str:
    rows = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="kv {cls}">{rows}</dl>'


def badge(word: str) -> str:
    return f'<span class="badge {e(word)}">{e(word)}</span>'


# --- overview -----------------------------------------------------------------------------


def agent_line(snap: Mapping[str, Any] | None, state: str, now: float) -> str:
    if snap is None or state == "missing":
        return '<p class="state missing" id="agent-state">Agent not running (no live data).</p>'
    txt = "live" if state == "live" else "STALE: the agent has not written for a while"
    return (
        f'<p class="state {e(state)}" id="agent-state">Agent {e(txt)} '
        f"(written {e(ago(snap.get('written'), now))}).</p>"
    )


def device_card(name: str, role: str, d: Mapping[str, Any] | None, now: float) -> str:
    if d is None:
        return (
            f'<section class="device" data-device="{e(name)}"><h3>{e(name)} '
            f'<small>{e(role)}</small></h3><p class="muted">no live data</p></section>'
        )
    rows = []
    for k, v in (d.get("values") or {}).items():
        q = str(v.get("quality", ""))
        rows.append(
            f'<tr data-value="{e(k)}" data-quality="{e(q)}"><th>{e(k)}</th>'
            f'<td class="num">{e(num(v.get("value"), 5))}</td><td>{e(v.get("unit", ""))}</td>'
            f"<td>{badge(q) if q else ''}</td></tr>"
        )
    table = f'<table class="values">{"".join(rows)}</table>' if rows else ""
    err = f'<p class="error">{e(d["error"])}</p>' if d.get("error") else ""
    c = d.get("counters") or {}
    health = str(d.get("health", "?"))
    return (
        f'<section class="device" data-device="{e(name)}" data-health="{e(health)}">'
        f"<h3>{e(name)} <small>{e(role)}</small> {badge(health)}</h3>"
        f'<p class="muted">last reading {e(ago(d.get("ts"), now))}; polls {e(c.get("polls", 0))}, '
        f"failed {e(c.get('polls_failed', 0))}</p>{err}{table}</section>"
    )


def limiter_block(lim: Mapping[str, Any] | None, contract: Mapping[str, Any]) -> str:
    if not lim or not lim.get("active"):
        return (
            '<section id="limiter" data-state="off"><h3>Limiter</h3>'
            "<p>no limit configured</p></section>"
        )
    state = "limiting" if lim.get("limiting") else "watching"
    if lim.get("failsafe"):
        state = "failsafe"
    used, budget = lim.get("period_volume_m3"), lim.get("budget_m3")
    bar = ""
    if isinstance(used, int | float) and isinstance(budget, int | float) and budget > 0:
        pct = min(100.0, 100.0 * used / budget)
        bar = (
            f'<svg class="bar" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
            f'aria-label="budget used {pct:.0f} %"><rect class="bar-bg" width="100" height="8"/>'
            f'<rect class="bar-fg" width="{pct:.1f}" height="8"/></svg>'
        )
    items = [
        ("state", badge(state)),
        ("enforce", e("on" if lim.get("enforce") else "off (report only)")),
        ("contract flow", f"{e(num(contract.get('flow_limit_m3h')))} m3/h"),
        ("contract power", f"{e(num(contract.get('power_limit_kw')))} kW"),
        ("period", f"{e(when(lim.get('period_start')))} → {e(when(lim.get('period_end')))}"),
        ("volume used", f"{e(num(used, 4))} of {e(num(budget, 4))} m3 {bar}"),
        ("energy used", f"{e(num(lim.get('period_energy_kwh'), 5))} kWh"),
        ("allowed flow now", f"{e(num(lim.get('allowed_flow_m3h'), 4))} m3/h"),
        ("valve limit", f"{e(num(lim.get('last_write_pct'), 4))} %"),
    ]
    return f'<section id="limiter" data-state="{e(state)}"><h3>Limiter</h3>{dl(items)}</section>'


def uplink_block(up: Mapping[str, Any] | None, now: float) -> str:
    if not up:
        return (
            '<section id="uplink" data-connected="unknown"><h3>Uplink</h3><p>unknown</p></section>'
        )
    conn = bool(up.get("connected"))
    backlog = up.get("backlog") or {}
    bl = ", ".join(f"{e(k)} {e(v)}" for k, v in sorted(backlog.items())) or "empty"
    items = [
        ("broker", badge("connected" if conn else "disconnected")),
        ("backlog", f'<span id="backlog">{bl}</span>'),
        ("last publish", e(ago(up.get("last_publish"), now))),
    ]
    return (
        f'<section id="uplink" data-connected="{str(conn).lower()}"><h3>Uplink</h3>'
        f"{dl(items)}</section>"
    )


def alarms_block(alarms: Sequence[Mapping[str, Any]], now: float) -> str:
    if not alarms:
        return '<section id="alarms"><h3>Open alarms</h3><p>none</p></section>'
    rows = "".join(
        f"<li>{badge('alarm')} {e(a.get('kind'))} on {e(a.get('device'))} since "
        f"{e(when(a.get('since')))}</li>"
        for a in alarms
    )
    return f'<section id="alarms"><h3>Open alarms</h3><ul>{rows}</ul></section>'


def overview(
    site: str,
    devices: Sequence[tuple[str, str]],
    snap: Mapping[str, Any] | None,
    state: str,
    now: float,
    contract: Mapping[str, Any],
    refresh_s: int,
) -> bytes:
    s = snap or {}
    live = s.get("devices") or {}
    cards = "".join(device_card(n, r, live.get(n), now) for n, r in devices)
    facts = dl([
        ("clock", badge("synced" if s.get("clock_synced") else "not synced")),
        ("boot", e(s.get("boot", "–"))),
        ("config version", e(s.get("config_version", "–"))),
        ("period", f"{e(s.get('period_s', '–'))} s"),
        ("now", e(when(now))),
    ], "facts")  # fmt: skip
    body = (
        agent_line(snap, state, now)
        + facts
        + f'<div class="grid" id="devices">{cards}</div>'
        + '<div class="grid">'
        + limiter_block(s.get("limiter"), s.get("contract") or contract)
        + uplink_block(s.get("uplink"), now)
        + alarms_block(s.get("alarms") or [], now)
        + "</div>"
    )
    return page("Overview", site, "/", body, refresh_s)


# --- other pages ------------------------------------------------------------------------------


def plots_page(site: str, plots: Sequence[svg.Plot], t0: float, t1: float, count: int) -> bytes:
    parts = [
        f'<p class="muted">{e(when(t0))} → {e(when(t1))}, {count} interval records. '
        'Shaded: <span class="key no_data">no data</span>, hatched: '
        '<span class="key interpolated">interpolated</span>; dashed lines: contract and '
        "delivery terms.</p>"
    ]
    for i, p in enumerate(plots):
        legend = "".join(f'<span class="key {e(s.css)}">{e(s.label)}</span>' for s in p.series)
        legend += "".join(f'<span class="key {e(r.css)}">{e(r.label)} {r.value:g}</span>'
                          for r in p.refs)  # fmt: skip
        parts.append(
            f'<figure class="chart"><figcaption>{e(p.title)} [{e(p.unit)}] {legend}'
            f"</figcaption>{svg.render(p, f'p{i}')}</figure>"
        )
    if not plots:
        parts.append("<p>No interval records in the last 48 hours.</p>")
    return page("Plots, last 48 hours", site, "/plots", "".join(parts))


EVENT_SKIP = ("kind", "time", "device")


def events_page(site: str, events: Sequence[Mapping[str, Any]], days: int) -> bytes:
    rows = []
    for ev in events:
        extra = ", ".join(f"{e(k)}={e(v)}" for k, v in ev.items() if k not in EVENT_SKIP)
        rows.append(
            f'<tr data-kind="{e(ev.get("kind"))}"><td>{e(ev.get("time", ""))}</td>'
            f"<td>{e(ev.get('kind'))}</td><td>{e(ev.get('device', ''))}</td>"
            f'<td class="small">{extra}</td></tr>'
        )
    table = (
        '<table class="events"><tr><th>time (UTC)</th><th>event</th><th>device</th>'
        f"<th>details</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p>No events.</p>"
    )
    head = f'<p class="muted">The last {days} days, newest first ({len(rows)}).</p>'
    return page("Events", site, "/events", head + table)


def advice_page(site: str, review: Mapping[str, Any] | None, device: str | None) -> bytes:
    if review is None or device is None:
        return page("Contract advice", site, "/advice", "<p>No heat meter configured.</p>")
    ratio = review.get("flow_ratio")
    verdict = ""
    if isinstance(ratio, int | float):
        if ratio > 1.0:
            verdict = "The largest hourly flow exceeded the contracted flow."
        elif ratio < 0.7:
            verdict = "The contracted flow is well above what was used: it could be lowered."
        else:
            verdict = "The contracted flow fits the largest hourly flow."
    items = [
        ("heat meter", e(device)),
        ("complete hours", e(review.get("hours", 0))),
        ("of them interpolated", e(review.get("hours_interpolated", 0))),
        ("largest hourly flow",
         f"{e(num(review.get('max_flow_m3h'), 4))} m3/h ({e(review.get('max_flow_hour') or '–')})"),
        ("contracted flow", f"{e(num(review.get('flow_limit_m3h'), 4))} m3/h"),
        ("flow ratio", e(num(ratio, 3))),
        ("largest hourly power",
         f"{e(num(review.get('max_power_kw'), 4))} kW ({e(review.get('max_power_hour') or '–')})"),
        ("contracted power", f"{e(num(review.get('power_limit_kw'), 4))} kW"),
        ("power ratio", e(num(review.get("power_ratio"), 3))),
    ]  # fmt: skip
    body = (
        '<p class="muted">The largest hourly flow and power of the last 12 months against '
        f'the contract.</p><section id="advice">{dl(items)}<p>{e(verdict)}</p></section>'
    )
    return page("Contract advice", site, "/advice", body)


def devices_page(
    site: str, devices: Sequence[Mapping[str, Any]], snap: Mapping[str, Any] | None
) -> bytes:
    live = (snap or {}).get("devices") or {}
    parts = []
    for d in devices:
        name = str(d["name"])
        ld = live.get(name) or {}
        ident = ld.get("identity")
        id_txt = ", ".join(f"{e(k)} {e(v)}" for k, v in ident.items()) if ident else "not reported"
        items = [(k, e(v)) for k, v in d.items() if k != "name"]
        items += [("identity", id_txt), ("health", badge(str(ld.get("health", "unknown"))))]
        if ld.get("error"):
            items.append(("last error", e(ld["error"])))
        counters = "".join(
            f"<tr><th>{e(k)}</th><td class=num>{e(v)}</td></tr>"
            for k, v in (ld.get("counters") or {}).items()
        )
        parts.append(
            f'<section class="device" data-device="{e(name)}"><h3>{e(name)}</h3>{dl(items)}'
            f'<table class="counters">{counters}</table></section>'
        )
    return page("Devices", site, "/devices", f'<div class="grid">{"".join(parts)}</div>')
