"""Retrying a call that may not have reached the server, or whose answer was lost.

Only calls that are safe to repeat are retried: stateless ones, and steps of a sequence that
carry `sequence_offset`, which the server applies once and answers again when repeated.
A failure is retried when the server could not be reached, did not answer in time, or
dropped the call (UNAVAILABLE, DEADLINE_EXCEEDED, and CANCELLED, which is what a server
that stops reports of the calls and streams it still had), or when the server could not
tell whether a step was applied (ABORTED with `sequence_outcome` "unknown": a state store
that did not answer its write; the retry, carrying `sequence_offset`, is answered again or
applied once), after a backoff that grows
exponentially, with jitter, up to a bound, for a bounded number of attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from rnnserve.client.errors import InferenceError
from rnnserve.protocol.sequences import SEQUENCE_OUTCOME, UNKNOWN_OUTCOME

T = TypeVar("T")
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})


def is_retryable(error: InferenceError) -> bool:
    return error.code in RETRYABLE or error.details.get(SEQUENCE_OUTCOME) == UNKNOWN_OUTCOME


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy, in its terms: at most `max_attempts` tries, the n-th retry after
    min(initial_backoff_s * multiplier**(n-1), max_backoff_s), scaled by a random factor in
    [0.5, 1] so that clients failed together do not come back together."""

    max_attempts: int = 10
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def backoffs(self) -> Iterator[float]:
        """The waits before each retry: max_attempts - 1 of them."""
        for retry in range(self.max_attempts - 1):
            bound = min(self.initial_backoff_s * self.multiplier**retry, self.max_backoff_s)
            yield bound * random.uniform(0.5, 1.0)


DEFAULT_RETRY = RetryPolicy()
NO_RETRIES = RetryPolicy(max_attempts=1)


def _backoff(error: InferenceError, backoffs: Iterator[float]) -> float:
    """The wait before trying again after `error`; the error raised when it may not be
    retried or the policy allows no more tries."""
    backoff = next(backoffs, None) if is_retryable(error) else None
    if backoff is None:
        raise error
    return backoff


def retrying(
    call: Callable[[], T],
    policy: RetryPolicy,
    before_retry: Callable[[InferenceError], None] = lambda error: None,
) -> T:
    """`call()`, tried again after each retryable failure while the policy allows;
    `before_retry` runs before each new try (to reopen a stream, say)."""
    backoffs = policy.backoffs()
    while True:
        try:
            return call()
        except InferenceError as error:
            time.sleep(_backoff(error, backoffs))
            before_retry(error)


async def retrying_async(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    before_retry: Callable[[InferenceError], Awaitable[None]],
) -> T:
    """`retrying` for the asyncio client: `await call()`, waiting without blocking."""
    backoffs = policy.backoffs()
    while True:
        try:
            return await call()
        except InferenceError as error:
            await asyncio.sleep(_backoff(error, backoffs))
            await before_retry(error)
