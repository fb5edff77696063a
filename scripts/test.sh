#!/usr/bin/env bash
# The test command: lint, the import contract, the type check and the whole test suite
# against real servers, ONNX Runtime and redis-server, in parallel (pytest-xdist).
#   ./scripts/test.sh            everything
#   ./scripts/test.sh --fast     ruff, lint-imports and the tests not marked slow, docker or
#                                faults: the tier to run after every change
# Further arguments go to pytest, e.g. ./scripts/test.sh tests/deploy -x
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"

fast=0
if [[ ${1:-} == --fast ]]; then
    fast=1
    shift
fi

# The session-store tests run a real redis-server; the profile's test samples with perf.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v perf >/dev/null || missing+=(linux-perf)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "${missing[*]} missing: install (e.g. sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

# Every step runs, whatever an earlier one found; the command fails if any step did.
failed=()
step() {
    echo "==> $*"
    "$@" || failed+=("${1##*/}")
}
step .venv/bin/ruff check .
step .venv/bin/ruff format --check .
step .venv/bin/lint-imports
if [[ $fast -eq 0 ]]; then
    step .venv/bin/mypy
fi

# Most tests wait on servers they started (model loading, gRPC round trips, Redis), so more
# workers than cores pay; -n N among the arguments chooses another number. --dist loadgroup
# keeps each xdist_group on one worker: the Docker stack's tests, and those of a session
# server that few tests use (tests/conftest.py).
pytest=(.venv/bin/pytest --numprocesses 4 --dist loadgroup)
if [[ $fast -eq 1 ]]; then
    pytest+=(-m "not slow and not docker and not faults")
fi
step "${pytest[@]}" "$@"

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "==> failed: ${failed[*]}" >&2
    exit 1
fi
