"""The default store: states in this process's memory."""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.sessions.state import Layout, SessionKey, State, check_layout, layout_of


@dataclass
class _Entry:
    state: State
    deadline: float  # time.monotonic() after which the session has expired


class MemoryStore:
    def __init__(self, idle_timeout_s: float = 60.0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._entries: dict[SessionKey, _Entry] = {}
        # Expired entries noticed outside expire(), waiting to be reported by it.
        self._noticed: list[SessionKey] = []

    async def load(self, key: SessionKey, expected: Layout) -> State | None:
        entry = self._live(key)
        if entry is None:
            return None
        check_layout(key, layout_of(entry.state), expected)
        return entry.state

    async def save(self, key: SessionKey, state: State) -> None:
        self._entries[key] = _Entry(state, time.monotonic() + self.idle_timeout_s)

    async def contains(self, key: SessionKey) -> bool:
        return self._live(key) is not None

    async def delete(self, key: SessionKey) -> bool:
        return self._entries.pop(key, None) is not None

    async def count(self) -> int:
        return len(self._entries)

    async def expire(self) -> list[SessionKey]:
        now = time.monotonic()
        expired = [key for key, entry in self._entries.items() if entry.deadline < now]
        for key in expired:
            del self._entries[key]
        expired += self._noticed
        self._noticed = []
        return expired

    async def close(self) -> None:
        self._entries.clear()

    def _live(self, key: SessionKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.deadline < time.monotonic():
            del self._entries[key]
            self._noticed.append(key)
            return None
        return entry
