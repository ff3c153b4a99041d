#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs, then ruff, mypy
# and the whole pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
pytest -q "$@"
