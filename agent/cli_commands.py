"""The handlers of the `dh-agent` subcommands (``agent.cli`` parses, these run): each takes
the parsed arguments and returns the exit code. Thin edges over the modules that do the
work; their imports are lazy so a quick command starts fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from agent.protocol import HEAT_METER


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


def _config_logging(args: argparse.Namespace, level: str) -> None:
    """The config's log level, unless ``--log-level`` was given."""
    from agent.logs import setup_logging

    if args.log_level is None:
        setup_logging(level)


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load

    try:
        load(args.config)
    except ConfigError as e:
        for line in e.problems:
            print(line)
        return 2
    print(f"{args.config}: ok")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.keys import keygen

    try:
        kid = keygen(args.out, args.name, force=args.force)
    except FileExistsError as e:
        print(f"keygen: {e} exists; use --force to overwrite", file=sys.stderr)
        return 1
    print(kid)
    return 0


def cmd_poll(args: argparse.Namespace) -> int:
    from agent.poll import poll_once

    return poll_once(_load_config(args.config), sys.stdout)


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler
    import signal

    # a technician's `kill -USR1` dumps every thread's stack to the journal
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    cfg = _load_config(args.config)
    _config_logging(args, cfg.log_level)
    from agent.store_early import EarlyStore

    # the store opens on its own thread (mostly disk syncs) while the rest is imported
    early = EarlyStore(cfg.storage)
    from agent.runner import run_agent

    return run_agent(cfg, early)


def cmd_export(args: argparse.Namespace) -> int:
    from agent.export import export_records

    cfg = _load_config(args.config)
    store = _open_readonly(cfg.storage.path)
    try:
        export_records(store, args.start, args.end, args.format, sys.stdout, args.device)
    finally:
        store.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
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
        from agent.limiter_store import status_lines

        for line in status_lines(store, now):
            print(line)

        c = cfg.contract
        for d in cfg.devices:
            if d.role == HEAT_METER:
                recs = store.iter_intervals(now - YEAR_S, now, d.name)
                review = contract_review(recs, now, c.flow_limit_m3h, c.power_limit_kw)
                print(f"{d.name}: {describe(review)}")
    finally:
        store.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
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


def cmd_sign(args: argparse.Namespace) -> int:
    from agent.operator import sign_cli

    return sign_cli(args, sys.stdout)


def cmd_serve(args: argparse.Namespace) -> int:
    from agent.web.serve import run_serve

    cfg = _load_config(args.config)
    _config_logging(args, cfg.log_level)
    return run_serve(cfg, args.listen, args.idle_exit_s)


def cmd_scan(args: argparse.Namespace) -> int:
    from agent.scan import run_scan

    return run_scan(
        args.port, args.baudrate, args.secondary, sys.stdout, args.max_address, args.timeout_s
    )


def cmd_customer(args: argparse.Namespace) -> int:
    from agent.customer import run_customer

    cfg = _load_config(args.config)
    _config_logging(args, cfg.log_level)
    return run_customer(cfg, args.listen)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(args)


# subcommand -> its handler
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "check-config": cmd_check_config,
    "keygen": cmd_keygen,
    "poll": cmd_poll,
    "run": cmd_run,
    "export": cmd_export,
    "status": cmd_status,
    "verify": cmd_verify,
    "sign": cmd_sign,
    "serve": cmd_serve,
    "scan": cmd_scan,
    "customer": cmd_customer,
    "demo": cmd_demo,
}
