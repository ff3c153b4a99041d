#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for dh-agent development: the Debian packages the
# demo needs (python3-venv, mosquitto) and, with DH_TEST_PACKAGES=1 (tests/run.sh), those
# only the tests need (mbpoll, chromium); each installed only when missing; and the
# project's virtual environment .venv with the package installed editable. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ "${DH_TEST_PACKAGES:-}" = "1" ]; then  # set by tests/run.sh: the demo needs neither
    command -v mbpoll >/dev/null 2>&1 || need+=(mbpoll)  # independent Modbus client (customer tests)
    # headless Chromium renders the technician's page in tests/test_web_browser.py
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
if [ "${DH_SKIP_APT:-}" = "" ] && [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "bootstrap: installing Debian packages: ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    # the Debian package starts a broker on 1883; the tests start their own on free ports
fi

stamp=.venv/.dh-installed
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: preparing .venv" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,demo]'
    echo "$want" > "$stamp"
fi
# Bytecode for the project's own modules, as `pip install` (systemd/install.sh) writes it
# on a gateway. The editable install has none, and with PYTHONDONTWRITEBYTECODE set (as in
# the service units) every start would compile agent/ and drivers/ from source again:
# about 0.1 s of `dh-agent run`'s start-up here (docs/performance.md). A module edited
# later is compiled from source until the next bootstrap (stale bytecode is never used).
.venv/bin/python -m compileall -q agent drivers simulator bench >/dev/null
