"""The model repository on disk: models/<name>/<version>/, versions integers from 1.

A version appears whole or not at all: it is written into a hidden staging folder next to
the model folders and renamed into place only after every check passed. A published version
and its model folder are readable by every user whatever the umask (folders 0755, files 0644):
the server may run as another user than the build, as the container images' rnnserve does
over a repository built on the host.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rnnserve.protocol.errors import UsageError


def ensure_writable(root: Path) -> None:
    """Fail early, with one line, if models cannot be written under `root`."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".rnnserve-probe-", dir=root):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to output directory {root}: {error.strerror}") from None


def versions(root: Path, name: str) -> list[int]:
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(root: Path, name: str) -> int:
    return max(versions(root, name), default=0) + 1


@contextmanager
def staged_version(root: Path, name: str, version: int) -> Iterator[Path]:
    """A scratch folder to write the version into; renamed to root/name/version if the
    block completes, removed if it raises."""
    target = root / name / str(version)
    if target.exists():
        raise UsageError(f"{target} already exists: pass a new version or --skip-existing")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-{version}-", dir=root))
    try:
        yield staging
        readable_by_all(staging)  # mkdtemp made it 0700
        if not target.parent.exists():
            target.parent.mkdir()
            target.parent.chmod(0o755)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def readable_by_all(folder: Path) -> None:
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
