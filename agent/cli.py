"""`dh-agent` command line (contract section 1). Each subcommand is a thin edge over
the module that does the work; imports are lazy so a quick command starts fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path


def _iso(s: str) -> float:
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {s!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dh-agent", description="District-heating substation agent")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="log level (default: the config's [log] level, else info)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    s.add_argument("--config", required=True, type=Path)

    s = sub.add_parser("check-config", help="validate a config; exit 0 valid, 2 invalid")
    s.add_argument("--config", required=True, type=Path)

    s = sub.add_parser("poll", help="read every device once, one JSON object per device")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--once", action="store_true", required=True)

    s = sub.add_parser("keygen", help="write NAME.key (Ed25519, PKCS#8, 0600) and NAME.pub")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--name", default="agent")
    s.add_argument("--force", action="store_true", help="overwrite existing keys")

    s = sub.add_parser("sign", help="operator side: print a signed config/set or cmd message")
    s.add_argument("--key", required=True, type=Path)
    s.add_argument("--site", required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config-file", type=Path, help="TOML or JSON partial config")
    g.add_argument("--command", help='command body as JSON, e.g. \'{"cmd": "poll_now"}\'')
    s.add_argument("--version", type=int, help="config version (with --config-file)")
    s.add_argument("--seq", type=int, default=None, help="envelope seq (default: time-based)")

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

    s = sub.add_parser("export", help="stored interval records of a time range")
    s.add_argument("--config", required=True, type=Path)
    s.add_argument("--from", dest="start", required=True, type=_iso)
    s.add_argument("--to", dest="end", required=True, type=_iso)
    s.add_argument("--format", choices=["csv", "json"], default="csv")
    s.add_argument("--device", default=None)

    s = sub.add_parser("status", help="short summary from the local store")
    s.add_argument("--config", required=True, type=Path)

    s = sub.add_parser("demo", help="simulator + agent + broker + live view on this machine")
    s.add_argument("--plain", action="store_true", help="plain lines instead of the live view")
    s.add_argument("--seconds", type=float, default=None, help="stop after this long")
    s.add_argument("--period-s", type=int, default=10)
    s.add_argument("--scenario", default="winter-peak")
    s.add_argument("--dir", type=Path, default=None, help="working folder (default: temporary)")
    return p


def _load_config(path: Path):  # type: ignore[no-untyped-def]
    from agent.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def _open_readonly(path: Path):  # type: ignore[no-untyped-def]
    """The database for a read-only tool; a missing or unreadable one is an error (exit 1)."""
    from agent.store import Store, StoreError

    try:
        return Store(path, readonly=True)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from agent.logs import setup_logging

    setup_logging(args.log_level)

    if args.cmd == "check-config":
        from agent.config import ConfigError, load

        try:
            load(args.config)
        except ConfigError as e:
            for line in e.problems:
                print(line)
            return 2
        print(f"{args.config}: ok")
        return 0

    if args.cmd == "keygen":
        from agent.keys import keygen

        try:
            kid = keygen(args.out, args.name, force=args.force)
        except FileExistsError as e:
            print(f"keygen: {e} exists; use --force to overwrite", file=sys.stderr)
            return 1
        print(kid)
        return 0

    if args.cmd == "poll":
        from agent.poll import poll_once

        return poll_once(_load_config(args.config), sys.stdout)

    if args.cmd == "run":
        import faulthandler
        import signal

        from agent.runner import run_agent

        # a technician's `kill -USR1` dumps every thread's stack to the journal
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        cfg = _load_config(args.config)
        if args.log_level is None:
            setup_logging(cfg.log_level)
        return run_agent(cfg)

    if args.cmd == "export":
        from agent.export import export_records

        cfg = _load_config(args.config)
        store = _open_readonly(cfg.storage.path)
        try:
            export_records(store, args.start, args.end, args.format, sys.stdout)
        finally:
            store.close()
        return 0

    if args.cmd == "status":
        import time

        from agent.export import status_summary
        from agent.store_readonly import refused_lines

        cfg = _load_config(args.config)
        store = _open_readonly(cfg.storage.path)
        try:
            now = time.time()
            print(status_summary(store, now))
            for line in refused_lines(store):
                print(line)
            from agent.advice import YEAR_S, contract_review, describe

            c = cfg.contract
            for d in cfg.devices:
                if d.role == "heat_meter":
                    recs = store.iter_intervals(now - YEAR_S, now, d.name)
                    review = contract_review(recs, now, c.flow_limit_m3h, c.power_limit_kw)
                    print(f"{d.name}: {describe(review)}")
        finally:
            store.close()
        return 0

    if args.cmd == "verify":
        from agent.verify import run_verify

        return run_verify(
            args.mqtt,
            args.site,
            args.pubkey,
            args.seconds,
            sys.stdout,
            args.topic_prefix,
            operator_pubkeys=args.operator_pubkey,
        )

    if args.cmd == "sign":
        from agent.operator import sign_cli

        return sign_cli(args, sys.stdout)

    if args.cmd == "demo":
        from agent.demo import run_demo

        return run_demo(args)

    return 2


if __name__ == "__main__":
    raise SystemExit(main())
