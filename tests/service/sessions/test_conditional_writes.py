"""Writes conditional on a sequence's step count, on a real redis-server and Redis Cluster:
two server processes (two session managers on one namespace) running attempts at one step
at once apply it once, and a write whose outcome the server cannot know is said to be
unknown, never unapplied, and is resolved by the sequence's offset."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from processes import free_port
from redis_helpers import RedisServer, sync_client

from rnnserve.protocol.sequences import SEQUENCE_OFFSET, SEQUENCE_OUTCOME, UNKNOWN_OUTCOME
from rnnserve.service.errors import Aborted, FailedPrecondition, Unavailable
from rnnserve.service.sessions import SessionKey, SessionManager
from rnnserve.service.sessions.accounting import RowStep
from rnnserve.service.sessions.manager import Computation
from rnnserve.service.sessions.reachability import OutcomeUnknown, StoreUnavailable
from rnnserve.service.sessions.redis_store import RedisStore
from rnnserve.service.sessions.state import Progress
from rnnserve.service.types import ANONYMOUS, State


def initial() -> State:
    return {"h": np.zeros((1, 1, 1), np.float32)}


def add(value: float, before_store: asyncio.Event | None = None) -> Computation[float]:
    """A step that adds `value` to the running sum and answers the new sum, once
    `before_store` (if any) is set."""

    async def run(state: State) -> tuple[float, State]:
        total = state["h"] + value
        if before_store is not None:
            await before_store.wait()
        return float(total.item()), {"h": total}

    return run


def answers(result: float) -> dict[str, np.ndarray]:
    return {"y": np.array([[result]], np.float32)}


def row(
    key: SessionKey, offset: int | None, start: bool = False, end: bool = False, inputs: str = ""
) -> RowStep:
    """A step of one time step; with an offset, its digest says which step it is (and
    `inputs`, which inputs)."""
    digest = b"" if offset is None else f"step at {offset}{inputs}".encode()
    return RowStep(key, start, end, offset, 1, digest)


async def step(manager: SessionManager, one: RowStep, run: Computation[float]) -> float | None:
    result, outcome = await manager.step(one, initial(), run, answers)
    if outcome.answer is not None:  # a retry answered again
        return float(outcome.answer["y"].item())
    return result


async def total(manager: SessionManager, key: SessionKey) -> tuple[int, float]:
    """The sequence's count and sum, as a step of nothing finds them."""
    into = initial()
    [loaded] = await manager.store.load([key], into, [0])
    assert isinstance(loaded, Progress)
    return loaded.offset, float(into["h"].item())


def processes(url: str, timeout_s: float = 1.0) -> tuple[SessionManager, SessionManager]:
    """Two server processes' session managers, on one namespace."""
    namespace = f"test-{uuid.uuid4().hex}"
    return (
        SessionManager(RedisStore(url, 60.0, namespace, timeout_s=timeout_s), 100),
        SessionManager(RedisStore(url, 60.0, namespace, timeout_s=timeout_s), 100),
    )


def fresh_key() -> SessionKey:
    return SessionKey(ANONYMOUS, f"model-{uuid.uuid4().hex[:8]}", "1", "s")


async def two_attempts(
    first: SessionManager, second: SessionManager, key: SessionKey, offset: int | None,
    adding: tuple[float, float],
) -> BaseException | float | None:  # fmt: skip
    """The step at count 1 sent to `first` (adding `adding[0]`) and, while it runs, to
    `second` (adding `adding[1]`), which writes first; what became of the first."""
    release = asyncio.Event()
    inputs = [f" adding {value}" for value in adding]
    running = asyncio.create_task(
        step(first, row(key, offset, inputs=inputs[0]), add(adding[0], release))
    )
    await asyncio.sleep(0.05)  # the first attempt has loaded the sequence and runs
    assert await step(second, row(key, offset, inputs=inputs[1]), add(adding[1])) == 1 + adding[1]
    release.set()
    outcome: BaseException | float | None
    try:
        outcome = await running
    except (Aborted, Unavailable) as error:
        outcome = error
    return outcome


@pytest.mark.parametrize("offset", [1, None], ids=["offsets", "no-offsets"])
def test_two_attempts_at_one_step_in_two_processes_apply_it_once(
    any_redis: str, offset: int | None
) -> None:
    """The later writer finds the very record it writes: the step was applied once, and
    both attempts are answered."""

    async def scenario() -> None:
        first, second = processes(any_redis)
        key = fresh_key()
        await step(first, row(key, None if offset is None else 0, start=True), add(1))
        assert await two_attempts(first, second, key, offset, (10, 10)) == 11
        assert await total(first, key) == (2, 11)
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_of_two_different_steps_at_one_count_the_later_writer_is_told_to_retry(
    any_redis: str,
) -> None:
    """With offsets: the step refused is told to send itself again, which then hears the
    count it must resynchronise to (another step, not it, was applied)."""

    async def scenario() -> None:
        first, second = processes(any_redis)
        key = fresh_key()
        await step(first, row(key, 0, start=True), add(1))
        refused = await two_attempts(first, second, key, 1, (10, 20))
        assert isinstance(refused, Unavailable)
        assert refused.message.endswith(
            "this one was not applied; retry it with its sequence_offset"
        )
        with pytest.raises(FailedPrecondition) as out_of_step:
            await step(first, row(key, 1, inputs=" adding 10"), add(10))
        assert out_of_step.value.details == {SEQUENCE_OFFSET: 2}
        assert await total(first, key) == (2, 21)
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_without_offsets_the_refused_step_hears_the_count_and_the_sequence_waits_for_one(
    any_redis: str,
) -> None:
    """Without offsets a step cannot tell its own earlier attempt from another step: it is
    refused ABORTED with the server's count, and so is every step without an offset, until
    one with it resynchronises the sequence."""

    async def scenario() -> None:
        first, second = processes(any_redis)
        key = fresh_key()
        await step(first, row(key, None, start=True), add(1))
        refused = await two_attempts(first, second, key, None, (10, 20))
        assert isinstance(refused, Aborted)
        assert refused.details == {SEQUENCE_OFFSET: 2}
        assert "this one was not applied" in refused.message
        with pytest.raises(Aborted, match="outcome of an earlier step may be unknown") as unsure:
            await step(first, row(key, None), add(100))
        assert unsure.value.details == {SEQUENCE_OFFSET: 2}
        assert await step(second, row(key, 2), add(100)) == 121  # resynchronised
        assert await step(first, row(key, None), add(1000)) == 1121
        assert await total(first, key) == (4, 1121)
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_write_whose_reply_never_came_is_unknown_and_its_retry_learns_its_fate(
    redis_url: str,
) -> None:
    """Redis holds the write past the store's timeout (CLIENT PAUSE WRITE), then applies
    it or, the connection closed meanwhile, drops it. Either way the step is ABORTED with
    sequence_outcome unknown, never "nothing was applied"; a blind retry without its offset
    is refused with the server's count, and so is every step without an offset, on any
    process, until one with it resynchronises the sequence."""

    async def scenario() -> None:
        first, second = processes(redis_url, timeout_s=0.3)
        key = fresh_key()
        await step(first, row(key, 0, start=True), add(1))
        await step(first, row(key, None), add(2))

        async def held_write(state: State) -> tuple[float, State]:
            pause(redis_url, 1.0)  # before the step's write: it waits in Redis
            return await add(10)(state)

        with pytest.raises(OutcomeUnknown) as unknown:
            await step(first, row(key, None), held_write)
        assert unknown.value.code == "ABORTED"
        assert unknown.value.details == {SEQUENCE_OUTCOME: UNKNOWN_OUTCOME}
        assert "nothing was applied" not in unknown.value.message
        time.sleep(1.0)  # the pause is over
        count, sum_ = await total(second, key)
        assert (count, sum_) in ((2, 3), (3, 13))  # dropped, or applied late
        with pytest.raises(Aborted) as blind:  # the same step again, without its offset
            await step(first, row(key, None), add(10))
        assert blind.value.details == {SEQUENCE_OFFSET: count}
        with pytest.raises(Aborted, match="outcome of an earlier step may be unknown"):
            await step(second, row(key, None), add(100))  # on any process
        assert await step(second, row(key, count), add(100)) == sum_ + 100  # resynchronised
        assert await step(first, row(key, None), add(1000)) == sum_ + 1100
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_write_to_a_redis_that_refuses_the_connection_was_not_applied_and_is_retried(
    redis_url: str, tmp_path: Path
) -> None:
    """Redis stops (its port closed) while a step without an offset runs: its write finds
    no connection to make, so nothing of it was sent. It is UNAVAILABLE, saying that
    nothing was applied, and, sent again as that invites once Redis is back (with what it
    had written), applied once: the sequence adds up as the whole does."""
    binary = shutil.which("redis-server")  # installed by redis_url where the machine lacks it
    assert binary, "redis-server is not on PATH"
    server = RedisServer(binary, free_port(), tmp_path, persistent=True)
    server.start()

    async def scenario() -> None:
        store = RedisStore(server.url, 60.0, f"test-{uuid.uuid4().hex}", timeout_s=0.5)
        manager = SessionManager(store, 100)
        key = fresh_key()
        await step(manager, row(key, None, start=True), add(1))

        async def port_closed(state: State) -> tuple[float, State]:
            server.stop()  # after the step loaded, before its write
            # The loop goes on, as a server's does between steps, and hears the pooled
            # connection close: the write has to connect again.
            await asyncio.sleep(0.1)
            return await add(10)(state)

        with pytest.raises(StoreUnavailable) as refused:
            await step(manager, row(key, None), port_closed)
        assert refused.value.code == "UNAVAILABLE"
        assert "nothing was applied: the request may be retried" in refused.value.message
        server.start()
        assert await step(manager, row(key, None), add(10)) == 11  # the retry, applied once
        assert await step(manager, row(key, None), add(100)) == 111
        assert await total(manager, key) == (3, 111)
        await manager.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def pause(url: str, seconds: float) -> None:
    client = sync_client(url)
    client.execute_command("CLIENT", "PAUSE", round(seconds * 1000), "WRITE")
    client.close()
