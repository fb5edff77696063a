#!/bin/sh
# Image setup shared by the server and builder targets of the Dockerfile: a virtualenv at
# /opt/venv holding the rnnserve wheel from /wheels with the given extra, the unprivileged
# user rnnserve (uid 10001) and the model repository /models it owns, so a fresh named
# volume mounted there is writable by that user.
# Usage: install.sh EXTRA [PIP_OPTION...]
set -eu
extra=$1
shift
set -- /wheels/rnnserve-*.whl "$@"
wheel=$1
shift
python3 -m venv /opt/venv
/opt/venv/bin/pip install --no-cache-dir "$@" "${wheel}[${extra}]"
rm -rf /wheels
useradd --system --uid 10001 --user-group --no-create-home rnnserve
mkdir -p /models
chown rnnserve:rnnserve /models
