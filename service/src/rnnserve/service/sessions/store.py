"""The interface every state store offers the session manager, and the choice of store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypedDict, runtime_checkable

import numpy as np

from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.state import Conflict, Loaded, Progress, SessionKey
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.settings import Settings
from rnnserve.service.types import State


class StateStore(Protocol):
    """Holds session states, with their progress, between steps and forgets them after
    `idle_timeout_s`.

    Every call takes many sessions at once (a multi-session request steps many: one call,
    one Redis round trip). States travel as rows of batch states: `keys[i]` is row
    `rows[i]` (axis 1) of the state given, `progress[i]` its progress. Every expiry is
    reported exactly once, by `expire()`, whichever call noticed it. A call that cannot
    reach the store's backend raises StoreUnavailable, through `reachability`. A store may
    offer `LiveRows`' calls too.
    """

    idle_timeout_s: float
    reachability: Reachability

    async def load(
        self, keys: Sequence[SessionKey], into: State, rows: Sequence[int]
    ) -> list[Loaded]:
        """Copies each session's stored state into its row of `into`. Per key: its
        Progress when copied; for a session without state that `end` recorded lately, the
        record's Progress (`ended` set) with the state its final step started from copied
        (when that step carried an offset); Gone for a session that expired or was lost
        lately; None when the session is unknown; FailedPrecondition when the stored state
        does not fit `into` (or belongs to another key). Rows not copied keep what they
        held."""
        ...

    async def save(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        """Stores (or replaces) each session's row of `state` and its progress, and
        restarts its idle timer. Per key, None, or the Conflict that kept it from being
        written: a store that other processes write too writes a step only if the session
        still holds the count it was applied on (`progress.prior`; any for a start), and
        one without an offset (`progress.last` None) only while no earlier step's outcome
        is unknown. A write whose outcome the store cannot know raises OutcomeUnknown
        (reachability.py), never StoreUnavailable."""
        ...

    async def contains(self, keys: Sequence[SessionKey]) -> list[bool]:
        """Per key, whether the session holds state (a record of its end does not count)."""
        ...

    async def delete(self, keys: Sequence[SessionKey]) -> list[bool]:
        """Frees the states; per key, True when there was one."""
        ...

    async def end(
        self,
        keys: Sequence[SessionKey],
        state: State,
        rows: Sequence[int],
        progress: Sequence[Progress],
    ) -> list[Conflict | None]:
        """Frees the sessions, recording for a while (at most the idle timeout; the memory
        store keeps a bounded number) each one's end: its `progress` and, when its final
        step carried an offset, its row of `state`, the state that step started from, for
        `load` to find on a retry of it. Per key, None, or the Conflict that kept it from
        being ended (as `save`: conditional on `progress.prior`)."""
        ...

    async def count(self, principal: str | None = None) -> int:
        """Sessions holding state (those of `principal` when given), for the limits."""
        ...

    def active(self) -> dict[tuple[str, str], int]:
        """Sessions holding state by (model, version), counted now, from any thread (the
        /metrics scrape's): `rnnserve_sessions_active`."""
        ...

    async def expire(self) -> list[SessionKey]:
        """Drops the sessions idle for too long (leaving a tombstone) and returns those not
        reported before."""
        ...

    async def start(self, turns: Turns) -> None:
        """Starts what the store runs in the background. `turns` are the session manager's:
        a store that acts on a session outside the manager's calls takes its turn first."""
        ...

    async def close(self) -> None: ...


class Live(Protocol):
    """The sessions `LiveRows.load_live` found live, for `save_live`: their step counts (row
    i's at i), to which the caller adds its step's, and where the store found them."""

    counts: np.ndarray


@runtime_checkable
class LiveRows(Protocol):
    """What a store may offer besides StateStore's calls (the memory store does): a step of
    many live sessions of which none starts, ends or carries an offset (a steady stream of
    multi-session requests), loaded and saved with their step counts as one array, without
    a Progress per session. keys[i] is row i of the batch state."""

    def load_live(self, keys: Sequence[SessionKey], into: State) -> Live | None:
        """Copies each session's state into its row of `into` and returns them with their
        step counts, when every session is live and its state fits `into`; else None,
        having changed nothing (`load` says what became of each)."""
        ...

    def save_live(self, live: Live, state: State) -> None:
        """`save` of each of `live`'s sessions' row of `state` with its step count
        (`live.counts`), for steps without an offset (no last step kept)."""
        ...


def open_store(settings: Settings, worker: str | None = None) -> StateStore:
    """The configured store; `worker`: the owned store's id for this process (a worker's,
    named by its supervisor)."""
    if settings.state_store == "memory":
        from rnnserve.service.device import state_device
        from rnnserve.service.sessions.memory_store import MemoryStore

        return MemoryStore(settings.session_idle_timeout_s, state_device(settings))
    redis = _RedisOptions(
        timeout_s=settings.state_store_timeout_s,
        durability=settings.state_durability,
        durability_timeout_s=settings.state_durability_timeout_s,
    )
    if settings.state_store == "redis":
        from rnnserve.service.sessions.redis_store import RedisStore

        return RedisStore(settings.redis_url, settings.session_idle_timeout_s, **redis)
    from rnnserve.service.sessions.owned.store import OwnedStore

    return OwnedStore(settings.redis_url, settings.session_idle_timeout_s, worker=worker, **redis)


class _RedisOptions(TypedDict):
    """What both Redis stores take from the settings (as keywords)."""

    timeout_s: float
    durability: str
    durability_timeout_s: float
