"""The owned store on a real redis-server and on a real Redis Cluster: two stores stand for
two workers. A session's state stays with the worker that steps it, without a Redis round
trip, and moves to another worker, always at its latest, when that worker steps it."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import pytest
from redis_helpers import command_calls, keys_like, sync_client
from test_state_stores import assert_same_state, load_one, lstm_state, save_one, zeros_like

from rnnserve.service.errors import Unavailable
from rnnserve.service.redis_url import is_cluster_url
from rnnserve.service.sessions import SessionKey
from rnnserve.service.sessions.owned.held import Held
from rnnserve.service.sessions.owned.reaping import declare_dead
from rnnserve.service.sessions.owned.store import OwnedStore
from rnnserve.service.sessions.redis.keys import Keyspace
from rnnserve.service.sessions.state import Gone, Progress
from rnnserve.service.sessions.turns import Turns
from rnnserve.service.types import ANONYMOUS

KEY = SessionKey(ANONYMOUS, "sine-lstm", "1", "device-7")


class Worker:
    """A started store and the turns its session manager would hold."""

    def __init__(self, url: str, namespace: str, handover_timeout_s: float = 5.0) -> None:
        # Ownership is what these tests prove, not Redis's timeout (tests/faults do): a call
        # gets 10 s, so that a test machine loaded by the others (a 1 s read timed out in CI
        # once) does not fail them.
        self.store = OwnedStore(url, 60.0, namespace, handover_timeout_s, timeout_s=10.0)
        self.turns = Turns()

    async def __aenter__(self) -> Worker:
        await self.store.start(self.turns)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


def data_commands(url: str) -> dict[str, int]:
    """Commands Redis has run, by name, leaving out the inbox listeners' polls and the
    handshakes of new connections (this function's own among them, and a cluster client's
    questions about the cluster)."""
    overhead = ("cmdstat_blpop", "cmdstat_info", "cmdstat_hello", "cmdstat_client")
    # REPLCONF: a cluster replica's acknowledgement to its master, every second.
    overhead += ("cmdstat_replconf",)
    return command_calls(url, (*overhead, "cmdstat_cluster", "cmdstat_command"))


def test_steps_on_the_owning_worker_make_no_redis_round_trip(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as worker:
            await save_one(worker.store, KEY, lstm_state(0))  # the start claims the session
            before = data_commands(any_redis)
            for step in range(1, 50):
                assert_same_state(
                    await load_one(worker.store, KEY, lstm_state()), lstm_state(step - 1)
                )
                await save_one(worker.store, KEY, lstm_state(step))
            assert data_commands(any_redis) == before

    asyncio.run(scenario())


def test_a_session_moves_to_the_worker_that_steps_it_and_back(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            assert_same_state(await load_one(b.store, KEY, lstm_state()), lstm_state(0))
            await save_one(b.store, KEY, lstm_state(1))
            assert_same_state(await load_one(a.store, KEY, lstm_state()), lstm_state(1))
            assert await a.store.count() == await b.store.count() == 1

    asyncio.run(scenario())


def test_hand_overs_are_logged_at_debug(
    any_redis: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            await load_one(b.store, KEY, lstm_state())

    with caplog.at_level(logging.DEBUG, logger="rnnserve.service.sessions.owned"):
        asyncio.run(scenario())

    said = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    described = KEY.describe()
    assert f"handed {described} over to another worker" in said
    assert f"took over {described} (its state was handed over in Redis)" in said


def test_one_step_of_sessions_owned_by_two_workers_gathers_both(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with (
            Worker(any_redis, namespace) as a,
            Worker(any_redis, namespace) as b,
            Worker(any_redis, namespace) as c,
        ):
            keys = [SessionKey(ANONYMOUS, "sine-lstm", "1", i) for i in range(4)]
            batch = lstm_state(rows=4)
            await a.store.save(keys[:2], batch, [0, 1], [Progress(1), Progress(2)])
            await b.store.save(keys[2:], batch, [2, 3], [Progress(3), Progress(4)])
            into = zeros_like(batch)
            assert await c.store.load(keys, into, [0, 1, 2, 3]) == [
                Progress(n) for n in (1, 2, 3, 4)
            ]
            assert_same_state(into, batch)

    asyncio.run(scenario())


def test_a_hand_over_waits_for_the_owners_step_in_progress(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            assert a.turns.take_all_free([KEY])  # a step of the session is running on a
            moving = asyncio.create_task(load_one(b.store, KEY, lstm_state()))
            await asyncio.sleep(0.3)
            assert not moving.done()
            await save_one(a.store, KEY, lstm_state(1))  # the step ends with its new state
            a.turns.give(KEY)
            assert_same_state(await moving, lstm_state(1))

    asyncio.run(scenario())


def test_an_owner_that_does_not_hand_over_fails_the_step_as_unavailable(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with (
            Worker(any_redis, namespace) as a,
            Worker(any_redis, namespace, handover_timeout_s=0.1) as b,
        ):
            await save_one(a.store, KEY, lstm_state(0))
            assert a.turns.take_all_free([KEY])  # a step that does not end
            refused = r"did not hand it over \(asked 2 times, 0\.1s each\); retry"
            with pytest.raises(Unavailable, match=refused):
                await load_one(b.store, KEY, lstm_state())
            a.turns.give(KEY)  # it ends: the hand-overs asked for go through
            assert_same_state(await load_one(b.store, KEY, lstm_state()), lstm_state(0))

    asyncio.run(scenario())


def test_a_clean_stop_leaves_the_states_for_the_next_server(any_redis: str, namespace: str) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as before_restart:
            keys = [SessionKey(ANONYMOUS, "sine-lstm", "1", i) for i in range(3)]
            await before_restart.store.save(keys, lstm_state(rows=3), [0, 1, 2], [Progress()] * 3)
        async with Worker(any_redis, namespace) as after_restart:
            into = zeros_like(lstm_state(rows=3))
            assert await after_restart.store.load(keys, into, [0, 1, 2]) == [Progress()] * 3
            assert_same_state(into, lstm_state(rows=3))

    asyncio.run(scenario())


def test_the_sessions_of_a_worker_that_died_are_gone_at_once(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            # As when a's process is killed: its liveness records lapse, its states are lost.
            space = Keyspace(namespace, is_cluster_url(any_redis))
            client = sync_client(any_redis)
            for bucket in range(space.buckets):
                client.delete(f"{space.prefix(bucket)}worker:{a.store.worker}")
            client.close()
            assert await load_one(b.store, KEY, lstm_state()) is None
            assert await b.store.count() == 0

    asyncio.run(scenario())


def test_a_dead_worker_is_reaped_in_every_bucket_and_its_sessions_are_lost(
    any_redis: str, namespace: str
) -> None:
    """The supervisor's declare_dead reaps a worker that died holding sessions spread over
    the buckets: each one's next step, on another worker, hears that its state was lost
    (a tombstone in its bucket), and neither the count nor the census counts it."""
    keys = [SessionKey(ANONYMOUS, "sine-lstm", "1", f"device-{i}") for i in range(12)]

    async def scenario() -> None:
        dead = OwnedStore(any_redis, 60.0, namespace)  # never started: its close hands nothing
        async with Worker(any_redis, namespace) as survivor:
            for key in keys:
                await save_one(dead, key, lstm_state(1))
            await dead.close()  # as when its process is killed: the states go with it
            assert survivor.store.active() == {("sine-lstm", "1"): len(keys)}
            args = (any_redis, dead.worker, 60.0, namespace)
            assert await asyncio.to_thread(declare_dead, *args) == len(keys)
            for key in keys:
                [loaded] = await survivor.store.load([key], zeros_like(lstm_state()), [0])
                assert isinstance(loaded, Gone) and loaded.why == "lost", loaded
            assert await survivor.store.count() == 0
            assert survivor.store.active().get(("sine-lstm", "1"), 0) == 0

    asyncio.run(scenario())


def test_a_worker_whose_session_was_started_again_elsewhere_drops_its_copy(
    any_redis: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            await save_one(b.store, KEY, lstm_state(1))  # a start on b, racing with a's step
            await a.store.expire()  # a's sweep finds it no longer owns the session
            assert_same_state(await load_one(a.store, KEY, lstm_state()), lstm_state(1))

    asyncio.run(scenario())


def test_a_sequence_that_ends_while_claimed_again_is_not_counted(
    any_redis: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis lost its data (its keys deleted, as a restart without persistence leaves it)
    while this worker holds two sequences. One ends: its end reaches Redis, finds no record
    to drop, and the worker's sweep claims both again before the end frees the state here
    (the order a busy event loop may resume them in). The claim's record of the ended one
    is dropped: what Redis counts is what is held."""
    ending, going_on = (SessionKey(ANONYMOUS, "sine-lstm", "1", f"device-{i}") for i in (1, 2))
    reached_redis, claimed = asyncio.Event(), asyncio.Event()
    drop = Held.drop

    async def drop_after_the_claim(held: Held, keys: Sequence[SessionKey]) -> list[bool]:
        if ending in keys:
            reached_redis.set()
            await claimed.wait()
        return await drop(held, keys)

    async def scenario() -> None:
        async with Worker(any_redis, namespace) as worker:
            both = lstm_state(0, rows=2)
            await worker.store.save([ending, going_on], both, [0, 1], [Progress(), Progress()])
            client = sync_client(any_redis)
            for stored in keys_like(any_redis, f"{namespace}:*"):
                client.delete(stored)
            client.close()
            monkeypatch.setattr(Held, "drop", drop_after_the_claim)
            end = asyncio.create_task(worker.store.end([ending], lstm_state(1), [0], [Progress()]))
            await reached_redis.wait()
            await worker.store.expire()  # notices the loss and claims both again
            claimed.set()
            await end
            assert worker.store.active() == {("sine-lstm", "1"): 1}
            kept = {stem: rows[:, 1:] for stem, rows in both.items()}
            assert_same_state(await load_one(worker.store, going_on, lstm_state()), kept)

    asyncio.run(scenario())


def test_a_session_handed_over_while_its_record_is_claimed_again_goes_to_the_asker(
    any_redis: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker b steps a session a holds, so a hands it over: its release reaches Redis (a's
    record gone, the state left for b), and a's sweep, finding a's record gone, claims the
    session again before a frees its copy (the order a busy event loop may resume them
    in). The claim leaves a released session alone: b takes it at its latest."""
    released, claimed = asyncio.Event(), asyncio.Event()
    drop = Held.drop

    async def drop_after_the_claim(held: Held, keys: Sequence[SessionKey]) -> list[bool]:
        if KEY in keys and not claimed.is_set():
            released.set()
            await claimed.wait()
        return await drop(held, keys)

    async def scenario() -> None:
        async with Worker(any_redis, namespace) as a, Worker(any_redis, namespace) as b:
            await save_one(a.store, KEY, lstm_state(0))
            monkeypatch.setattr(Held, "drop", drop_after_the_claim)
            taking = asyncio.create_task(load_one(b.store, KEY, lstm_state()))
            await released.wait()
            await a.store.expire()  # a's record of it is gone: claimed again
            claimed.set()
            assert_same_state(await taking, lstm_state(0))
            await save_one(b.store, KEY, lstm_state(1))
            await a.store.expire()
            assert_same_state(await load_one(b.store, KEY, lstm_state()), lstm_state(1))
            assert b.store.active() == {("sine-lstm", "1"): 1}

    asyncio.run(scenario())
