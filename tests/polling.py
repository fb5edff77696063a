"""Waiting for what a server under test does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Until `check()` holds; fails naming `what` after `timeout_s` (polled, no sleep
    assumed long enough)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)
