"""A worker in Redis: what every part of the owned store acts for (Worker), and the keys
that name a worker: the set of the sessions it owns in each bucket, and its inbox, the list
onto which other workers push their hand-over requests."""

from __future__ import annotations

from dataclasses import dataclass

from rnnserve.service.sessions.reachability import Reachability
from rnnserve.service.sessions.redis.client import Command, RedisClient
from rnnserve.service.sessions.redis.keys import Keyspace


@dataclass(frozen=True)
class Worker:
    """This server process in the owned store: its id in Redis, the namespace, its clients
    (`waiting` for blocking waits: inbox polls, hand-over replies, on a client whose timeout
    outlasts them; every other call fails fast) and the store's Reachability, which every
    call reaching Redis tells."""

    id: str
    namespace: str
    redis: RedisClient
    waiting: RedisClient
    reachability: Reachability

    @property
    def space(self) -> Keyspace:
        return self.redis.keys


def owned_key(space: Keyspace, bucket: int, worker: str) -> str:
    """The set of the sessions `worker` owns in `bucket`."""
    return f"{space.prefix(bucket)}owned:{worker}"


def inbox_key(namespace: str, worker: str) -> str:
    return f"{namespace}:inbox:{worker}"


def push(key: str, value: str, keep_s: float) -> list[Command]:
    """Appends `value` to the list `key`, which goes `keep_s` after the last push."""
    return [Command.of("RPUSH", key, value), Command.of("PEXPIRE", key, round(keep_s * 1000))]
