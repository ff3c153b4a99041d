"""`dh-agent` command line (contract section 1): the parser, one ``_add_<cmd>_parser`` per
subcommand, and ``main``, which hands the parsed arguments to the subcommand's handler
(``agent.cli_commands``: thin edges over the modules that do the work; imports are lazy so a
quick command starts fast)."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli_commands import HANDLERS
from agent.timefmt import parse_time

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _iso(s: str) -> float:
    t = parse_time(s)
    if t is None:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {s!r}")
    return t


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``argv`` naming a subcommand, the parser with only that
    subcommand in it. argparse looks up a translation of every help text as it is added
    (gettext's file search): 10-15 ms for all twelve subcommands, at every start of the
    agent before its first publish. Help, and an unknown subcommand, get the whole."""
    p = argparse.ArgumentParser(prog="dh-agent", description="District-heating substation agent")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="log level (default: the config's [log] level, else info)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    only = _subcommand_of(argv) if argv is not None else None
    for name, add in _SUBCOMMANDS.items():
        if only is None or name == only:
            add(sub)
    return p


def _subcommand_of(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not an option or the value of
    ``--log-level``), if it is one of ours and no help is asked for before it."""
    words = iter(argv)
    for w in words:
        if w in ("-h", "--help"):  # the help of the whole command
            return None
        if w == "--log-level":
            next(words, None)
        elif not w.startswith("-"):
            return w if w in _SUBCOMMANDS else None
    return None


def _add_run_parser(sub: Subparsers) -> None:
    s = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    s.add_argument("--config", required=True, type=Path)


def _add_check_config_parser(sub: Subparsers) -> None:
    s = sub.add_parser("check-config", help="validate a config; exit 0 valid, 2 invalid")
    s.add_argument("--config", required=True, type=Path)


def _add_poll_parser(sub: Subparsers) -> None:
    s = sub.add_parser("poll", help="read every device once, one JSON object per device")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--once", action="store_true", required=True)


def _add_keygen_parser(sub: Subparsers) -> None:
    s = sub.add_parser("keygen", help="write NAME.key (Ed25519, PKCS#8, 0600) and NAME.pub")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--name", default="agent")
    s.add_argument("--force", action="store_true", help="overwrite existing keys")


def _add_sign_parser(sub: Subparsers) -> None:
    s = sub.add_parser("sign", help="operator side: print a signed config/set or cmd message")
    s.add_argument("--key", required=True, type=Path)
    s.add_argument("--site", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config-file", type=Path, help="TOML or JSON partial config")
    g.add_argument("--command", help='command body as JSON, e.g. \'{"cmd": "poll_now"}\'')
    s.add_argument("--version", type=int, help="config version (with --config-file)")
    s.add_argument("--seq", type=int, default=None, help="envelope seq (default: time-based)")


def _add_verify_parser(sub: Subparsers) -> None:
    s = sub.add_parser("verify", help="head-end side: verify every message of a site")
    s.add_argument("--mqtt", required=True, help="mqtt://HOST:PORT")
    s.add_argument("--site", required=True)
    s.add_argument("--pubkey", required=True, type=Path, action="append")
    s.add_argument(
        "--operator-pubkey",
        type=Path,
        action="append",
        default=[],
        help="operator key: checks config/set and cmd (never accepted for agent data)",
    )
    s.add_argument("--seconds", type=float, default=None)
    s.add_argument("--topic-prefix", default="dh/v1")


def _add_export_parser(sub: Subparsers) -> None:
    s = sub.add_parser("export", help="stored interval records of a time range")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--from", dest="start", required=True, type=_iso)
    s.add_argument("--to", dest="end", required=True, type=_iso)
    s.add_argument("--format", choices=["csv", "json"], default="csv")
    s.add_argument("--device", default=None, help="only this device's records")


def _add_status_parser(sub: Subparsers) -> None:
    s = sub.add_parser("status", help="short summary from the local store")
    s.add_argument("--config", required=True, type=Path)


def _add_serve_parser(sub: Subparsers) -> None:
    s = sub.add_parser("serve", help="the technician's read-only web page")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--listen", default=None, help="HOST:PORT (default: [web] listen)")
    s.add_argument("--idle-exit-s", type=float, default=None, help="exit after this idle time")


def _add_scan_parser(sub: Subparsers) -> None:
    s = sub.add_parser("scan", help="list the meters answering on a wired M-Bus line")
    s.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    s.add_argument("--baudrate", type=int, choices=[300, 2400, 9600], default=2400)
    s.add_argument("--secondary", action="store_true", help="secondary (wildcard) search")
    s.add_argument("--max-address", type=int, default=250, help="primary sweep 0..N")
    s.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="reply timeout (default: 330 bit times + 50 ms)",
    )


def _add_customer_parser(sub: Subparsers) -> None:
    s = sub.add_parser("customer", help="the customer's read-only Modbus TCP server (own process)")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--listen", default=None, help="HOST:PORT (default: customer.listen)")


def _add_demo_parser(sub: Subparsers) -> None:
    s = sub.add_parser("demo", help="simulator + agent + broker + live view on this machine")
    s.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    s.add_argument("--seconds", type=float, default=None, help="stop after this long")
    s.add_argument("--period-s", type=int, default=10)
    s.add_argument("--scenario", default="winter-peak")
    s.add_argument("--dir", type=Path, default=None, help="working folder (default: temporary)")


_SUBCOMMANDS: dict[str, Callable[[Subparsers], None]] = {
    "run": _add_run_parser,
    "check-config": _add_check_config_parser,
    "poll": _add_poll_parser,
    "keygen": _add_keygen_parser,
    "sign": _add_sign_parser,
    "verify": _add_verify_parser,
    "export": _add_export_parser,
    "status": _add_status_parser,
    "serve": _add_serve_parser,
    "scan": _add_scan_parser,
    "customer": _add_customer_parser,
    "demo": _add_demo_parser,
}


def main(argv: Sequence[str] | None = None) -> int:
    # `run` starts without the cyclic garbage collector: over the start-up imports it would
    # run some fifty collections (2-5 ms before the first publish); the agent enables it
    # once started (``Agent.open_devices``), the other commands right after parsing
    gc.disable()
    try:
        words = sys.argv[1:] if argv is None else argv
        args = build_parser(words).parse_args(words)
        if args.cmd != "run":
            gc.enable()
        from agent.logs import setup_logging

        setup_logging(args.log_level)
        handler = HANDLERS.get(args.cmd)
        return 2 if handler is None else handler(args)
    finally:
        gc.enable()


if __name__ == "__main__":
    raise SystemExit(main())
