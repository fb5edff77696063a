"""Requests in flight, counted, and a wait for the last of them: the data plane's (it drains
before it closes) and each model version's (an unloaded version finishes its own)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class InFlight:
    """Requests in flight, and a wait for none."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def idle(self, grace_period_s: float) -> bool:
        """Waits until none is in flight, at most the grace period; whether none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_period_s)
        except TimeoutError:
            return False
        return True
