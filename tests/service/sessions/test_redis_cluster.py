"""What a Redis Cluster asks of the stores beyond what every Redis does (the same store and
sequence tests run on one redis-server and on the cluster: test_state_stores.py,
test_redis_store.py, owned/test_owned_store.py, test_step_accounting.py,
test_redis_over_wire.py): a session's keys share a hash slot, sessions spread evenly over
the masters, a multi-session request makes one round trip per master it touches, an
acknowledged write is on a replica when state_durability is replica, and a URL that says
the wrong kind of Redis stops the server at start with one line."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis_helpers import command_calls, keys_like
from test_state_stores import lstm_state

from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.protocol.errors import UsageError
from rnnserve.service.sessions import SessionKey
from rnnserve.service.sessions.owned.store import OwnedStore
from rnnserve.service.sessions.reachability import OutcomeUnknown
from rnnserve.service.sessions.redis.keys import CLUSTER_BUCKETS, Keyspace, member, spread_tags
from rnnserve.service.sessions.redis_store import RedisStore
from rnnserve.service.sessions.state import Progress
from rnnserve.service.settings import Settings
from rnnserve.service.types import ANONYMOUS

SESSIONS = 3000


def keys_of(rows: int, prefix: str = "s") -> list[SessionKey]:
    return [SessionKey(ANONYMOUS, "sine-lstm", "1", f"{prefix}-{row}") for row in range(rows)]


def test_a_sessions_keys_and_its_index_entries_share_one_slot() -> None:
    space = Keyspace("rnnserve", cluster=True)
    for key in keys_of(200):
        name = member(key)
        prefix = space.prefix(space.bucket(name))
        slots = {
            key_slot(k.encode())
            for k in (
                space.key("state", name), space.key("ended", name), space.key("owner", name),
                prefix + "sessions", prefix + "names", prefix + "worker:0123",
            )
        }  # fmt: skip
        assert len(slots) == 1
    # One server: one bucket, the keys as they always were.
    alone = Keyspace("rnnserve", cluster=False)
    assert alone.key("state", '["a"]') == 'rnnserve:state:["a"]'
    assert alone.prefix(0) + "sessions" == "rnnserve:sessions"


def test_buckets_cover_the_slots_evenly_and_the_same_in_every_process() -> None:
    tags = spread_tags(CLUSTER_BUCKETS)
    width = REDIS_CLUSTER_HASH_SLOTS // CLUSTER_BUCKETS
    assert [key_slot(tag.encode()) // width for tag in tags] == list(range(CLUSTER_BUCKETS))
    script = "from rnnserve.service.sessions.redis.keys import spread_tags; print(spread_tags(64))"
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.stdout.strip() == str(tags)


def test_sessions_spread_evenly_over_the_masters(redis_cluster: LocalCluster) -> None:
    keys = keys_of(SESSIONS)

    async def scenario() -> dict[int, int]:
        store = RedisStore(redis_cluster.url, 60.0, "spread")
        await store.save(keys, lstm_state(rows=SESSIONS), range(SESSIONS), [Progress()] * SESSIONS)
        assert await store.count() == await store.count(ANONYMOUS) == SESSIONS
        held = dict.fromkeys(redis_cluster.master_ports(), 0)
        ranges = redis_cluster.slot_ranges()
        for stored in keys_like(redis_cluster.url, "spread:*state:*"):
            held[redis_cluster.master_of(key_slot(stored), ranges)] += 1
        await store.delete(keys)
        assert await store.count() == 0
        await store.close()
        return held

    held = asyncio.run(scenario())
    share = SESSIONS / len(held)
    assert all(0.85 * share < count < 1.15 * share for count in held.values()), held


def test_a_multi_session_save_makes_one_round_trip_per_master(
    redis_cluster: LocalCluster,
) -> None:
    """64 sessions spread over every master: one script per bucket they fall in, and each
    master's writes confirmed by one WAIT, sent on the connection that wrote them (one
    pipeline per master). The scripts are known to the masters first: a master that
    answers NOSCRIPT gets the batch again by body, which the count would include."""
    keys = keys_of(64, "trip")
    buckets = {Keyspace("trips", True).bucket(member(key)) for key in keys}

    async def scenario() -> None:
        store = RedisStore(redis_cluster.url, 60.0, "trips", durability="replica")
        known = keys_of(64, "known")
        await store.save(known, lstm_state(rows=64), range(64), [Progress()] * 64)
        before = calls_by_master(redis_cluster)
        await store.save(keys, lstm_state(rows=64), range(64), [Progress()] * 64)
        after = calls_by_master(redis_cluster)
        await store.close()
        waits = {port: after[port]["cmdstat_wait"] - before[port]["cmdstat_wait"] for port in after}
        assert waits == dict.fromkeys(after, 1)
        scripts = sum(
            after[port]["cmdstat_evalsha"] + after[port].get("cmdstat_eval", 0)
            - before[port].get("cmdstat_evalsha", 0) - before[port].get("cmdstat_eval", 0)
            for port in after
        )  # fmt: skip
        assert scripts == len(buckets)

    asyncio.run(scenario())


def calls_by_master(cluster: LocalCluster) -> dict[int, dict[str, int]]:
    found = {}
    for port in cluster.master_ports():
        calls = command_calls(f"redis://127.0.0.1:{port}/0", ())
        found[port] = {"cmdstat_wait": 0, "cmdstat_evalsha": 0, **calls}
    return found


def test_with_replica_durability_a_write_no_replica_takes_is_not_acknowledged(
    redis_cluster: LocalCluster, redis_url: str
) -> None:
    """A lone redis-server has no replica: every step's write is of unknown outcome
    (ABORTED, sequence_outcome unknown: its master has it, a failover may lose it). In the
    cluster, a master whose replica is paused (SIGSTOP) cannot confirm; once it resumes, it
    can."""
    key = keys_of(1, "durable")[0]

    async def save(url: str, timeout_s: float) -> None:
        store = RedisStore(url, 60.0, "durable", "replica", timeout_s)
        try:
            await store.save([key], lstm_state(), [0], [Progress()])
        finally:
            await store.close()

    with pytest.raises(OutcomeUnknown, match="did not have a replica confirm this step's write"):
        asyncio.run(save(redis_url, 0.05))
    stored = Keyspace("durable", cluster=True).key("state", member(key))
    master = redis_cluster.master_of(key_slot(stored.encode()))
    replica = redis_cluster.replica_of(master)
    redis_cluster.signal(replica, signal.SIGSTOP)
    try:
        with pytest.raises(OutcomeUnknown, match="state_durability=replica"):
            asyncio.run(save(redis_cluster.url, 0.2))
    finally:
        redis_cluster.signal(replica, signal.SIGCONT)
    asyncio.run(save(redis_cluster.url, 5.0))


@pytest.mark.parametrize("kind", [RedisStore, OwnedStore])
def test_a_url_that_names_the_wrong_kind_of_redis_stops_the_start(
    kind: type, redis_cluster: LocalCluster, redis_url: str
) -> None:
    node = redis_cluster.url.replace("redis+cluster://", "redis://")
    lone = redis_url.replace("redis://", "redis+cluster://")

    async def start(url: str) -> None:
        store = kind(url, 60.0, "wrong-kind")
        try:
            await store.start(None)
        finally:
            await store.close()

    with pytest.raises(UsageError, match="is a cluster node: name the cluster with redis\\+cl"):
        asyncio.run(start(node))
    with pytest.raises(UsageError, match="is not a cluster: use redis://"):
        asyncio.run(start(lone))


def test_a_cluster_url_names_database_0_or_none() -> None:
    assert Settings(redis_url="redis+cluster://127.0.0.1:7000").redis_url
    assert Settings(redis_url="rediss+cluster://u:p@127.0.0.1:7000/0").redis_url
    with pytest.raises(ValidationError, match="a Redis Cluster has only database 0, not '2'"):
        Settings(redis_url="redis+cluster://127.0.0.1:7000/2")


def test_a_server_pointed_at_a_cluster_node_with_redis_url_does_not_start(
    redis_cluster: LocalCluster, sine_repository: Path
) -> None:
    """The issue's report: it started, said ready, and answered every sequence INTERNAL."""
    node = redis_cluster.url.replace("redis+cluster://", "redis://")
    command = [
        sys.executable, "-m", "rnnserve", "serve", "--model-repository", str(sine_repository),
        "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--state-store", "redis", "--redis-url", node,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "this Redis is a cluster node: name the cluster with redis+cluster://" in result.stderr
    assert "Traceback" not in result.stderr
