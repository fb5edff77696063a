"""The client both Redis stores talk through: to one server or to a Redis Cluster, as the
URL says (service/redis_url.py: in a cluster, any node's address; the client finds the
others), and how their commands travel. Where their keys lie: keys.py.

Batches. A store hands `run` the commands one request needs, each routed by its bucket:
one pipeline to a server, one per master in a cluster, sent concurrently (one round trip
per node the request touches). Scripts go as EVALSHA; one that the server does not know
(a restarted server, a promoted replica) is sent again as EVAL.

Failover. In a cluster, a batch that meets a failover (a master that does not answer,
CLUSTERDOWN, slots that moved) is sent again, with the cluster's layout read afresh, for up
to CLUSTER_RETRY_S: enough for a replica to take over from a failed master with a
cluster-node-timeout of a second or two. Only commands safe to repeat are sent again after a
connection broke mid-command (whether it ran is unknown); the others fail with the error.

Timeouts. `timeout_s` (the setting state_store_timeout_s) bounds each call to Redis (a
stopped Redis must not hold requests); a write under replica durability may also wait up to
state_durability_timeout_s for its WAIT, so its connection allows for both. A call that met
a closed connection on one server is tried once more, at once, on a new one (after a restart
each pooled connection fails once that way); a timeout is not. What still fails is
UNREACHABLE: the stores' guarded calls turn it into StoreUnavailable (guard.py), in a
cluster only once the failover retries (Failover) have given up.

Sent or not. On one server a batch first takes a connection, connected (redis-py connects,
and says hello, when the pool hands it out): a failure then (refused, a connect timeout, a
handshake that failed) sent nothing of the batch, and raises NotSent. Anything that fails
after may have reached Redis: a write's outcome is unknown (guard.py). In a cluster every
failure counts as maybe sent.

Durability (`state_durability = "replica"`). A batch that writes what a client was, or will
be, told is stored ends with WAIT on each master it wrote to, on the connection that wrote:
the batch returns only once at least one replica has every write, else it fails UNAVAILABLE
(retryable; with `sequence_offset` a retried step is applied once). A master that fails
over after that loses none of it: its replica has it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TimeoutError,
    TryAgainError,
)

from rnnserve.protocol.errors import UsageError
from rnnserve.service.errors import Unavailable
from rnnserve.service.redis_url import CLUSTER_SCHEMES, is_cluster_url
from rnnserve.service.sessions.redis.keys import Keyspace

CLUSTER_RETRY_S = 5.0  # how long a batch keeps trying through a failover
RETRY_PAUSE_S = 0.1
REPLICAS = 1  # replicas that must hold a write under state_durability = "replica"

# The command did not run: the slot moved, is moving, or has no master right now.
_NOT_RUN = (AskError, TryAgainError, ClusterDownError, RedisClusterException)
# The connection broke: the command may or may not have run.
_BROKEN = (ConnectionError, TimeoutError)
# Redis could not be reached or could not serve (not a bad command of ours), once run() has
# retried what it retries: the request may be retried. (MovedError is an AskError,
# MasterDownError a ClusterDownError; a RedisClusterException arrives as a ConnectionError.)
UNREACHABLE = (
    ConnectionError,
    TimeoutError,
    ReadOnlyError,
    AskError,
    TryAgainError,
    ClusterDownError,
)


class NotSent(ConnectionError):
    """Redis could not be reached before any command of a batch was sent (the connection
    was refused, or timed out, or its handshake failed): nothing of it was applied."""


@dataclass(frozen=True)
class Script:
    """A Lua script, sent by its SHA-1 while the server knows it."""

    body: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.body.encode()).hexdigest()


@dataclass
class Command:
    """One command of a batch. `key` routes it (a key it touches: every key a command
    touches lies in one slot). `retry_safe`: repeating it after it ran does no harm."""

    args: tuple[Any, ...]
    key: str
    script: Script | None = None
    retry_safe: bool = True

    @classmethod
    def of(cls, *args: Any, retry_safe: bool = True) -> Command:
        """A plain command whose first argument after the name is a key."""
        return cls(args, str(args[1]), retry_safe=retry_safe)

    @classmethod
    def call(
        cls, script: Script, keys: Sequence[str], args: Sequence[Any] = (), retry_safe: bool = True
    ) -> Command:
        return cls((len(keys), *keys, *args), keys[0], script, retry_safe)

    def wire(self, by_body: bool) -> tuple[Any, ...]:
        if self.script is None:
            return self.args
        return (
            ("EVAL", self.script.body, *self.args)
            if by_body
            else ("EVALSHA", self.script.sha, *self.args)
        )


class RedisClient:
    """The connection of one store, its keyspace and its durability."""

    def __init__(
        self,
        url: str,
        namespace: str,
        timeout_s: float,
        durability: str = "none",
        durability_timeout_s: float = 1.0,
    ) -> None:
        """`timeout_s`: the longest a call may wait for Redis's answer (see Timeouts)."""
        self.url = url
        self.cluster = is_cluster_url(url)
        self.keys = Keyspace(namespace, self.cluster)
        self.durable = durability == "replica"
        self._wait_ms = max(1, round(durability_timeout_s * 1000))
        socket_timeout = timeout_s + (durability_timeout_s if self.durable else 0.0)
        self.client: redis.Redis | RedisCluster
        if self.cluster:
            scheme, rest = url.split("://", 1)
            # No retries inside redis-py: run() retries whole batches, keeping each WAIT on
            # the connection that wrote.
            self.client = RedisCluster.from_url(
                f"{CLUSTER_SCHEMES[scheme]}://{rest}",
                retry=Retry(NoBackoff(), 0),
                socket_timeout=socket_timeout,
                socket_connect_timeout=timeout_s,
            )
        else:
            once = Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))
            self.client = redis.Redis.from_url(
                url, retry=once, socket_timeout=socket_timeout, socket_connect_timeout=timeout_s
            )

    async def check(self) -> None:
        """A URL that names a cluster node without saying so, or a server that is no cluster
        with `+cluster`, stops the server at start with one line. An unreachable Redis is
        left for the requests to find."""
        try:
            if self.cluster:
                await self.client.initialize()
                return
            enabled = (await self.client.info("cluster")).get("cluster_enabled")
        except RedisClusterException as error:
            if "not enabled" in str(error):
                raise UsageError(
                    f"--redis-url {self.url}: this Redis is not a cluster: use redis:// "
                    "(or rediss://) for one server"
                ) from None
            return
        except RedisError:
            return
        if enabled:
            raise UsageError(
                f"--redis-url {self.url}: this Redis is a cluster node: name the cluster with "
                "redis+cluster:// (or rediss+cluster://) and the node's address"
            )

    async def run(self, commands: Sequence[Command], durable: bool = False) -> list[Any]:
        """Every command's reply, in order (the first error raised). `durable`: the batch
        writes what must survive a failover (WAIT, when state_durability is replica)."""
        if not commands:
            return []
        wait = durable and self.durable
        if self.cluster:
            return await self._run_on_cluster(commands, wait)
        return await self._run_on_server(commands, wait)

    async def one(self, command: Command, durable: bool = False) -> Any:
        [reply] = await self.run([command], durable)
        return reply

    async def blpop(self, key: str, timeout_s: float) -> Any:
        """The first item of the list `key`, waited for up to `timeout_s` (None then)."""
        return await self.one(Command.of("BLPOP", key, timeout_s))

    async def close(self) -> None:
        await self.client.aclose()

    # One server.

    async def _run_on_server(self, commands: Sequence[Command], wait: bool) -> list[Any]:
        replies = await self._pipeline(commands, wait, by_body=False)
        unknown = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if unknown:  # the server restarted or flushed its scripts: send those again
            again = await self._pipeline([commands[i] for i in unknown], wait, by_body=True)
            for index, reply in zip(unknown, again, strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipeline(self, commands: Sequence[Command], wait: bool, by_body: bool) -> list[Any]:
        client = self.client
        assert isinstance(client, redis.Redis)  # one server's
        async with client.pipeline(transaction=False) as pipe:
            pipe.connection = await self._connected(client)  # released by the block's end
            for command in commands:
                pipe.execute_command(*command.wire(by_body))
            if wait:
                pipe.execute_command("WAIT", REPLICAS, self._wait_ms)
            replies = await pipe.execute(raise_on_error=False)
        if wait:
            self._check_confirmed(replies.pop())
        return replies

    @staticmethod
    async def _connected(client: redis.Redis) -> Any:
        """A connection of `client`'s pool, connected (a stale one connected again):
        NotSent when that fails, for nothing was sent."""
        try:
            return await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except (ConnectionError, TimeoutError) as error:
            raise NotSent(str(error)) from error

    # A cluster.

    async def _run_on_cluster(self, commands: Sequence[Command], wait: bool) -> list[Any]:
        cluster = self.client
        assert isinstance(cluster, RedisCluster)
        replies: list[Any] = [_PENDING] * len(commands)
        by_body: set[int] = set()  # scripts the master did not know
        pending = list(range(len(commands)))
        deadline = time.monotonic() + CLUSTER_RETRY_S
        while pending:
            try:
                await cluster.initialize()
                failed = await self._send(cluster, commands, pending, by_body, wait, replies)
            except (*_NOT_RUN, *_BROKEN) as error:  # no reply at all: none known to have run
                if not all(commands[i].retry_safe for i in pending):
                    raise _as_redis_error(error) from error
                failed = error
            pending = [i for i in pending if replies[i] is _PENDING]
            if failed is None:  # at most scripts to send by body: at once
                continue
            if time.monotonic() > deadline:
                raise _as_redis_error(failed) from failed
            await cluster.aclose()  # read the cluster's layout again
            await asyncio.sleep(RETRY_PAUSE_S)
        return replies

    async def _send(
        self,
        cluster: RedisCluster,
        commands: Sequence[Command],
        pending: list[int],
        by_body: set[int],
        wait: bool,
        replies: list[Any],
    ) -> Exception | None:
        """Sends the pending commands, and a WAIT to each master they write to, in one
        pipeline, and fills in their replies (those to send again stay _PENDING). Returns
        the error that calls for another try after a pause, if any."""
        pipe = cluster.pipeline()
        nodes: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index in pending:
            pipe.execute_command(*commands[index].wire(index in by_body))
            if wait:
                node = cluster.get_node_from_key(commands[index].key)
                assert node is not None  # None only when a replica is asked for
                nodes.setdefault(node.name, (node, []))[1].append(index)
        for node, _ in nodes.values():
            pipe.execute_command("WAIT", REPLICAS, self._wait_ms, target_nodes=node)
        got = await pipe.execute(raise_on_error=False, allow_redirections=False)
        failed: Exception | None = None
        for index, reply in zip(pending, got, strict=False):
            if isinstance(reply, NoScriptError):
                by_body.add(index)
            elif isinstance(reply, _NOT_RUN) or (
                isinstance(reply, _BROKEN) and commands[index].retry_safe
            ):
                failed = reply
            elif isinstance(reply, Exception):
                raise _as_redis_error(reply)
            else:
                replies[index] = reply
        for (_, written), confirmed in zip(nodes.values(), got[len(pending) :], strict=True):
            if any(replies[i] is not _PENDING for i in written):
                self._check_confirmed(confirmed)
        return failed

    def _check_confirmed(self, replicas: Any) -> None:
        if isinstance(replicas, int) and replicas >= REPLICAS:
            return
        raise NotConfirmed(
            f"the write was not confirmed by a Redis replica within {self._wait_ms} ms "
            "(state_durability=replica): retry (a step that carries sequence_offset is "
            "applied once)"
        )


class NotConfirmed(Unavailable):
    """A write under replica durability that no replica confirmed in time: its master
    applied it, a failover may lose it. A step's write so refused is OutcomeUnknown
    (guard.py)."""


_PENDING = object()  # a reply still to get


def _as_redis_error(error: Exception) -> RedisError:
    """redis-py raises some cluster failures outside RedisError (RedisClusterException):
    they reach the store's callers as the RedisError they are."""
    if isinstance(error, RedisError):
        return error
    wrapped = ConnectionError(f"Redis Cluster: {error}")
    wrapped.__cause__ = error
    return wrapped
