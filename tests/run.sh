#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs (python3-venv and
# mosquitto via apt when missing, the venv), then ruff, mypy and pytest over the whole
# tree. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
SRC=(agent drivers simulator bench tests)
echo "== ruff"
ruff check "${SRC[@]}"
ruff format --check "${SRC[@]}"
echo "== mypy"
mypy "${SRC[@]}"
echo "== pytest"
pytest -q tests "$@"
