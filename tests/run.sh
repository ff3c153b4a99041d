#!/usr/bin/env bash
# The project's test command (README, .ci/run): installs what it needs (python3-venv,
# mosquitto, mbpoll and chromium via apt when missing, the venv), then ruff, mypy and
# pytest over the whole tree. Extra arguments go to pytest.
#
#   bash tests/run.sh           the full suite (README and CI run this)
#   bash tests/run.sh --fast    lint, types, unit and property tests only: pytest -m
#                               "not slow and not integration" (docs/development.md)
#
# Both in parallel pytest workers (pytest-xdist; DH_TEST_WORKERS, default 4, more than
# the cores on purpose: most long tests wait rather than compute; 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=0
if [[ "${1:-}" == "--fast" ]]; then
    FAST=1
    shift
fi
DH_TEST_PACKAGES=1 bash tests/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
SRC=(agent drivers simulator bench tests)
echo "== ruff"
ruff check "${SRC[@]}"
ruff format --check "${SRC[@]}"
echo "== mypy"
mypy "${SRC[@]}"
echo "== pytest"
workers=${DH_TEST_WORKERS:-4}
parallel=()
if ((workers > 0)); then
    # one test at a time to each worker (the long ones first: tests/conftest.py), so no
    # worker holds a queue of long tests while another is idle
    parallel=(-n "$workers" --maxschedchunk 1)
fi
if ((FAST)); then
    pytest -q "${parallel[@]}" -m "not slow and not integration" tests "$@"
else
    pytest -q "${parallel[@]}" tests "$@"
fi
