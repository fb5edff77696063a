"""The tiny model repository the tests serve, built once per content and kept.

Training the nine default models takes minutes, and what comes out depends only on the
code that trains, exports and describes them (the export and model parts' sources), the
preset, the seed and the versions of the libraries that do the work. The repository is
built into `.cache/models/<digest>/` in the checkout (git-ignored), the folder named by a
digest of all that; a later run with the same digest reuses it, and a change to any of it
builds a new one.

pytest-xdist workers ask for it at once: one builds under a file lock while the others wait
for it, and the build goes into a hidden temporary folder renamed into place whole, so a
folder named by a digest is always complete (a build that died leaves only the hidden one,
removed by the next build).

The cached repository is shared, so no test may write into it: `fingerprint` lets the
fixture that hands it out check, after the tests, that nothing did.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

from locks import exclusive

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "models"
# The code whose output the models are: training and export, and the description written
# beside each graph.
SOURCES = [ROOT / "export" / "src", ROOT / "model" / "src"]
# The libraries that train (torch, numpy's data), export (onnx, onnxscript) and check them.
LIBRARIES = ["torch", "numpy", "onnx", "onnxscript", "onnxruntime"]
BUILD_WAIT_S = 900  # another process building the same repository on a busy machine


def cached_repository(preset: str, seed: int) -> Path:
    """The repository of the default models built with `preset` and `seed`: from the cache,
    or built into it first."""
    target = CACHE / digest(preset, seed)
    if target.is_dir():
        return target  # only ever renamed into place complete
    CACHE.mkdir(parents=True, exist_ok=True)
    with exclusive(CACHE / f".{target.name}.lock", BUILD_WAIT_S):
        if not target.is_dir():  # nobody built it while this process waited
            _build(target, preset, seed)
    return target


def digest(preset: str, seed: int) -> str:
    """Of everything that decides what the built models are."""
    sha = hashlib.sha256(f"preset={preset}\nseed={seed}\n".encode())
    for library in LIBRARIES:
        sha.update(f"{library}=={version(library)}\n".encode())
    for source in SOURCES:
        for path in sorted(p for p in source.rglob("*") if _is_source(p)):
            sha.update(f"{path.relative_to(ROOT).as_posix()}\n".encode())
            sha.update(hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()[:16]


def fingerprint(root: Path) -> set[tuple[str, int, int]]:
    """Every file and folder under `root` with its size and modification time: a write,
    an added or a removed file changes it."""
    return {
        (path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns)
        for path in (root, *root.rglob("*"))
        for stat in [path.stat()]
    }


def _is_source(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts


def _build(target: Path, preset: str, seed: int) -> None:
    from rnnserve.export.build import build_repository

    for stale in CACHE.glob(f".{target.name}-*"):  # a build that died; the lock is ours
        shutil.rmtree(stale)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=CACHE))
    try:
        build_repository(staging, preset=preset, seed=seed)
        staging.chmod(0o755)  # mkdtemp made it 0700; a repository is readable by all
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
