#!/usr/bin/env bash
# Prepare .gpu-wheels/ (git-ignored): everything scripts/gpu-check.sh installs on a GPU
# machine that has no network and receives at most 64 MiB per transfer (docs/gpu.md). Run
# it here, where pip reaches an index, after the last change to the code the check should
# run (the project's own wheels are built from this tree):
#   scripts/gpu-wheels.sh
# It makes one folder per transfer, each under 60 MiB (the tree itself adds about 3):
#   carry-1 .. carry-4   onnxruntime-gpu 1.31.1 (CUDA 13, cp312), split into 58 MiB parts
#   carry-5              its last part and SHA256SUMS; deps/: the other dependencies as
#                        wheels for Python 3.12, manylinux x86_64, and the project's own
#                        wheels (the server part compiled by mypyc with PYTHON312, a
#                        Python 3.12); models/: the tiny default models the tests serve
# and checks here that the parts join into the wheel they came from (its SHA-256).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT=onnxruntime-gpu==1.31.1
PART_MIB=58
OUT=.gpu-wheels
PYTHON=.venv/bin/python
# A Python 3.12 with its headers, which compiles the server part for the GPU machines' 3.12.
PYTHON312=${PYTHON312:-python3.12}
# The GPU machines' Python and platform; binary wheels only (nothing builds there).
PLATFORM=(--python-version 3.12 --only-binary=:all:
          --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# What the server, the client, the GPU tier of the tests and `rnnserve bench --gpu` import
# beyond the standard library, torch and numpy's own: the parts' dependencies (each
# pyproject.toml) without k6 and matplotlib, which the GPU scenario does without.
DEPS=(grpcio grpcio-health-checking grpcio-reflection protobuf numpy pydantic
      pydantic-settings prometheus-client redis starlette uvicorn httptools uvloop nvidia-ml-py
      cryptography pytest pytest-timeout)

"$PYTHON312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || {
    echo "gpu-wheels: set PYTHON312 to a Python 3.12 (with its headers) to compile the server" >&2
    exit 1
}
rm -rf "$OUT"
mkdir -p "$OUT/download"
pip_download() { "$PYTHON" -m pip download --quiet --disable-pip-version-check "$@"; }

echo "gpu-wheels: $ORT"
pip_download --no-deps "${PLATFORM[@]}" -d "$OUT/download" "$ORT"
wheel=$(find "$OUT/download" -name 'onnxruntime_gpu-*.whl')
name=$(basename "$wheel")
split --bytes="${PART_MIB}M" --numeric-suffixes=1 --suffix-length=1 "$wheel" "$OUT/download/$name.part-"
last=0
for part in "$OUT/download/$name".part-*; do
    index=${part##*.part-}
    mkdir -p "$OUT/carry-$index"
    mv "$part" "$OUT/carry-$index/"
    last=$index
done
(cd "$OUT/download" && sha256sum "$name") >"$OUT/carry-$last/SHA256SUMS"

# The round trip, as gpu-check.sh makes it: the parts in order, joined, checked.
mkdir -p "$OUT/download/joined"
cat "$OUT"/carry-*/"$name".part-* >"$OUT/download/joined/$name"
(cd "$OUT/download/joined" && sha256sum --check --quiet "../../carry-$last/SHA256SUMS")
echo "gpu-wheels: $name split into $last parts, joined back: sha256 $(cut -c1-16 "$OUT/carry-$last/SHA256SUMS")... matches"

echo "gpu-wheels: dependencies for Python 3.12"
deps="$OUT/carry-$last/deps"
pip_download "${PLATFORM[@]}" --constraint requirements.lock -d "$deps" "${DEPS[@]}"
echo "gpu-wheels: the project's wheels, from this tree, the server part compiled by mypyc"
"$PYTHON" -m pip wheel --quiet --no-deps -w "$deps" ./protos ./model ./client ./export ./bench .
# The server part as the GPU image ships it, compiled for the GPU machines' Python; from a copy
# (mypyc leaves its output beside the sources).
build=$(mktemp -d)
cp -r service "$build/"
HATCH_BUILD_HOOK_ENABLE_MYPYC=true "$PYTHON312" -m pip wheel --quiet --no-deps -w "$deps" \
    "$build/service"
rm -rf "$build"
git rev-parse HEAD >"$deps/COMMIT"
git status --porcelain --untracked-files=no | grep -q . && echo "(uncommitted changes)" >>"$deps/COMMIT"
echo "(the server part compiled by mypyc for Python $("$PYTHON312" -c 'import platform
print(platform.python_version())'))" >>"$deps/COMMIT"

echo "gpu-wheels: the tiny models"
repository=$(cd tests && ../"$PYTHON" -c 'from model_cache import cached_repository; print(cached_repository("tiny", 0))')
cp -rL "$repository" "$OUT/carry-$last/models"

rm -rf "$OUT/download"
for folder in "$OUT"/carry-*; do
    echo "gpu-wheels: $folder $(du -sm "$folder" | cut -f1) MiB"
done
