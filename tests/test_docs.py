"""The repository documents itself: every public name the code defines is mentioned in
backticks (inline code, not a fenced block) somewhere under ``docs/``.

The names are derived from the code, never from a copy kept here:

- config keys: every ``SCHEMA`` / ``*_SCHEMA`` table of the validator and every field of a
  ``*Cfg`` dataclass, in any module of ``agent`` (so a new module's keys count too);
- CLI subcommands and options: the argparse parsers (``build_parser``) of every console
  script in ``pyproject.toml``, walked through their subcommands;
- event kinds: ``agent.protocol.EVENT_KINDS`` plus what the sources emit: ``"kind": "x"``
  in a dict, ``kind="x"``, ``kind = "x"``, ``["kind"] == "x"``, and module constants
  named ``EV_*`` / ``*_EVENT`` / ``*_KIND``;
- ``cmd`` names, topics, streams, rejection reasons, record fields and flags:
  ``agent.protocol``, ``agent.remote.COMMANDS``, ``agent.export.COLUMNS`` and the flags
  the sources add (``flags.add("x")``, ``flags |= {"x"}``).

A name is mentioned when it stands alone inside an inline code span: `` `period_s` ``,
`` `site.period_s` ``, `` `dh-agent export --device NAME` `` and `` `P/S/cmd/ack` `` all
count. The test lists every missing name at once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import pkgutil
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

import agent
from agent import protocol

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SOURCES = ("agent", "drivers")
# Feature pages written on other branches at the same time; the index links to them.
# Once they are merged, this allowance changes nothing (the files exist).
PARALLEL_PAGES = frozenset(
    {
        "mbus.md",
        "mbus-setup.md",
        "limiter.md",
        "faults.md",
        "web.md",
        "live-snapshot.md",
        "customer-modbus.md",
        "plausibility.md",
        "performance.md",
    }
)
README_COMMANDS = [
    "bash tests/bootstrap.sh && .venv/bin/dh-agent demo",
    "bash tests/run.sh",
]

# --- the docs side ----------------------------------------------------------------------

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")


@cache
def code_spans() -> tuple[str, ...]:
    spans: list[str] = []
    for md in sorted(DOCS.rglob("*.md")):
        text = FENCE.sub("", md.read_text(encoding="utf-8"))
        spans += INLINE.findall(text)
    return tuple(spans)


@cache
def mentioned(name: str) -> bool:
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return any(word.search(s) for s in code_spans())


# --- the code side ----------------------------------------------------------------------


def agent_modules() -> Iterator[ModuleType]:
    for m in pkgutil.walk_packages(agent.__path__, "agent."):
        yield importlib.import_module(m.name)


def config_keys() -> dict[str, str]:
    """key -> where it is defined."""
    out: dict[str, str] = {}
    for mod in agent_modules():
        for attr, val in vars(mod).items():
            if (attr == "SCHEMA" or attr.endswith("_SCHEMA")) and isinstance(val, dict):
                for k, v in val.items():
                    if isinstance(v, dict):  # table -> key -> checker
                        out.setdefault(str(k), f"{mod.__name__}.{attr} (table)")
                        for kk in v:
                            out.setdefault(str(kk), f"{mod.__name__}.{attr}[{k!r}]")
                    else:
                        out.setdefault(str(k), f"{mod.__name__}.{attr}")
            if (
                isinstance(val, type)
                and attr.endswith("Cfg")
                and dataclasses.is_dataclass(val)
                and val.__module__ == mod.__name__
            ):
                for f in dataclasses.fields(val):
                    out.setdefault(f.name, f"{mod.__name__}.{attr}")
    return out


def console_parsers() -> dict[str, argparse.ArgumentParser]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    out: dict[str, argparse.ArgumentParser] = {}
    for prog, target in scripts.items():
        mod = importlib.import_module(target.split(":")[0])
        build = getattr(mod, "build_parser", None)
        if build is not None:
            out[prog] = build()
    return out


def cli_names() -> tuple[dict[str, str], dict[str, str]]:
    """(subcommand -> program, option -> where it is accepted)."""
    subs: dict[str, str] = {}
    opts: dict[str, str] = {}

    def walk(p: argparse.ArgumentParser, where: str) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    subs.setdefault(name, where)
                    walk(sp, f"{where} {name}")
            for o in a.option_strings:
                if o.startswith("--") and o != "--help":
                    opts.setdefault(o, where)

    for prog, parser in console_parsers().items():
        walk(parser, prog)
    return subs, opts


def _py_files() -> Iterator[Path]:
    for top in SOURCES:
        yield from sorted((REPO / top).rglob("*.py"))


def _str(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _is_kind(node: ast.AST) -> bool:
    """``x["kind"]`` or ``x.get("kind")``."""
    if isinstance(node, ast.Subscript):
        return _str(node.slice) == "kind"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and bool(node.args)
        and _str(node.args[0]) == "kind"
    )


def _kinds_in(tree: ast.AST) -> Iterator[str]:
    # a class attribute ``kind = "..."`` (e.g. an error class's counter) is no event
    in_class = {id(s) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for s in c.body}
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values, strict=True):
                if k is not None and _str(k) == "kind" and _str(v):
                    yield str(_str(v))
        elif isinstance(n, ast.Call):
            for kw in n.keywords:
                if kw.arg == "kind" and _str(kw.value):
                    yield str(_str(kw.value))
        elif isinstance(n, ast.Assign) and id(n) not in in_class:
            for t in n.targets:
                pairs: list[tuple[ast.AST, ast.AST]] = [(t, n.value)]
                if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple):
                    pairs = list(zip(t.elts, n.value.elts, strict=False))
                for tt, vv in pairs:
                    if not isinstance(tt, ast.Name) or _str(vv) is None:
                        continue
                    name = tt.id
                    if name in ("kind", "end_kind") or re.fullmatch(
                        r"EV_[A-Z0-9_]+|[A-Z0-9_]+_(EVENT|KIND)", name
                    ):
                        yield str(_str(vv))
        elif isinstance(n, ast.Compare) and _is_kind(n.left):
            for c in n.comparators:
                if _str(c):
                    yield str(_str(c))


def _flags_in(tree: ast.AST) -> Iterator[str]:
    def flaggy(node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and "flag" in node.id.lower()

    for n in ast.walk(tree):
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "add"
            and flaggy(n.func.value)
        ):
            yield from (s for a in n.args if (s := _str(a)))
        sets: list[ast.AST] = []
        if isinstance(n, ast.AugAssign) and flaggy(n.target):
            sets = [n.value]
        elif isinstance(n, ast.BinOp) and (flaggy(n.left) or flaggy(n.right)):
            sets = [n.left, n.right]
        for node in sets:
            if isinstance(node, ast.Set):
                yield from (v for e in node.elts if (v := _str(e)))


@cache
def _scan() -> tuple[dict[str, str], dict[str, str]]:
    kinds: dict[str, str] = {}
    flags: dict[str, str] = {}
    for f in _py_files():
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        rel = str(f.relative_to(REPO))
        for k in _kinds_in(tree):
            kinds.setdefault(k, rel)
        for fl in _flags_in(tree):
            flags.setdefault(fl, rel)
    return kinds, flags


def event_kinds() -> dict[str, str]:
    out = {k: "agent.protocol.EVENT_KINDS" for k in protocol.EVENT_KINDS}
    for k, where in _scan()[0].items():
        out.setdefault(k, where)
    return out


def record_flags() -> dict[str, str]:
    out = {f: "agent.protocol.RECORD_FLAGS" for f in protocol.RECORD_FLAGS}
    for f, where in _scan()[1].items():
        out.setdefault(f, where)
    return out


def commands() -> dict[str, str]:
    from agent import remote

    out = {c: "agent.protocol.COMMANDS" for c in protocol.COMMANDS}
    for c in getattr(remote, "COMMANDS", ()):
        out.setdefault(c, "agent.remote.COMMANDS")
    return out


def public_names() -> dict[str, dict[str, str]]:
    from agent.export import COLUMNS

    subs, opts = cli_names()
    return {
        "config key": config_keys(),
        "CLI subcommand": subs,
        "CLI option": opts,
        "event kind": event_kinds(),
        "cmd": commands(),
        "topic": {t.suffix: "agent.protocol.TOPICS" for t in protocol.TOPICS},
        "stream": {s: "agent.protocol.STREAMS" for s in protocol.STREAMS},
        "rejection reason": {r: "agent.protocol.REJECT_REASONS" for r in protocol.REJECT_REASONS},
        "record field": {c: "agent.export.COLUMNS" for c in COLUMNS},
        "record flag": record_flags(),
        "device role": {r: "agent.protocol.ROLES" for r in protocol.ROLES},
    }


# --- tests --------------------------------------------------------------------------------


def test_every_public_name_is_documented() -> None:
    missing: list[str] = []
    for what, names in public_names().items():
        for name, where in sorted(names.items()):
            if not mentioned(name):
                missing.append(f"  {what} `{name}` (from {where})")
    assert not missing, (
        f"{len(missing)} public names are not mentioned in backticks under docs/:\n"
        + "\n".join(missing)
    )


def test_the_derived_lists_are_not_empty() -> None:
    """The derivations find what is known to exist, so the check above cannot pass by
    finding nothing."""
    names = public_names()
    keys = names["config key"]
    assert {"period_s", "telemetry_s", "return_max_c", "poll_s", "rs485", "level"} <= set(keys)
    assert {"check-config", "poll", "export", "demo", "sign", "verify"} <= set(
        names["CLI subcommand"]
    )
    assert {"--config", "--device", "--rtu-pty", "--truth", "--log-level"} <= set(
        names["CLI option"]
    )
    scanned = _scan()[0]
    assert {"config_applied", "key_rotated", "data_pruned", "cooling_low"} <= set(scanned)
    assert {"no_data", "partial", "counter_reset", "limited"} <= set(_scan()[1])
    assert {"resend", "poll_now", "rotate_key"} <= set(names["cmd"])
    assert len(code_spans()) > 100, "docs/ has (almost) no inline code"


def test_event_kinds_and_flags_the_code_uses_are_named_in_protocol() -> None:
    """agent/protocol.py is the one list of event kinds and record flags."""
    kinds, flags = _scan()
    stray = sorted(f"{k} ({w})" for k, w in kinds.items() if k not in protocol.EVENT_KINDS)
    stray += sorted(f"{f} ({w})" for f, w in flags.items() if f not in protocol.RECORD_FLAGS)
    assert not stray, "add to agent/protocol.py: " + ", ".join(stray)


def test_mentioned_matches_whole_names_only() -> None:
    assert mentioned("period_s") and mentioned("--config")
    word = re.compile(rf"(?<![\w-]){re.escape('dp_low')}(?![\w-])")
    assert not word.search("dp_low_end") and word.search("`dp_low` / `dp_low_end`")
    assert not re.search(rf"(?<![\w-]){re.escape('--config')}(?![\w-])", "--config-file F")


def _links(text: str) -> Iterator[str]:
    for m in re.finditer(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        yield m.group(1)


def test_readme_points_into_the_repository_and_keeps_its_two_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "../shared" not in readme and "shared/spec" not in readme
    assert any(link.startswith("docs/") for link in _links(readme)), "README must link docs/"
    commands = [ln.strip() for ln in readme.splitlines() if ln.startswith("    ") and ln.strip()]
    assert commands == README_COMMANDS


def test_docs_stay_inside_the_repository_and_their_links_resolve() -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert (DOCS / "README.md") in pages
    broken: list[str] = []
    for md in [REPO / "README.md", *pages]:
        text = md.read_text(encoding="utf-8")
        if "../shared" in text or "shared/spec" in text:
            broken.append(f"{md.relative_to(REPO)}: points to ../shared")
        for link in _links(text):
            if re.match(r"^[a-z]+:", link) or link.startswith("#"):
                continue
            target = (md.parent / link.split("#")[0]).resolve()
            if not target.exists() and target.name not in PARALLEL_PAGES:
                broken.append(f"{md.relative_to(REPO)}: broken link {link}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_index() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = {(DOCS / link.split("#")[0]).resolve() for link in _links(index)}
    pages = [p for p in sorted(DOCS.rglob("*.md")) if p != DOCS / "README.md"]
    assert [str(p.relative_to(DOCS)) for p in pages if p.resolve() not in linked] == []
    assert {Path(link).name for link in _links(index)} >= PARALLEL_PAGES


def test_the_verification_example_in_signing_md_works() -> None:
    """The joserfc example of docs/signing.md, run against messages the agent signs."""
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from agent.jws import Signer, chain_hash, envelope

    text = (DOCS / "signing.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    assert len(blocks) == 1
    ns: dict[str, object] = {}
    exec(compile(blocks[0], "docs/signing.md", "exec"), ns)
    check_chain = ns["check_chain"]
    assert callable(check_chain)

    signer = Signer(Ed25519PrivateKey.generate())
    pem = signer.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    msgs: list[str] = []
    for seq in (1, 2, 3):
        prev = chain_hash(msgs[-1]) if msgs else None
        body = {"device": "hm1", "n": seq}
        msgs.append(signer.sign(envelope("sub-1", "interval", seq, prev, time.time(), body)))
    check_chain(msgs, pem, "sub-1")
    for bad in ([msgs[0], msgs[2]], [msgs[1], msgs[0]], [msgs[0], msgs[1][:-4] + "AAAA"]):
        with pytest.raises(Exception):  # noqa: B017 - any failure of the check will do
            check_chain(bad, pem, "sub-1")
    other = Signer(Ed25519PrivateKey.generate()).public_key
    with pytest.raises(Exception):  # noqa: B017
        check_chain(
            msgs, other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo), "sub-1"
        )
    with pytest.raises(ValueError, match="not ours"):
        check_chain(msgs, pem, "sub-2")
