"""The store methods that reach Redis, guarded: the one place where a failure to reach it
(client.UNREACHABLE) becomes StoreUnavailable, told to the store's Reachability
(../reachability.py) with every outcome."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.redis.client import UNREACHABLE, NotConfirmed, NotSent


class Guarded(Protocol):
    """What a guarded method's object has: the Reachability it tells."""

    reachability: Reachability


G = TypeVar("G", bound=Guarded)
P = ParamSpec("P")
T = TypeVar("T")


def guarded(
    operation: str, writes: bool = False
) -> Callable[
    [Callable[Concatenate[G, P], Awaitable[T]]],
    Callable[Concatenate[G, P], Coroutine[Any, Any, T]],
]:
    """A store method that reaches Redis: a failure to reach it (client.UNREACHABLE)
    becomes StoreUnavailable (OutcomeUnknown for a method that `writes` a step, which may
    have landed unless nothing was sent: NotSent), and every outcome tells the store's
    Reachability."""

    def decorate(
        method: Callable[Concatenate[G, P], Awaitable[T]],
    ) -> Callable[Concatenate[G, P], Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def call(store: G, /, *args: P.args, **kwargs: P.kwargs) -> T:
            try:
                result = await method(store, *args, **kwargs)
            except UNREACHABLE as error:
                sent = writes and not isinstance(error, NotSent)
                raise store.reachability.failed(operation, error, sent) from None
            except NotConfirmed as error:
                if writes:  # applied by the master, maybe lost by a failover
                    raise store.reachability.unknown(
                        "did not have a replica confirm this step's write in time "
                        "(state_durability=replica)"
                    ) from error
                raise
            store.reachability.answered()
            return result

        return call

    return decorate
