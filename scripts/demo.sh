#!/usr/bin/env bash
# The main job: build the default models if absent, start the server, drive it with the
# client (sine -> cosine, hello -> ohlol, seq2seq) and stop it. Extra arguments go to
# `rnnserve demo`, e.g. ./scripts/demo.sh --help
set -euo pipefail
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/rnnserve demo "$@"
