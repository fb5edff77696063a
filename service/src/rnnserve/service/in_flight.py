"""Requests in flight, counted, and a wait for the last of them: the data plane's (it drains
before it closes) and each model version's (an unloaded version finishes its own)."""

from __future__ import annotations

import asyncio


class InFlight:
    """Requests in flight, and a wait for none."""

    def __init__(self) -> None:
        self.count = 0
        # Made by a wait for none and set when none is: entered and left on every request,
        # the counter touches no event unless one waits (asyncio.Event's methods are Python).
        self._none: asyncio.Event | None = None

    def request(self) -> InFlight:
        """One request in flight while in its `with` block (the counter is its own context
        manager: entered on every request, it costs no generator)."""
        return self

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *_: object) -> None:
        self.count -= 1
        if self.count == 0 and self._none is not None:
            self._none.set()
            self._none = None

    async def idle(self, grace_period_s: float) -> bool:
        """Waits until none is in flight, at most the grace period; whether none is."""
        if self.count == 0:
            return True
        if self._none is None:
            self._none = asyncio.Event()
        try:
            await asyncio.wait_for(self._none.wait(), grace_period_s)
        except TimeoutError:
            return False
        return True
