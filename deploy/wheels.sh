#!/usr/bin/env bash
# Fill a local wheel folder (default deploy/wheels, the Dockerfile's WHEELS) with every wheel
# the images install: the dependencies of rnnserve[cpu,export] at the versions
# requirements.lock pins, and the build requirements of the parts (also for the GPU image's
# Python 3.12, which compiles its own server part), resolved by the Python given, which must be the images' own on the same
# architecture (dependencies can differ by patch release: redis needs async-timeout before
# 3.11.3); for deploy/base-image.sh's image that is Debian bookworm's /usr/bin/python3.
# Then the images build with no index at all:
#   docker build --build-arg PIP_NO_INDEX=1 --target server-cpu .
# pip's own configuration applies; torch must come out as its CPU build: give pip a folder or
# an index that has it (TORCH_INDEX_URL, e.g. PyTorch's CPU wheel index, is added as an extra
# index when set). Does nothing when the folder was filled by this script for these
# pyproject.toml files, lock and Python.
# Usage: PYTHON=/usr/bin/python3 deploy/wheels.sh [DIR]       (PYTHON default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-deploy/wheels}
python=${PYTHON:-python3}
stamp="$dir/.filled-for"

digest=$({ cat deploy/wheels.sh pyproject.toml ./*/pyproject.toml requirements.lock; "$python" -VV; } \
    | sha256sum | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$digest" ]]; then
    exit 0
fi
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "wheels.sh: the images run Python 3.11; run this with it (PYTHON=python3.11)" >&2
    exit 1
}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
# The build requirements, the mypyc hook's among them (the compiled server part).
mapfile -t build_requires < <("$python" -c 'import glob, tomllib
projects = [tomllib.load(open(p, "rb")) for p in ["pyproject.toml", *glob.glob("*/pyproject.toml")]]
hooks = [p.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
         .get("wheel", {}).get("hooks", {}).get("mypyc", {}) for p in projects]
requires = [r for p in projects for r in p["build-system"]["requires"]]
requires += [r for hook in hooks for r in hook.get("dependencies", [])]
print("\n".join(dict.fromkeys(requires)))')
extra_index=()
if [[ -n ${TORCH_INDEX_URL:-} ]]; then
    extra_index=(--extra-index-url "$TORCH_INDEX_URL")
fi
mkdir -p "$dir"
"$venv/bin/pip" wheel --quiet "${extra_index[@]}" --wheel-dir "$dir" \
    --constraint requirements.lock ./protos ./model ./client ./service ./export \
    '.[cpu,export]' "${build_requires[@]}"
# The GPU image compiles the server part with its own Python (Ubuntu 24.04's 3.12): the build
# requirements once more, as binary wheels for that Python.
"$venv/bin/pip" download --quiet --only-binary=:all: --python-version 3.12 \
    --platform "manylinux2014_$(uname -m)" --platform "manylinux_2_28_$(uname -m)" \
    --dest "$dir" "${build_requires[@]}"
rm -f "$dir"/rnnserve*.whl  # the images build their own
if ! ls "$dir"/torch-*+cpu-*.whl >/dev/null 2>&1; then
    echo "wheels.sh: pip did not pick torch's CPU build; set TORCH_INDEX_URL" >&2
    exit 1
fi
echo "$digest" >"$stamp"
