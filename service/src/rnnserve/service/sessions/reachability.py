"""Whether the state store answers: the one place that knows it, says it and counts it.

A store whose backend cannot be reached (Redis down, stopped or too slow to answer within
`state_store_timeout_s`) raises `StoreUnavailable` from every call that needed it: the
client hears UNAVAILABLE naming the store and saying that the request may be retried, never
INTERNAL. Its `Reachability` turns the failures into one warning when the store stops
answering and one line when it answers again (no traceback per request), the gauge
`rnnserve_state_store_up`, the counter `rnnserve_state_store_errors_total{store,operation}`,
and a change the data plane's readiness follows: health says NOT_SERVING while the
configured store is unreachable (service/dataplane/plane.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rnnserve.protocol.sequences import SEQUENCE_OUTCOME, UNKNOWN_OUTCOME
from rnnserve.service import metrics
from rnnserve.service.errors import Aborted, Unavailable

log = logging.getLogger(__name__)

Watcher = Callable[[], Coroutine[Any, Any, None]]


class StoreUnavailable(Unavailable):
    """The state store did not answer: nothing was decided, the request may be retried."""


class OutcomeUnknown(Aborted):
    """The state store did not answer a write it may have applied (a timeout after the
    write was sent, a connection lost before the reply, a failover mid-write): the step may
    or may not have been applied. Never "nothing was applied": a blind retry could apply it
    twice. The store's writes are conditional on the session's count, so a retry that
    carries `sequence_offset` learns which (answered again, or applied once)."""


class Reachability:
    """Whether store `store` (at `where`) answered its last call."""

    def __init__(self, store: str, where: str) -> None:
        self.store = store
        self.where = where
        self.up = True
        self._down_since = 0.0
        self._failures = 0  # calls failed since it went down
        self._watchers: list[Watcher] = []
        self._notices: set[asyncio.Task[None]] = set()

    def watch(self, watcher: Watcher) -> None:
        """`watcher` is awaited after every change of `up`."""
        self._watchers.append(watcher)

    def failed(
        self, operation: str, cause: BaseException, sent: bool = False
    ) -> StoreUnavailable | OutcomeUnknown:
        """Records that `operation` could not reach the store; the error to raise.
        `sent`: the operation writes a step and may have sent it (the store failed after
        the connection was made), so that it may have been applied."""
        metrics.STATE_STORE_ERRORS.labels(self.store, operation).inc()
        self._failures += 1
        if self.up:
            self.up = False
            self._down_since = time.monotonic()
            metrics.STATE_STORE_UP.set(0)
            log.warning(
                "the %s state store at %s is unreachable (%s: %s): sequence requests answer "
                "UNAVAILABLE and health says NOT_SERVING until it answers again",
                self.store, self.where, type(cause).__name__, cause,
            )  # fmt: skip
            self._notify()
        if sent:
            return self.unknown(f"did not confirm this step's write ({cause})")
        return StoreUnavailable(
            f"the {self.store} state store at {self.where} is unreachable ({cause}); nothing "
            "was applied: the request may be retried"
        )

    def unknown(self, what: str) -> OutcomeUnknown:
        """The error of a step whose write the store may have applied: it `what`."""
        return OutcomeUnknown(
            f"the {self.store} state store at {self.where} {what}: whether this step was "
            "applied is unknown. Retry it with sequence_offset (it is applied once), or send "
            "sequence_offset with the next step (steps without it are refused until then), "
            "or start the sequence again",
            {SEQUENCE_OUTCOME: UNKNOWN_OUTCOME},
        )

    def answered(self) -> None:
        """Records that a call reached the store."""
        if self.up:
            return
        self.up = True
        metrics.STATE_STORE_UP.set(1)
        log.info(
            "the %s state store at %s answers again after %.1f s unreachable (%d calls failed)",
            self.store, self.where, time.monotonic() - self._down_since, self._failures,
        )  # fmt: skip
        self._failures = 0
        self._notify()

    def _notify(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # outside the server's loop (a tool, a test): nobody to tell
            return
        for watcher in self._watchers:
            task = loop.create_task(watcher())
            self._notices.add(task)
            task.add_done_callback(self._notices.discard)
