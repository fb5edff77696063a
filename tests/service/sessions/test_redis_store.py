"""The Redis store on a real redis-server and on a real Redis Cluster: sessions shared by
server processes and outliving them, stored compactly and checked when loaded."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
from redis_helpers import keys_like, sync_client

from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions import SessionKey
from rnnserve.service.sessions.redis.records import encode_record
from rnnserve.service.sessions.redis_store import RedisStore
from rnnserve.service.sessions.state import Gone, Progress
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import ANONYMOUS, State

KEY = SessionKey(ANONYMOUS, "sine-gru", "3", "user-42")


def gru_state() -> State:
    return {"h": np.arange(2 * 1 * 16, dtype=np.float32).reshape(2, 1, 16) / 7}


async def load_gru(store: RedisStore, key: SessionKey) -> State:
    """The key's state: a one-row batch of gru_state's shape; its error raised."""
    into = {"h": np.zeros((2, 1, 16), np.float32)}
    [loaded] = await store.load([key], into, [0])
    if isinstance(loaded, FailedPrecondition):
        raise loaded
    assert loaded is not None
    return into


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_two_stores_on_one_redis_serve_the_same_sessions(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        first = RedisStore(any_redis, 60.0, namespace)
        second = RedisStore(any_redis, 60.0, namespace)
        await first.save([KEY], gru_state(), [0], [Progress()])
        np.testing.assert_array_equal((await load_gru(second, KEY))["h"], gru_state()["h"])
        assert await second.count() == 1
        assert await second.delete([KEY]) == [True]
        assert await first.contains([KEY]) == [False]
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_session_survives_closing_and_reopening_the_store(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        before = RedisStore(any_redis, 60.0, namespace)
        await before.save([KEY], gru_state(), [0], [Progress()])
        await before.close()
        after = RedisStore(any_redis, 60.0, namespace)
        np.testing.assert_array_equal((await load_gru(after, KEY))["h"], gru_state()["h"])
        await after.close()

    asyncio.run(scenario())


def test_a_state_is_stored_as_a_small_header_and_raw_float32(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        store = RedisStore(any_redis, 60.0, namespace)
        await store.save([KEY], gru_state(), [0], [Progress()])
        await store.close()

    asyncio.run(scenario())
    [stored] = keys_like(any_redis, f"{namespace}:*state:*")
    client = sync_client(any_redis)
    size = client.strlen(stored)
    assert 2 * 16 * 4 < size < 2 * 16 * 4 + 200
    assert 0 < client.pttl(stored) <= 60_000  # the idle timeout, held by Redis itself
    client.close()


def test_a_state_written_for_another_session_is_refused(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        store = RedisStore(any_redis, 60.0, namespace)
        await store.save([KEY], gru_state(), [0], [Progress()])
        other = SessionKey(ANONYMOUS, "sine-gru", "4", "user-42")
        # Whatever wrote it, a value under this key that names another model version
        # must not be used as this session's state.
        [stored] = keys_like(any_redis, f"{namespace}:*state:*")
        client = sync_client(any_redis)
        client.set(stored, encode_record(other, gru_state(), Progress()))
        client.close()
        with pytest.raises(FailedPrecondition, match="belongs to sequence 'user-42' for model "
                           "sine-gru version 4"):  # fmt: skip
            await load_gru(store, KEY)
        await store.close()

    asyncio.run(scenario())


def test_an_expiry_is_reported_by_exactly_one_of_two_stores(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        first = RedisStore(any_redis, 0.05, namespace)
        second = RedisStore(any_redis, 0.05, namespace)
        await first.save([KEY], gru_state(), [0], [Progress()])
        reported: list[SessionKey] = []
        while not reported:
            await asyncio.sleep(0.02)
            reported = await first.expire() + await second.expire()
        assert reported == [KEY]
        assert await first.expire() + await second.expire() == []
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_sequence_whose_state_redis_lost_with_its_data_is_lost_not_unknown(
    any_redis: str, namespace: str
) -> None:
    """Redis (in a cluster: the masters of its buckets) lost the namespace's data: the
    bucket's generation key says so, and a sequence no longer found there hears that its
    state was lost (ABORTED), not that it was never started."""

    async def scenario() -> None:
        store = RedisStore(any_redis, 60.0, namespace)
        await store.start(Turns())
        await store.save([KEY], gru_state(), [0], [Progress()])
        client = sync_client(any_redis)
        for key in keys_like(any_redis, f"{namespace}:*"):  # as a restart without its data
            client.delete(key)
        client.close()
        [loaded] = await store.load([KEY], {"h": np.zeros((2, 1, 16), np.float32)}, [0])
        assert isinstance(loaded, Gone) and loaded.why == "lost", loaded
        assert "lost its data" in loaded.reason
        assert await store.count() == 0
        await store.close()

    asyncio.run(scenario())
