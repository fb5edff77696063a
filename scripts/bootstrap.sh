# Sourced by demo.sh and test.sh: make ./.venv hold every part of rnnserve (editable) and
# everything its demo and tests need, at the versions requirements.lock pins. Creating the
# virtualenv and installing take minutes the first time; after that a stamp file newer
# than every input makes this a no-op.
# With RNNSERVE_COMPILED=1 (CI's .ci/run) the server part is installed as the wheel the
# images ship instead, its hot modules compiled by mypyc (service/pyproject.toml), so that
# the tests run what production runs; without it, editable again.
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

# The server part compiled (RNNSERVE_COMPILED=1) or editable, as asked. Its wheel is built
# from a copy: mypyc's build leaves the compiled modules beside the sources it compiled,
# where an editable install would import them.
compiled=.venv/.rnnserve-compiled
if [[ ${RNNSERVE_COMPILED:-0} == 1 ]]; then
    stale=0
    while IFS= read -r -d '' input; do
        [[ "$compiled" -nt "$input" ]] || stale=1
    done < <(find service \( -name '*.py' -o -name '*.toml' -o -name '*.ini' \) -print0)
    [[ "$compiled" -nt "$stamp" ]] || stale=1
    if [[ $stale -eq 1 ]]; then
        echo "==> compiling the server part with mypyc (a few minutes) and installing its wheel"
        rm -f "$compiled"
        build=$(mktemp -d)
        cp -r service "$build/"
        HATCH_BUILD_HOOK_ENABLE_MYPYC=true .venv/bin/python -m pip wheel --quiet --no-deps \
            --wheel-dir "$build/dist" "$build/service" \
            && .venv/bin/python -m pip install --quiet --no-deps --force-reinstall \
                "$build"/dist/*.whl \
            && touch "$compiled"
        rm -rf "$build"
        [[ -f "$compiled" ]] || return 1
    fi
elif [[ -f "$compiled" ]]; then
    echo "==> installing the server part editable again (RNNSERVE_COMPILED is not 1)"
    .venv/bin/python -m pip install --quiet --no-deps -e service
    rm -f "$compiled"
fi
