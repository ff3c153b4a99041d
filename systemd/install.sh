#!/usr/bin/env bash
# dh-agent installer for a Debian 12 / Raspberry Pi OS gateway. Idempotent: run it again
# after an update and it converges; keys and an edited config are never overwritten.
#
#   sudo systemd/install.sh install   [--root DIR] [--no-pip] [--wheel FILE] [--start]
#   sudo systemd/install.sh uninstall [--root DIR] [--purge]
#
# install:
#   /opt/dh-agent/venv               venv with the project (pip install of this repo or --wheel)
#   user dh-agent (system, nologin)  declared in /etc/sysusers.d/dh-agent.conf, member of dialout
#   /etc/dh-agent/agent.key, .pub    `dh-agent keygen`, only if neither exists; key mode 0600,
#                                    owned by dh-agent (the service reads it)
#   /etc/dh-agent/agent.toml         firmware_cfg/examples/agent.toml, only if none exists
#   /etc/modules-load.d/dh-agent.conf  usbserial + cdc_acm, so DeviceAllow=char-ttyUSB/ttyACM
#                                    resolve when the service starts (see the unit)
#   /etc/systemd/system/dh-agent.service, enabled (multi-user.target.wants symlink)
#   /etc/systemd/system/dh-agent-web.socket, dh-agent-web.service (the technician's page)
#   and dh-agent-customer.service (the BMS's Modbus interface): installed, not enabled;
#   a site turns them on with `systemctl enable --now dh-agent-web.socket` and, with
#   [customer] configured, `systemctl enable --now dh-agent-customer.service`
# uninstall: disables and removes the units, the venv and the modules-load file; keeps
#   /etc/dh-agent, /var/lib/dh-agent and the user unless --purge.
#
# A root other than / (DESTDIR style; tests use a temporary folder) touches nothing outside
# it: the account is written to DIR/etc/passwd etc. by `systemd-sysusers --root` (when
# available), systemctl runs only as `systemctl --root=DIR`, and every action that would
# change the live system (useradd, chown to the service user, modprobe, daemon-reload,
# start) is recorded, one line each, in the plan file instead
# (DIR/dh-agent-install.plan, rewritten on every run). Note that a venv is not relocatable:
# one made under DIR is for inspection, not for copying to another machine.
#
# Options and environment (an option wins over its variable):
#   --root DIR       DH_AGENT_ROOT     install root (default /)
#   --no-pip         DH_AGENT_NO_PIP=1 create the venv (without pip) but skip `pip install`;
#                                      for tests, or when the venv is provisioned otherwise
#   --wheel FILE     DH_AGENT_WHEEL    pip install this wheel instead of the source tree
#                    DH_AGENT_PIP_ARGS extra pip arguments (e.g. "--no-index --find-links D")
#                    DH_AGENT_PYTHON   interpreter for the venv (default python3, >= 3.11)
#                    DH_AGENT_BIN      dh-agent used for keygen/check-config
#                                      (default: the venv's own bin/dh-agent)
#                    DH_AGENT_PLAN     plan file (default DIR/dh-agent-install.plan; / : none)
#   --start          start (or restart) the service now (ROOT=/ only)
#   --purge          uninstall: also remove /etc/dh-agent, /var/lib/dh-agent and the user
set -euo pipefail

UNIT=dh-agent.service
OPTIONAL_UNITS=(dh-agent-web.socket dh-agent-web.service dh-agent-customer.service)
SVC_USER=dh-agent
SERIAL_GROUP=dialout
MODULES=(usbserial cdc_acm)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}
say() { echo "install.sh: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# --- arguments -----------------------------------------------------------------------
action="${1:-}"
case "$action" in
install | uninstall) shift ;;
-h | --help | help)
    usage
    exit 0
    ;;
*)
    usage >&2
    exit 2
    ;;
esac

root="${DH_AGENT_ROOT:-/}"
no_pip="${DH_AGENT_NO_PIP:-0}"
wheel="${DH_AGENT_WHEEL:-}"
purge=0
start=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --root)
        [[ $# -ge 2 ]] || die "--root needs a folder"
        root="$2"
        shift 2
        ;;
    --root=*)
        root="${1#--root=}"
        shift
        ;;
    --no-pip)
        no_pip=1
        shift
        ;;
    --wheel)
        [[ $# -ge 2 ]] || die "--wheel needs a file"
        wheel="$2"
        shift 2
        ;;
    --wheel=*)
        wheel="${1#--wheel=}"
        shift
        ;;
    --purge)
        purge=1
        shift
        ;;
    --start)
        start=1
        shift
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ "$no_pip" == 1 || "$no_pip" == 0 ]] || die "DH_AGENT_NO_PIP must be 0 or 1"
[[ -n "$root" ]] || root=/
root="$(realpath -m -- "$root")"
live=0
[[ "$root" == / ]] && live=1
[[ "$live" == 1 && "$(id -u)" != 0 ]] && die "installing to / needs root (sudo), or use --root DIR"
[[ "$live" == 0 && ! -d "$root" ]] && die "root $root does not exist"

# r PATH: PATH inside the install root
r() {
    if [[ "$live" == 1 ]]; then printf '%s' "$1"; else printf '%s%s' "$root" "$1"; fi
}

venv="$(r /opt/dh-agent/venv)"
etc="$(r /etc/dh-agent)"
state="$(r /var/lib/dh-agent)"
unit_dir="$(r /etc/systemd/system)"
sysusers_conf="$(r /etc/sysusers.d/dh-agent.conf)"
modules_conf="$(r /etc/modules-load.d/dh-agent.conf)"
plan=""
if [[ -n "${DH_AGENT_PLAN:-}" ]]; then
    plan="$DH_AGENT_PLAN"
elif [[ "$live" == 0 ]]; then
    plan="$root/dh-agent-install.plan"
fi
[[ -n "$plan" ]] && : >"$plan"

# note LINE: an action on the live system, done (ROOT=/) or only planned (other roots)
note() {
    if [[ -n "$plan" ]]; then printf '%s\n' "$*" >>"$plan"; fi
    if [[ "$live" == 1 ]]; then say "$*"; else say "plan: $*"; fi
}

systemd_running() { [[ "$live" == 1 && -d /run/systemd/system ]]; }

# --- install -------------------------------------------------------------------------
make_venv() {
    local py="${DH_AGENT_PYTHON:-python3}"
    command -v "$py" >/dev/null || die "$py not found (apt-get install python3)"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$py is older than 3.11"
    if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c '' 2>/dev/null; then
        say "venv $venv exists"
    else
        mkdir -p "$(dirname "$venv")"
        if [[ "$no_pip" == 1 ]]; then
            "$py" -m venv --without-pip "$venv"
        else
            if ! "$py" -c 'import ensurepip' 2>/dev/null; then
                if [[ "$live" == 1 ]] && command -v apt-get >/dev/null; then
                    say "installing python3-venv"
                    DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2
                else
                    die "$py has no ensurepip (apt-get install python3-venv)"
                fi
            fi
            "$py" -m venv "$venv"
        fi
        say "venv $venv created"
    fi
    if [[ "$no_pip" == 1 ]]; then
        say "pip install skipped (--no-pip / DH_AGENT_NO_PIP=1)"
        return
    fi
    local target="$repo"
    [[ -n "$wheel" ]] && target="$(realpath -- "$wheel")"
    [[ -x "$venv/bin/pip" ]] || "$venv/bin/python" -m ensurepip --upgrade >&2
    # shellcheck disable=SC2086  # DH_AGENT_PIP_ARGS is a list of words
    "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade \
        ${DH_AGENT_PIP_ARGS:-} "$target" >&2
    say "dh-agent installed into $venv from $target"
}

make_user() {
    mkdir -p "$(dirname "$sysusers_conf")"
    cat >"$sysusers_conf.tmp" <<EOF
# dh-agent service account (systemd/install.sh). Apply: systemd-sysusers dh-agent.conf
u $SVC_USER - "dh-agent substation gateway" /var/lib/dh-agent /usr/sbin/nologin
m $SVC_USER $SERIAL_GROUP
EOF
    chmod 0644 "$sysusers_conf.tmp"
    mv -f "$sysusers_conf.tmp" "$sysusers_conf"
    note "user $SVC_USER system nologin home=/var/lib/dh-agent groups=$SERIAL_GROUP"
    if command -v systemd-sysusers >/dev/null; then
        if [[ "$live" == 1 ]]; then
            systemd-sysusers "$sysusers_conf" >&2
        else
            systemd-sysusers --root="$root" "$sysusers_conf" >&2
        fi
    elif [[ "$live" == 1 ]]; then
        getent group "$SERIAL_GROUP" >/dev/null || groupadd --system "$SERIAL_GROUP"
        getent group "$SVC_USER" >/dev/null || groupadd --system "$SVC_USER"
        id "$SVC_USER" >/dev/null 2>&1 ||
            useradd --system --gid "$SVC_USER" --home-dir /var/lib/dh-agent --no-create-home \
                --shell /usr/sbin/nologin --comment "dh-agent substation gateway" "$SVC_USER"
        usermod -a -G "$SERIAL_GROUP" "$SVC_USER"
    else
        say "systemd-sysusers not found: the user is only recorded in $plan"
    fi
}

# own PATH: give PATH to the service user. Only on the live system: under another root
# the uid may not exist on this machine, so the chown is only recorded in the plan.
own() {
    local rel="${1#"$root"}"
    [[ "$live" == 1 ]] && rel="$1"
    note "chown $SVC_USER:$SVC_USER $rel"
    if [[ "$live" == 1 ]]; then chown "$SVC_USER:$SVC_USER" "$1"; fi
}

make_keys() {
    local bin="${DH_AGENT_BIN:-$venv/bin/dh-agent}"
    mkdir -p "$etc"
    chmod 0755 "$etc"
    if [[ -e "$etc/agent.key" || -e "$etc/agent.pub" ]]; then
        [[ -e "$etc/agent.key" ]] || die "$etc/agent.pub exists without agent.key: fix by hand"
        say "keys in $etc exist: kept"
        chmod 0600 "$etc/agent.key"
    else
        [[ -x "$bin" ]] || die "$bin not found: run without --no-pip, or set DH_AGENT_BIN"
        local kid
        kid="$("$bin" keygen --out "$etc" --name agent)"
        say "agent key generated, key id $kid (give $etc/agent.pub to the head-end)"
    fi
    own "$etc/agent.key"
    own "$etc/agent.pub"
}

install_config() {
    local example="$repo/firmware_cfg/examples/agent.toml"
    [[ -f "$example" ]] || die "$example missing"
    if [[ -e "$etc/agent.toml" ]]; then
        say "config $etc/agent.toml exists: kept"
    else
        install -m 0644 "$example" "$etc/agent.toml"
        say "config $etc/agent.toml installed from the example: edit site.id, mqtt, devices"
    fi
    local bin="${DH_AGENT_BIN:-$venv/bin/dh-agent}"
    if [[ -x "$bin" ]] && ! "$bin" check-config --config "$etc/agent.toml" >&2; then
        say "warning: $etc/agent.toml is not valid yet; the service will not start until it is"
    fi
}

install_modules() {
    mkdir -p "$(dirname "$modules_conf")"
    printf '# serial line drivers for dh-agent (DeviceAllow=char-ttyUSB/char-ttyACM)\n%s\n' \
        "${MODULES[@]}" >"$modules_conf.tmp"
    chmod 0644 "$modules_conf.tmp"
    mv -f "$modules_conf.tmp" "$modules_conf"
    note "modprobe ${MODULES[*]}"
    if [[ "$live" == 1 ]] && command -v modprobe >/dev/null; then
        modprobe -a "${MODULES[@]}" 2>/dev/null || say "warning: modprobe ${MODULES[*]} failed"
    fi
}

install_unit() {
    mkdir -p "$unit_dir"
    local u
    for u in "$UNIT" "${OPTIONAL_UNITS[@]}"; do
        install -m 0644 "$here/$u" "$unit_dir/$u.tmp"
        mv -f "$unit_dir/$u.tmp" "$unit_dir/$u"
    done
    note "systemctl daemon-reload"
    systemd_running && systemctl daemon-reload
    enable_unit
    if [[ "$start" == 1 ]]; then
        note "systemctl restart $UNIT"
        if systemd_running; then
            systemctl restart "$UNIT"
        else
            say "not starting: no running systemd at this root"
        fi
    fi
}

enable_unit() {
    note "systemctl enable $UNIT"
    if command -v systemctl >/dev/null; then
        if [[ "$live" == 1 ]]; then
            systemctl enable "$UNIT" >&2
        else
            systemctl --root="$root" enable "$UNIT" >&2
        fi
    else # what `systemctl enable` does for WantedBy=multi-user.target
        mkdir -p "$unit_dir/multi-user.target.wants"
        ln -sfn "/etc/systemd/system/$UNIT" "$unit_dir/multi-user.target.wants/$UNIT"
    fi
}

do_install() {
    make_venv
    make_user
    make_keys
    install_config
    install_modules
    install_unit
    say "done. Next: edit $(r /etc/dh-agent/agent.toml), add operator.pub and ca.pem to $etc,"
    say "then: systemctl start dh-agent; journalctl -u dh-agent -f"
    say "optional: systemctl enable --now dh-agent-web.socket (the technician's page)"
}

# --- uninstall -----------------------------------------------------------------------
remove_user() {
    note "userdel $SVC_USER"
    if [[ "$live" == 1 ]]; then
        if id "$SVC_USER" >/dev/null 2>&1; then userdel "$SVC_USER"; fi
        if getent group "$SVC_USER" >/dev/null; then groupdel "$SVC_USER"; fi
        return 0
    fi
    # the root's own account files (written by systemd-sysusers --root)
    local f members
    for f in passwd shadow group gshadow; do
        [[ -f "$root/etc/$f" ]] || continue
        members=0
        [[ "$f" == group || "$f" == gshadow ]] && members=1
        # drop the user's own line; in group files also drop it from member lists
        awk -F: -v OFS=: -v u="$SVC_USER" -v members="$members" '
            $1 == u { next }
            members {
                n = split($NF, m, ","); s = ""
                for (i = 1; i <= n; i++) if (m[i] != u) s = s (s == "" ? "" : ",") m[i]
                $NF = s
            }
            { print }' "$root/etc/$f" >"$root/etc/$f.tmp"
        chmod --reference="$root/etc/$f" "$root/etc/$f.tmp"
        mv -f "$root/etc/$f.tmp" "$root/etc/$f"
    done
}

disable_unit() {
    local u="$1"
    note "systemctl disable --now $u"
    if systemd_running; then
        systemctl disable --now "$u" >&2 || true
    elif command -v systemctl >/dev/null && [[ -e "$unit_dir/$u" ]]; then
        if [[ "$live" == 1 ]]; then
            systemctl disable "$u" >&2 || true
        else
            systemctl --root="$root" disable "$u" >&2 || true
        fi
    fi
    rm -f "$unit_dir/multi-user.target.wants/$u" "$unit_dir/sockets.target.wants/$u" \
        "$unit_dir/$u"
}

do_uninstall() {
    local u
    for u in "${OPTIONAL_UNITS[@]}" "$UNIT"; do
        disable_unit "$u"
    done
    rmdir "$unit_dir/multi-user.target.wants" "$unit_dir/sockets.target.wants" 2>/dev/null || true
    note "systemctl daemon-reload"
    systemd_running && systemctl daemon-reload
    rm -rf "$(r /opt/dh-agent)"
    rm -f "$modules_conf"
    if [[ "$purge" == 1 ]]; then
        rm -rf "$etc" "$state"
        rm -f "$sysusers_conf"
        remove_user
        say "purged: config, keys, data and user removed"
    else
        say "removed unit and venv; kept $etc, $state and user $SVC_USER (--purge removes them)"
    fi
}

if [[ "$action" == install ]]; then do_install; else do_uninstall; fi
