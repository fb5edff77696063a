#!/bin/sh
# The RUN steps of the Dockerfile, one subcommand each:
#   runtime         trust the *.crt in /tmp/ca-certificates; make the user rnnserve (uid and
#                   gid 10001, home /home/rnnserve) and the model repository /models it owns,
#                   so that a fresh named volume mounted there is writable by that user
#   deps EXTRAS     a virtualenv at /opt/venv with the dependencies of rnnserve[EXTRAS] as
#                   the pyproject.toml files under /tmp/project list them (the parts' own,
#                   followed through their rnnserve-* requirements), at the versions that
#                   /tmp/project/requirements.lock pins, from the wheels in /tmp/wheels first
#   wheel WHEELS    /dist/rnnserve*.whl, one per part, built from /src, build requirements
#                   from the wheels in WHEELS first; and, unless COMPILED=0, the server part
#                   compiled by mypyc too (a C compiler installed from the distribution's
#                   archive), for this stage's Python
#   compiled WHEELS /dist holding only that compiled server part, for this stage's Python (the
#                   GPU image's, which is not the wheel stage's); empty with COMPILED=0
#   rnnserve EXTRAS install rnnserve[EXTRAS] from /dist into /opt/venv, which must already
#                   hold every dependency (no index is asked)
# From the environment (the build arguments): PIP_NO_INDEX and PIP_INDEX_URL, read by pip,
# TORCH_INDEX_URL, the index of torch's CPU build for `deps` when /tmp/wheels has no torch, and
# COMPILED (default 1), whether `wheel` and `compiled` build the compiled server part.
set -eu

# Debian's and Ubuntu's bundle, extra certificates included; pip's own bundle lacks them.
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The requirements of rnnserve[EXTRAS], one a line: the parts' own, found by following the
# rnnserve-* requirements through the parts' pyproject.toml files under /tmp/project.
requirements() {
    python3 - "$1" <<'EOF'
import re
import sys
import tomllib
from pathlib import Path

parts = {}
for path in Path("/tmp/project").glob("**/pyproject.toml"):
    project = tomllib.loads(path.read_text())["project"]
    parts[project["name"]] = project


def requirements(name, extras):
    project = parts[name]
    optional = project.get("optional-dependencies", {})
    for requirement in project["dependencies"] + [r for e in extras for r in optional[e]]:
        part = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", requirement)
        if part[1] in parts:
            yield from requirements(part[1], part[2].split(",") if part[2] else [])
        else:
            yield requirement


print("\n".join(dict.fromkeys(requirements("rnnserve", sys.argv[1].split(",")))))
EOF
}

# Only a folder holding wheels is offered to pip: a fresh checkout's holds just its README.
find_links() {
    if ls "$1"/*.whl >/dev/null 2>&1; then
        export PIP_FIND_LINKS="$1"
    fi
}

# A C compiler, and Python's headers where the interpreter has none (Debian's python3), for
# mypyc: from the distribution's archive, into the wheel stage only (thrown away after).
compiler() {
    packages="gcc libc6-dev"
    python3 -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || packages="$packages python3-dev"
    apt-get update
    # shellcheck disable=SC2086  # one package a word
    apt-get install -y --no-install-recommends $packages
    rm -rf /var/lib/apt/lists/*
}

# The server part's wheel once more, its hot modules compiled by mypyc
# (service/pyproject.toml) for this stage's Python: a Python of that version prefers it to the
# pure wheel. Built after the pure wheel, since mypyc leaves its output beside the sources.
compiled_wheel() {
    compiler
    HATCH_BUILD_HOOK_ENABLE_MYPYC=true /tmp/venv/bin/pip wheel --no-deps --wheel-dir /dist \
        /src/service
}

case $1 in
runtime)
    find /tmp/ca-certificates -name '*.crt' -exec cp {} /usr/local/share/ca-certificates/ \;
    rm -rf /tmp/ca-certificates
    update-ca-certificates
    groupadd --gid 10001 rnnserve
    useradd --uid 10001 --gid rnnserve --create-home --home-dir /home/rnnserve \
        --shell /usr/sbin/nologin rnnserve
    mkdir -p /models
    chown rnnserve:rnnserve /models
    ;;
deps)
    extras=$2
    find_links /tmp/wheels
    set --
    if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1 || [ -n "${PIP_NO_INDEX:-}" ]; then
        :  # torch, if wanted, comes from the wheels
    elif [ -n "${TORCH_INDEX_URL:-}" ]; then
        # Both indexes offer torch==X; pip prefers the CPU index's X+cpu (a higher version).
        set -- --extra-index-url "$TORCH_INDEX_URL"
    fi
    [ -x /opt/venv/bin/pip ] || python3 -m venv /opt/venv
    requirements "$extras" >/tmp/requirements.txt
    /opt/venv/bin/pip install "$@" --constraint /tmp/project/requirements.lock \
        --requirement /tmp/requirements.txt
    rm -rf /tmp/wheels /tmp/project /tmp/requirements.txt
    ;;
wheel)
    find_links "$2"
    python3 -m venv /tmp/venv
    for part in protos model client service export .; do
        /tmp/venv/bin/pip wheel --no-deps --wheel-dir /dist "/src/$part"
    done
    if [ "${COMPILED:-1}" = 1 ]; then
        compiled_wheel
    fi
    ;;
compiled)
    mkdir -p /dist  # empty with COMPILED=0: the image then takes the pure wheel
    if [ "${COMPILED:-1}" = 1 ]; then
        find_links "$2"
        python3 -m venv /tmp/venv
        compiled_wheel
    fi
    ;;
rnnserve)
    /opt/venv/bin/pip install --no-index --find-links /dist "rnnserve[$2]"
    rm -rf /dist
    if [ "$2" = gpu ]; then
        # ONNX Runtime falls back to the CPU quietly when its CUDA provider cannot be loaded:
        # refuse an image whose provider needs a library the base image lacks (an
        # onnxruntime-gpu built for another CUDA major). libcuda comes with the driver.
        provider=$(/opt/venv/bin/python -c 'import onnxruntime, pathlib
print(pathlib.Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so")')
        if ldd "$provider" | grep -v 'libcuda\.so' | grep 'not found'; then
            echo "install.sh: the CUDA provider of onnxruntime-gpu cannot load here" >&2
            exit 1
        fi
    fi
    ;;
*)
    echo "install.sh: unknown step $1" >&2
    exit 2
    ;;
esac
