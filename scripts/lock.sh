#!/usr/bin/env bash
# Write requirements.lock: every third-party package that rnnserve's parts, with all their
# extras and the dev tools, resolve to, pinned. The libraries (each part's pyproject.toml)
# declare ranges; the scripts, CI and images install what this file pins. Run it after
# changing a dependency, with the Python the project runs on (3.11):
#   scripts/lock.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
# torch is asked for by version: its CPU build 2.13.0 (a range would resolve to a CUDA build
# of several GB).
# nvidia-ml-py: the rest of the server's `gpu` extra (pure Python), pinned beside the CPU build.
"$venv/bin/pip" install --quiet ./protos ./model ./client './service[cpu]' './export[train]' \
    ./bench '.[cpu,export,bench,dev]' torch==2.13.0 nvidia-ml-py
{
    echo "# Written by scripts/lock.sh with $("$venv/bin/python" -V); do not edit by hand."
    "$venv/bin/pip" freeze --all --exclude pip --exclude setuptools --exclude wheel \
        | grep -v '^rnnserve' \
        | sed 's/^torch==\([0-9.]*\)+cpu$/torch==\1/'  # the release, whichever build serves it
    # The GPU image's ONNX Runtime, which cannot be installed beside the CPU build above: the
    # release whose CUDA provider links CUDA 13, the CUDA of the GPU image's base.
    echo "onnxruntime-gpu==1.31.1"
} >requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
