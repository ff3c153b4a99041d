"""systemd/install.sh run into a temporary root (DESTDIR style), never onto this machine:
install twice (idempotent), the files, modes, account and plan it produces, then uninstall
and uninstall --purge. The fast tests use --no-pip (the venv is created, `pip install` is
skipped) and this checkout's dh-agent for keygen (DH_AGENT_BIN); one slow test does the real
pip install of a wheel built from this checkout."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.keys import load_private

pytestmark = pytest.mark.integration  # runs systemd/install.sh into temporary roots

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "systemd" / "install.sh"
BIN = Path(sys.executable).parent
UNIT = "etc/systemd/system/dh-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/dh-agent.service"
OPTIONAL = ("dh-agent-web.socket", "dh-agent-web.service", "dh-agent-customer.service")
SYSUSERS = shutil.which("systemd-sysusers") is not None
SYSTEMCTL = shutil.which("systemctl") is not None

EXPECTED_PLAN = [
    "user dh-agent system nologin home=/var/lib/dh-agent groups=dialout",
    "chown dh-agent:dh-agent /etc/dh-agent/agent.key",
    "chown dh-agent:dh-agent /etc/dh-agent/agent.pub",
    "modprobe usbserial cdc_acm",
    "systemctl daemon-reload",
    "systemctl enable dh-agent.service",
]


# --- helpers -------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[str, int, str]]:
    """relative path -> (kind, permission bits, sha256 of content / link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if p.is_symlink():
            out[rel] = ("link", 0, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", mode, "")
        else:
            out[rel] = ("file", mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    e = {
        **os.environ,
        "DH_AGENT_BIN": str(BIN / "dh-agent"),
        "DH_AGENT_PYTHON": sys.executable,
        **(env or {}),
    }
    cmd = ["bash", str(SCRIPT), *args]
    if "DH_AGENT_ROOT" not in e:
        cmd += ["--root", str(root)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=e, check=False)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(root, "install", "--no-pip", *extra)


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return f
    return None


def group_members(root: Path, group: str) -> list[str] | None:
    for line in (root / "etc/group").read_text().splitlines():
        f = line.split(":")
        if f[0] == group:
            return [m for m in f[3].split(",") if m]
    return None


def host_has_user(name: str) -> bool:
    return (
        subprocess.run(["getent", "passwd", name], capture_output=True, check=False).returncode == 0
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


# --- install -------------------------------------------------------------------------------


def test_install_creates_the_layout(root: Path) -> None:
    host_user_before = host_has_user("dh-agent")
    host_etc_before = Path("/etc/dh-agent").exists()
    install(root)

    etc = root / "etc/dh-agent"
    key, pub, cfg = etc / "agent.key", etc / "agent.pub", etc / "agent.toml"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert stat.S_IMODE(etc.stat().st_mode) == 0o755
    load_private(key)  # a real Ed25519 PKCS#8 key
    assert cfg.read_bytes() == (REPO / "firmware_cfg/examples/agent.toml").read_bytes()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644

    unit = root / UNIT
    assert unit.read_bytes() == (REPO / "systemd/dh-agent.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    wants = root / WANTS
    assert wants.is_symlink()
    assert os.readlink(wants) == "/etc/systemd/system/dh-agent.service"
    for name in OPTIONAL:  # installed for a site to turn on, never enabled by us
        u = root / "etc/systemd/system" / name
        assert u.read_bytes() == (REPO / "systemd" / name).read_bytes()
        assert stat.S_IMODE(u.stat().st_mode) == 0o644
    enabled = [p.name for p in (root / "etc/systemd/system").rglob("*.wants/*")]
    assert enabled == ["dh-agent.service"]

    mods = (root / "etc/modules-load.d/dh-agent.conf").read_text().split()
    assert "usbserial" in mods and "cdc_acm" in mods

    venv = root / "opt/dh-agent/venv"
    assert (venv / "pyvenv.cfg").is_file() and (venv / "bin/python").exists()

    sysusers = (root / "etc/sysusers.d/dh-agent.conf").read_text()
    assert 'u dh-agent - "dh-agent substation gateway" /var/lib/dh-agent /usr/sbin/nologin' in (
        sysusers
    )
    assert "m dh-agent dialout" in sysusers

    plan = (root / "dh-agent-install.plan").read_text().splitlines()
    assert plan == EXPECTED_PLAN

    # nothing outside the root: no host user, no /etc/dh-agent (if absent before)
    assert host_has_user("dh-agent") == host_user_before
    assert Path("/etc/dh-agent").exists() == host_etc_before
    # StateDirectory= is systemd's job (created at start with the right owner)
    assert not (root / "var/lib/dh-agent").exists()


@pytest.mark.skipif(not SYSUSERS, reason="systemd-sysusers not installed: user only planned")
def test_install_writes_the_account_into_the_root(root: Path) -> None:
    install(root)
    entry = passwd_entry(root, "dh-agent")
    assert entry is not None
    _, _, uid, gid, _, home, shell = entry
    assert int(uid) < 1000  # a system user
    assert home == "/var/lib/dh-agent" and shell == "/usr/sbin/nologin"
    members = group_members(root, "dialout")
    assert members is not None and "dh-agent" in members
    own_group = [ln.split(":") for ln in (root / "etc/group").read_text().splitlines()]
    assert ["dh-agent", "x", gid, ""] in own_group  # primary group of its own


def test_no_pip_is_honored(root: Path) -> None:
    """--no-pip: the venv exists, but neither pip nor the project was installed into it."""
    r = install(root)
    assert "pip install skipped" in r.stderr
    venv = root / "opt/dh-agent/venv"
    assert not (venv / "bin/dh-agent").exists()
    assert not (venv / "bin/pip").exists()
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert probe.returncode != 0 and "No module named 'agent'" in probe.stderr


def test_environment_variables_instead_of_options(root: Path) -> None:
    run(root, "install", env={"DH_AGENT_ROOT": str(root), "DH_AGENT_NO_PIP": "1"})
    assert (root / UNIT).is_file() and (root / "etc/dh-agent/agent.key").is_file()
    assert not (root / "opt/dh-agent/venv/bin/pip").exists()


def test_install_twice_is_idempotent(root: Path) -> None:
    install(root)
    cfg = root / "etc/dh-agent/agent.toml"
    key = root / "etc/dh-agent/agent.key"
    key_before = key.read_bytes()
    # the technician edits the config between runs
    cfg.write_text(cfg.read_text().replace('id = "sub-000123"', 'id = "sub-004711"'))
    first = snapshot(root)
    r = install(root)
    assert snapshot(root) == first  # same files, modes, contents and links
    assert 'id = "sub-004711"' in cfg.read_text()
    assert key.read_bytes() == key_before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "exist: kept" in r.stderr and "exists: kept" in r.stderr


def test_loose_key_mode_is_tightened_not_regenerated(root: Path) -> None:
    install(root)
    key = root / "etc/dh-agent/agent.key"
    before = key.read_bytes()
    key.chmod(0o644)
    install(root)
    assert key.read_bytes() == before
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_public_key_without_private_key_is_refused(root: Path) -> None:
    etc = root / "etc/dh-agent"
    etc.mkdir(parents=True)
    (etc / "agent.pub").write_text("not mine\n")
    r = run(root, "install", "--no-pip", check=False)
    assert r.returncode != 0 and "agent.pub exists without agent.key" in r.stderr
    assert (etc / "agent.pub").read_text() == "not mine\n"
    assert not (etc / "agent.key").exists()


def test_no_pip_without_a_dh_agent_binary_fails_clearly(root: Path) -> None:
    env = {**os.environ, "DH_AGENT_PYTHON": sys.executable}
    env.pop("DH_AGENT_BIN", None)
    r = subprocess.run(
        ["bash", str(SCRIPT), "install", "--root", str(root), "--no-pip"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 and "set DH_AGENT_BIN" in r.stderr
    assert not (root / "etc/dh-agent/agent.key").exists()


def test_bad_arguments(root: Path) -> None:
    r = run(root, "install", "--bogus", check=False)
    assert r.returncode != 0 and "unknown argument: --bogus" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "install" in r.stderr
    r = run(root / "missing", "install", "--no-pip", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr


# --- uninstall -----------------------------------------------------------------------------


def test_uninstall_keeps_config_keys_data_and_user(root: Path) -> None:
    install(root)
    data = root / "var/lib/dh-agent"
    data.mkdir(parents=True)
    (data / "agent.db").write_bytes(b"records")
    kept = {
        p: (root / p).read_bytes()
        for p in ("etc/dh-agent/agent.key", "etc/dh-agent/agent.pub", "etc/dh-agent/agent.toml")
    }
    run(root, "uninstall")
    assert not (root / UNIT).exists() and not (root / WANTS).is_symlink()
    for name in OPTIONAL:
        assert not (root / "etc/systemd/system" / name).exists()
    assert (
        "systemctl disable --now dh-agent-web.socket"
        in (root / "dh-agent-install.plan").read_text().splitlines()
    )
    assert not (root / "opt/dh-agent").exists()
    assert not (root / "etc/modules-load.d/dh-agent.conf").exists()
    for p, content in kept.items():
        assert (root / p).read_bytes() == content
    assert (data / "agent.db").read_bytes() == b"records"
    assert (root / "etc/sysusers.d/dh-agent.conf").exists()
    if SYSUSERS:
        assert passwd_entry(root, "dh-agent") is not None
    run(root, "uninstall")  # again: nothing left to remove, still fine
    # and a re-install keeps the old key
    install(root)
    assert (root / "etc/dh-agent/agent.key").read_bytes() == kept["etc/dh-agent/agent.key"]


def test_uninstall_purge_removes_everything_of_ours(root: Path) -> None:
    install(root)
    (root / "var/lib/dh-agent").mkdir(parents=True)
    (root / "var/lib/dh-agent/agent.db").write_bytes(b"records")
    run(root, "uninstall", "--purge")
    for p in ("etc/dh-agent", "var/lib/dh-agent", "opt/dh-agent", UNIT, WANTS):
        assert not (root / p).exists() and not (root / p).is_symlink(), p
    assert not (root / "etc/sysusers.d/dh-agent.conf").exists()
    plan = (root / "dh-agent-install.plan").read_text().splitlines()
    assert "userdel dh-agent" in plan
    if SYSUSERS:
        assert passwd_entry(root, "dh-agent") is None
        assert group_members(root, "dh-agent") is None
        assert group_members(root, "dialout") == []  # the group stays, without us
        for f in ("shadow", "gshadow"):
            assert "dh-agent" not in (root / "etc" / f).read_text()


# --- the real pip install (slow: venv with pip + wheel build) -------------------------------


@pytest.mark.slow
def test_real_pip_install_of_a_wheel(tmp_path: Path, root: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*cache*", ".hypothesis", "build", "*.egg-info", "__pycache__"
        ),
    )
    wheels = tmp_path / "wheels"
    b = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if b.returncode != 0:  # needs setuptools>=68 from an index for build isolation
        pytest.skip(f"cannot build a wheel here (no package index?): {b.stderr[-300:]}")
    (wheel,) = wheels.glob("dh_agent-*.whl")
    # deps (cryptography, pymodbus ...) are not installed: offline and fast
    run(
        root,
        "install",
        "--wheel",
        str(wheel),
        env={"DH_AGENT_PIP_ARGS": "--no-deps --no-index"},
    )
    venv = root / "opt/dh-agent/venv"
    assert (venv / "bin/dh-agent").is_file() and (venv / "bin/dh-sim").is_file()
    v = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import importlib.metadata as m; print(m.version('dh-agent'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert v.stdout.strip() == project["version"]
    # profiles and the example config ship in the wheel
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert (site / "firmware_cfg/examples/agent.toml").is_file()
    assert (site / "firmware_cfg/profiles/sim-heat-meter.toml").is_file()
