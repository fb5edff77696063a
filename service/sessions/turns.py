"""Turns: one holder per session at a time, waiters served first come, first served.

What an asyncio.Lock per session would give, without creating a lock for every session a
request names: a free session is taken by one dictionary insert, and a waiting queue
exists only while the session is held.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Iterable


class Turns:
    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}  # held keys

    def held(self, key: Hashable) -> bool:
        return key in self._waiting

    def take_free(self, keys: Iterable[Hashable]) -> None:
        """Takes keys that no one holds (the caller checked), without waiting."""
        for key in keys:
            self._waiting[key] = deque()

    async def take(self, key: Hashable) -> None:
        """Takes the key's turn once every earlier taker has given it back."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = deque()
            return
        turn = asyncio.get_running_loop().create_future()
        waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the turn, then cancelled
                self.give(key)
            raise

    def give(self, key: Hashable) -> None:
        """Gives the key's turn to its first waiter still waiting, or frees it."""
        waiting = self._waiting[key]
        while waiting:
            turn = waiting.popleft()
            if not turn.done():  # a cancelled waiter's turn is done: skip it
                turn.set_result(None)
                return
        del self._waiting[key]
