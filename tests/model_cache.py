"""Models the tests build with torch, built once per content and kept: the tiny model
repository the tests serve, and the users' exports of tests/user_exports.py.

Training the nine default models takes minutes, exporting the own-model matrix minutes
more, and what comes out depends only on the code that makes them (for the default models
the export and model parts' sources, for the users' exports tests/user_exports.py), what
it is asked for (a preset, a seed), and the versions of the libraries that do the work.
Each is built into `.cache/<kind>/<digest>/` in the checkout (git-ignored), the folder
named by a digest of all that; a later run with the same digest reuses it, and a change to
any of it builds a new one.

pytest-xdist workers ask for it at once: one builds under a file lock while the others wait
for it, and the build goes into a hidden temporary folder renamed into place whole, so a
folder named by a digest is always complete (a build that died leaves only the hidden one,
removed by the next build).

What is cached is shared, so no test may write into it: `fingerprint` lets the fixture
that hands it out check, after the tests, that nothing did.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from locks import exclusive

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
# The code whose output the default models are: training and export, and the description
# written beside each graph.
SOURCES = [ROOT / "export" / "src", ROOT / "model" / "src"]
# The libraries that train (torch, numpy's data), export (onnx, onnxscript) and check them.
LIBRARIES = ["torch", "numpy", "onnx", "onnxscript", "onnxruntime"]
BUILD_WAIT_S = 900  # another process building the same models on a busy machine


def cached_repository(preset: str, seed: int) -> Path:
    """The repository of the default models built with `preset` and `seed`: from the cache,
    or built into it first."""

    def build(staging: Path) -> None:
        from rnnserve.export.build import build_repository

        build_repository(staging, preset=preset, seed=seed)

    return cached("models", f"preset={preset}\nseed={seed}\n", SOURCES, build)


def cached(kind: str, asked: str, sources: Sequence[Path], build: Callable[[Path], None]) -> Path:
    """The folder `build` fills, asked for `asked` (any text that tells builds of the same
    sources apart): from `.cache/<kind>/`, or built into it first."""
    folder = CACHE / kind
    target = folder / digest(asked, sources)
    if target.is_dir():
        return target  # only ever renamed into place complete
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / f".{target.name}.lock", BUILD_WAIT_S):
        if not target.is_dir():  # nobody built it while this process waited
            _build(target, build)
    return target


def digest(asked: str, sources: Sequence[Path]) -> str:
    """Of everything that decides what is built: what was asked for, the libraries'
    versions, and every file of `sources` (folders or files) by path and content."""
    sha = hashlib.sha256(asked.encode())
    for library in LIBRARIES:
        sha.update(f"{library}=={version(library)}\n".encode())
    for source in sources:
        for path in sorted(p for p in [source, *source.rglob("*")] if _is_source(p)):
            sha.update(f"{path.relative_to(ROOT).as_posix()}\n".encode())
            sha.update(hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()[:16]


def cached_exports(kind: str, export: Callable[[Path], None]) -> Path:
    """The folder `export`, a function of tests/user_exports.py, writes: from
    `.cache/<kind>/`, or written into it first."""
    return cached(kind, "", [ROOT / "tests" / "user_exports.py"], export)


@contextmanager
def unchanged(root: Path) -> Iterator[Path]:
    """`root`, checked on leaving to be as it was on entering: for a fixture that hands
    out a cached folder, which every test and every run shares."""
    before = fingerprint(root)
    yield root
    assert fingerprint(root) == before, f"a test wrote into the shared {root}"


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


def _build(target: Path, build: Callable[[Path], None]) -> None:
    for stale in target.parent.glob(f".{target.name}-*"):  # a build that died; the lock is ours
        shutil.rmtree(stale)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        staging.chmod(0o755)  # mkdtemp made it 0700; what is cached is readable by all
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
