"""Turns: one holder per session at a time, waiters served first come, first served.

What an asyncio.Lock per session would give, without creating a lock for every session a
request names: a free session is taken by one dictionary insert, and a waiting queue
exists only while the session is held.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any


class Turns:
    def __init__(self) -> None:
        # Held keys and their waiters: () until one waits (most steps never see another).
        self._waiting: dict[Hashable, deque[asyncio.Future[None]] | tuple[()]] = {}

    def held(self, key: Hashable) -> bool:
        return key in self._waiting

    def take_all_free(self, keys: Sequence[Hashable]) -> bool:
        """Takes every key, without waiting, when no one holds any; False, taking none,
        when one is held."""
        waiting = self._waiting
        for key in keys:
            if key in waiting:
                return False
        waiting.update(dict.fromkeys(keys, ()))
        return True

    async def take(self, key: Hashable) -> None:
        """Takes the key's turn once every earlier taker has given it back."""
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = ()
            return
        if not isinstance(waiting, deque):
            waiting = self._waiting[key] = deque()
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
        while isinstance(waiting, deque) and waiting:
            turn = waiting.popleft()
            if not turn.done():  # a cancelled waiter's turn is done: skip it
                turn.set_result(None)
                return
        del self._waiting[key]

    def give_all(self, keys: Iterable[Hashable]) -> None:
        """`give` of each key (a batch's): most have no waiter, and are freed here."""
        waiting = self._waiting
        for key in keys:
            if waiting[key]:  # a queue of waiters, one of which may still wait
                self.give(key)
            else:
                del waiting[key]

    def holding(self, keys: Sequence[Hashable], order: Callable[[Any], Any]) -> Holding:
        """The turn of every key in `keys` (no key twice), held in a `async with` block.

        When another holder has one of the keys, the turns are taken one by one in one
        global order (`order`, a sort key), so holders naming the same keys in any order
        cannot deadlock; when none is held, all are taken at once, without waiting.
        """
        return Holding(self, keys, order)


class Holding:
    """`Turns.holding`'s block (a class, not an async generator: entered on every step)."""

    __slots__ = ("_keys", "_order", "_turns")

    def __init__(self, turns: Turns, keys: Sequence[Hashable], order: Callable[[Any], Any]):
        self._turns = turns
        self._keys = keys
        self._order = order

    async def __aenter__(self) -> None:
        turns, keys = self._turns, self._keys
        if turns.take_all_free(keys):
            return
        taken: list[Hashable] = []
        try:
            for key in sorted(keys, key=self._order):
                await turns.take(key)
                taken.append(key)
        except BaseException:  # cancelled while waiting: give back what it took
            for key in taken:
                turns.give(key)
            raise

    async def __aexit__(self, *_: object) -> None:
        self._turns.give_all(self._keys)
