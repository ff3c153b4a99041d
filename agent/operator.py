"""Operator side: `dh-agent sign` builds a signed `config/set` or `cmd` message."""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any, TextIO

from agent.jws import Signer, envelope
from agent.keys import load_private


def config_message(
    signer: Signer,
    site: str,
    version: int,
    partial: dict[str, Any],
    ts: float,
    seq: int | None = None,
) -> str:
    body = {"version": version, "config": partial}
    return signer.sign(envelope(site, "config", seq or int(ts * 1000), None, ts, body))


def cmd_message(
    signer: Signer, site: str, body: dict[str, Any], ts: float, seq: int | None = None
) -> str:
    body = dict(body)
    body.setdefault("id", uuid.uuid4().hex)
    return signer.sign(envelope(site, "cmd", seq or int(ts * 1000), None, ts, body))


def _read_partial(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("the config file must hold a table/object")
    return doc


def sign_cli(args: argparse.Namespace, out: TextIO) -> int:
    signer = Signer(load_private(args.key))
    now = time.time()
    if args.config_file is not None:
        if args.version is None:
            print("sign: --version N is needed with --config-file", file=sys.stderr)
            return 2
        try:
            partial = _read_partial(args.config_file)
        except (OSError, ValueError) as e:
            print(f"sign: {args.config_file}: {e}", file=sys.stderr)
            return 2
        msg = config_message(signer, args.site, args.version, partial, now, args.seq)
    else:
        try:
            body = json.loads(args.command)
        except ValueError as e:
            print(f"sign: --command is not JSON: {e}", file=sys.stderr)
            return 2
        if not isinstance(body, dict) or "cmd" not in body:
            print('sign: --command must be an object with "cmd"', file=sys.stderr)
            return 2
        msg = cmd_message(signer, args.site, body, now, args.seq)
    out.write(msg + "\n")
    return 0
