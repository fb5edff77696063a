#!/usr/bin/env bash
# The test command: lint and the whole test suite against real servers, ONNX Runtime and
# redis-server. Extra arguments go to pytest, e.g. ./scripts/test.sh tests/deploy -x
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"

# The session-store tests run a real redis-server.
if ! command -v redis-server >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "==> installing redis-server"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
        echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server)" >&2
        exit 1
    fi
fi

echo "==> ruff check, ruff format --check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> pytest"
exec .venv/bin/pytest "$@"
