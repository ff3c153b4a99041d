#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, then ruff, mypy
# and pytest. Extra arguments go to pytest.
#
# Stage note: the pipeline modules (runner, uplink, store, aggregator, limiter, monitors,
# drivers' transports, demo) are still being written; until they land, the checks cover
# the finished parts listed here, and mypy does not follow into the unfinished ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
DONE=(drivers agent/config.py agent/cli.py agent/logs.py agent/notify.py agent/events.py agent/remote.py agent/operator.py agent/jws.py agent/keys.py agent/verify.py simulator tests/test_profile.py tests/test_config.py tests/test_remote.py tests/test_jws.py tests/test_sim_plant.py tests/test_sim_slaves.py tests/test_sim_server.py tests/test_sim_cli.py tests/test_verify.py tests/test_drivers_unit.py tests/test_drivers_sim.py bench/poll_overhead.py agent/poll.py tests/test_poll_cli.py)
TESTS=($(printf '%s\n' "${DONE[@]}" | grep '^tests/'))
echo "== ruff"
ruff check "${DONE[@]}"
ruff format --check "${DONE[@]}"
echo "== mypy"
mypy --follow-imports=silent --disable-error-code import-not-found "${DONE[@]}"
echo "== pytest"
pytest -q "${TESTS[@]}" "$@"
