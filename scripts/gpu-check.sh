#!/usr/bin/env bash
# The GPU proof in one call (docs/gpu.md). On a machine with an NVIDIA GPU:
#   1. installs onnxruntime-gpu and the project from .gpu-wheels/ (scripts/gpu-wheels.sh
#      made it; the parts were carried there one transfer each): local files only;
#   2. checks that every default model runs on CUDAExecutionProvider;
#   3. runs the GPU tier of the tests (tests/gpu: CUDA equals the CPU provider within 1e-5,
#      chunked equals whole with the state on the GPU, 10,000 sessions);
#   4. runs `rnnserve bench --gpu` (CPU and CUDA, device_state on and off).
# Without a GPU it says so in one line and, after the same benchmark on the CPU alone with
# tiny durations (a dry run of the harness), exits 0.
# Results go to $OUT (the device tool's folder that comes back), else $WORK/out:
# models.txt, gpu-tests.xml and the log, bench/gpu.json, bench/gpu.svg, bench/README.md.
# Within 8 minutes on a 16-core H100 machine: its stages' time limits add up to 480 s
# (install 90, models 45, tests 135, bench 210).
#   PYTHON   the interpreter to install for (default python3: the GPU machines' 3.12)
#   WORK     scratch space (default /tmp/rnnserve-gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/rnnserve-gpu-check}
OUT=${OUT:-$WORK/out}
WHEELS=.gpu-wheels
mkdir -p "$WORK" "$OUT"
say() { echo "gpu-check [$((SECONDS - started)) s]: $*"; }

gpu=no
if ls /proc/driver/nvidia/gpus/* >/dev/null 2>&1 || ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
    gpu=yes
fi

# 1. Install from local files only: the wheel's parts joined and checked, then onnxruntime-gpu
# and every other wheel into one folder that comes first on the path (it shadows the CPU
# onnxruntime installed there).
# A fresh checkout has no $WHEELS: find fails, and with pipefail so would this line.
sums=$(find "$WHEELS" -maxdepth 2 -name SHA256SUMS 2>/dev/null | head -1 || true)
if [ -n "$sums" ]; then
    name=$(awk '{print $2}' "$sums")
    carried=$(find "$WHEELS" -maxdepth 2 -name "$name.part-*" | sort)
    say "joining $(echo "$carried" | wc -l) parts of $name"
    # shellcheck disable=SC2086  # one path per line, none with spaces (gpu-wheels.sh names them)
    cat $carried >"$WORK/$name"
    (cd "$WORK" && sha256sum --check --quiet "$OLDPWD/$sums")
    deps=$(dirname "$sums")/deps
    rm -rf "$WORK/site"
    timeout 90 "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --target "$WORK/site" "$WORK/$name" "$deps"/*.whl
    export PYTHONPATH="$WORK/site"
    export RNNSERVE_GPU_MODELS
    RNNSERVE_GPU_MODELS=$(cd "$(dirname "$sums")/models" && pwd)
    say "installed for $("$PYTHON" -V) from $(cat "$deps/COMMIT" | tr '\n' ' ')"
elif [ "$gpu" = yes ]; then
    echo "gpu-check: no $WHEELS/carry-*/SHA256SUMS: run scripts/gpu-wheels.sh and carry its folders" >&2
    exit 1
else
    PYTHON=.venv/bin/python  # the dry run in this checkout's environment
fi
models=${RNNSERVE_GPU_MODELS:-}
if [ -z "$models" ]; then
    models=$(cd tests && "../$PYTHON" -c 'from model_cache import cached_repository; print(cached_repository("tiny", 0))')
fi

if [ "$gpu" = no ]; then
    echo "gpu-check: no NVIDIA GPU here: the CPU dry run only (rnnserve bench --gpu --quick), no CUDA figure"
    timeout 300 "$PYTHON" -m rnnserve bench --gpu --quick --out "$OUT/bench" \
        --model-repository "$models" >"$OUT/bench.log" 2>&1 || {
        tail -20 "$OUT/bench.log" >&2
        exit 1
    }
    say "dry run done: $OUT/bench/gpu.json"
    exit 0
fi

# 2. Every default model on CUDA.
say "onnxruntime: $("$PYTHON" -c 'import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())')"
timeout 45 "$PYTHON" - "$models" <<'EOF' | tee "$OUT/models.txt"
import sys
from pathlib import Path

from rnnserve.model.folder import read_version
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.settings import Settings

failed = []
for folder in sorted(Path(sys.argv[1]).iterdir()):
    _, graphs = read_version(folder / "1")
    provider = ModelRuntime(folder.name, "1", graphs, Settings()).provider
    print(f"{folder.name}: {provider}")
    if provider != "CUDAExecutionProvider":
        failed.append(folder.name)
if failed:
    sys.exit(f"not on CUDA: {', '.join(failed)}")
EOF
say "every default model runs on CUDAExecutionProvider"

# 3. The GPU tier of the tests.
status=0
timeout 135 "$PYTHON" -m pytest -q -p no:cacheprovider tests/gpu --junitxml "$OUT/gpu-tests.xml" \
    >"$OUT/gpu-tests.log" 2>&1 || status=$?
tail -15 "$OUT/gpu-tests.log"
[ "$status" = 0 ] || { say "the GPU tier failed ($status)"; exit 1; }
say "the GPU tier passed"

# 4. The benchmark: half a second per figure (64 of them), after a start and a warm-up round.
timeout 210 "$PYTHON" -m rnnserve bench --gpu --duration 0.5 --runs 1 --out "$OUT/bench" \
    --model-repository "$models" >"$OUT/bench.log" 2>&1 || {
    tail -20 "$OUT/bench.log" >&2
    exit 1
}
say "bench done: $OUT/bench/gpu.json, $OUT/bench/gpu.svg"
