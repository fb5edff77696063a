"""The sessions a worker holds, in its memory, and what Redis has yet to hear of them."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence

from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.state import SessionKey, tombstone_s


class Held:
    """The states and progress of the sessions this worker holds (a MemoryStore: a step
    needs no Redis round trip), and which of them Redis has yet to hear of."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.states = MemoryStore(idle_timeout_s)
        self.touched: set[SessionKey] = set()  # saved since the last refresh
        # Released by a batch that failed (a failover): whether Redis has the release is
        # unknown, so the copy here is not stepped again before Redis is asked (takeover.py).
        self.unsure: set[SessionKey] = set()
        # Being ended or deleted: written to Redis, then dropped here.
        self.ending: set[SessionKey] = set()

    @property
    def idle_timeout_s(self) -> float:
        return self.states.idle_timeout_s

    @property
    def tombstone_ms(self) -> int:
        return round(tombstone_s(self.idle_timeout_s) * 1000)

    def forget(self, keys: Collection[SessionKey]) -> None:
        """`keys` left this worker: Redis is to hear nothing more of them from here."""
        self.touched.difference_update(keys)
        self.unsure.difference_update(keys)

    @contextlib.contextmanager
    def ending_of(self, keys: Collection[SessionKey]) -> Iterator[None]:
        """While `keys` are ended in Redis and then dropped here (Ownership.claim_again)."""
        self.ending.update(keys)
        try:
            yield
        finally:
            self.ending.difference_update(keys)

    async def drop(self, keys: Sequence[SessionKey]) -> list[bool]:
        """Frees the states of `keys` here and forgets them; per key, True when there was
        one."""
        deleted = await self.states.delete(keys)
        self.forget(keys)
        return deleted
