"""The default store: states in this process's memory.

An idle session costs little more than its state's bytes: one contiguous array holds all
of its state tensors, in a slotted entry, and the stems are shared by every session of a
model.
"""

from __future__ import annotations

import time

import numpy as np

from service.sessions.state import Layout, SessionKey, State, check_layout


class _Entry:
    __slots__ = ("data", "deadline", "stems")

    def __init__(self, stems: tuple[str, ...], data: np.ndarray, deadline: float) -> None:
        self.stems = stems
        self.data = data  # the state tensors stacked: (len(stems), *one tensor's shape)
        self.deadline = deadline  # time.monotonic() after which the session has expired


class MemoryStore:
    def __init__(self, idle_timeout_s: float = 60.0) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._entries: dict[SessionKey, _Entry] = {}
        self._stems: dict[tuple[str, ...], tuple[str, ...]] = {}  # one copy of each
        # Expired entries noticed outside expire(), waiting to be reported by it.
        self._noticed: list[SessionKey] = []

    async def load(self, key: SessionKey, expected: Layout) -> State | None:
        entry = self._live(key)
        if entry is None:
            return None
        layout = {stem: entry.data.shape[1:] for stem in entry.stems}
        check_layout(key, layout, expected)
        return dict(zip(entry.stems, entry.data, strict=True))

    async def save(self, key: SessionKey, state: State) -> None:
        stems = tuple(state)
        stems = self._stems.setdefault(stems, stems)
        data = np.stack(list(state.values()))  # a copy: a stored row pins no batch array
        self._entries[key] = _Entry(stems, data, time.monotonic() + self.idle_timeout_s)

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
