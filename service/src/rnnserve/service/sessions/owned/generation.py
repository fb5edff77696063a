"""Redis losing its data, for the owned store: the states of the sessions a worker holds
are intact in its memory, so it claims them again; a sequence nobody holds any longer
hears that its state was lost, once every live worker has had the time to claim its own
again (before, that it may be retried: another worker may hold it still)."""

from __future__ import annotations

import time

from rnnserve.service.errors import Unavailable
from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.liveness import LIVENESS_S
from rnnserve.service.sessions.owned.ownership import Ownership
from rnnserve.service.sessions.owned.worker import Worker
from rnnserve.service.sessions.redis.generation import Generation
from rnnserve.service.sessions.redis.guard import guarded
from rnnserve.service.sessions.redis.keys import member
from rnnserve.service.sessions.state import Gone, SessionKey


class GenerationCheck:
    """Whether Redis lost its data (in a cluster: which buckets did), and what follows for
    the sessions held here."""

    def __init__(self, worker: Worker, held: Held, ownership: Ownership) -> None:
        self.reachability = worker.reachability
        self._worker = worker
        self._held = held
        self._ownership = ownership
        self._generation = Generation(
            worker.redis,
            worker.reachability.where,
            "this process claims the sequences it holds again",
        )

    @guarded("generation")
    async def check(self) -> None:
        """Whichever call notices first that Redis lost its data claims the sessions this
        process holds there again (their states are intact here): a later sweep would
        otherwise find their ownership records gone and drop them. A claim that fails is
        tried again by the next check."""
        seen = list(self._generation.tokens)
        lost = set(await self._generation.check())
        if not lost:
            return
        space = self._worker.space
        try:
            await self._ownership.claim_again(
                key for key in self._held.states.sessions() if space.bucket(member(key)) in lost
            )
        except BaseException:
            self._generation.tokens = seen
            raise

    def lost(self, key: SessionKey) -> Gone | Unavailable | None:
        """The tombstone of a sequence Redis no longer knows, when its bucket lost its data
        lately (Generation.lost); Unavailable while a live worker holding it may not have
        claimed it again yet (each claims its own at its next sweep, within LIVENESS_S, or it
        is dead)."""
        name = member(key)
        gone = self._generation.lost(name, self._held.tombstone_ms / 1000)
        noticed = self._generation.noticed(name)
        if gone is None or noticed is None or time.time() - noticed > LIVENESS_S:
            return gone
        return Unavailable(
            f"{key.describe()} is not in Redis, which lost its data: the server process "
            f"holding it, if one does, claims it again within {LIVENESS_S:g} s; nothing was "
            "applied: the request may be retried"
        )
