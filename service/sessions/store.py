"""The interface every state store offers the session manager, and the choice of store."""

from __future__ import annotations

from typing import Protocol

from service.sessions.state import Layout, SessionKey, State
from service.settings import Settings


class StateStore(Protocol):
    """Holds session states between steps and forgets them after `idle_timeout_s`.

    Every expiry is reported exactly once, by `expire()`, whichever call noticed it.
    """

    idle_timeout_s: float

    async def load(self, key: SessionKey, expected: Layout) -> State | None:
        """The stored state, or None when the session is unknown or expired. A state that
        does not match `expected` (or the key) raises FailedPrecondition."""
        ...

    async def save(self, key: SessionKey, state: State) -> None:
        """Stores (or replaces) the state and restarts its idle timer."""
        ...

    async def contains(self, key: SessionKey) -> bool: ...

    async def delete(self, key: SessionKey) -> bool:
        """Frees the state; True when there was one."""
        ...

    async def count(self) -> int:
        """Sessions holding state, for the session limit."""
        ...

    async def expire(self) -> list[SessionKey]:
        """Drops the sessions idle for too long and returns those not reported before."""
        ...

    async def close(self) -> None: ...


def open_store(settings: Settings) -> StateStore:
    if settings.state_store == "redis":
        from service.sessions.redis_store import RedisStore

        return RedisStore(settings.redis_url, settings.session_idle_timeout_s)
    from service.sessions.memory_store import MemoryStore

    return MemoryStore(settings.session_idle_timeout_s)
