#!/usr/bin/env bash
# Until `dh-agent demo` runs end to end: the simulator and `dh-agent poll --once`,
# readings on screen every 2 s (ROUNDS times, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/bootstrap.sh
work=$(mktemp -d)
.venv/bin/dh-sim --tcp 127.0.0.1:0 --scenario "${SCENARIO:-steady}" > "$work/sim.out" &
sim=$!
trap 'kill $sim 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s "$work/sim.out" ] && break; sleep 0.1; done
port=$(head -1 "$work/sim.out" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["tcp"].rsplit(":",1)[1])')
.venv/bin/python - "$work/agent.toml" "$port" <<'PY'
import sys
from tests.test_poll_cli import config_text
open(sys.argv[1], "w").write(config_text(int(sys.argv[2])))
PY
for _ in $(seq "${ROUNDS:-5}"); do
    .venv/bin/dh-agent poll --config "$work/agent.toml" --once \
        | .venv/bin/python -c 'import sys; from tests.test_poll_cli import show; print(show(sys.stdin.readlines()))'
    echo
    sleep 2
done
