"""Turns that the test processes of one machine take: the pytest-xdist workers of a run, and
other runs, at something they would otherwise do twice at once (build the model cache,
install a tool, run the Docker daemon's tests). flock: the kernel lets go of a lock whose
holder died."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

POLL_S = 0.2


@contextmanager
def exclusive(path: Path, wait_s: float) -> Iterator[None]:
    """Holds the lock on `path` (made if missing), waiting up to `wait_s` seconds for the
    process that holds it; the test fails after that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} still held after {wait_s:g} s by another test process")
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
