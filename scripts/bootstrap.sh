# Sourced by demo.sh and test.sh: make ./.venv hold every part of rnnserve (editable) and
# everything its demo and tests need, at the versions requirements.lock pins. Creating the
# virtualenv and installing take minutes the first time; after that a stamp file newer
# than every input makes this a no-op.
# shellcheck shell=bash

cd "$(dirname "${BASH_SOURCE[0]}")/.."

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3; do
        if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$candidate"
            return 0
        fi
    done
    echo "rnnserve needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

if [[ ! -x .venv/bin/python ]]; then
    python=$(find_python)
    echo "==> creating .venv with $python"
    "$python" -m venv .venv
fi

stamp=.venv/.rnnserve-installed
# Reinstall when anything the install depends on changed: the parts' dependencies, the lock,
# or the protos that the build hook compiles into the protocol's inference.protoset.
stale=0
for input in pyproject.toml ./*/pyproject.toml requirements.lock protos/hatch_build.py \
    protos/*.proto; do
    [[ "$stamp" -nt "$input" ]] || stale=1
done
if [[ $stale -eq 1 ]]; then
    echo "==> installing rnnserve's parts (editable) with requirements.lock into .venv"
    # Every part editable: the source tree stays importable as edited. The lock pins torch to
    # the CPU build 2.13.0 (export's `train` extra).
    .venv/bin/python -m pip install --quiet --constraint requirements.lock \
        -e protos -e model -e client -e 'service[cpu]' -e 'export[train]' -e bench \
        -e '.[cpu,export,bench,dev]'
    touch "$stamp"
fi
