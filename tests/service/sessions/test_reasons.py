"""Every reason the server gives for refusing a sequence's step is true: the table of
reasons by store. Each cell is a test that provokes the reason for real (real
redis-server) and checks its status code and its words: the cells proven elsewhere are
named below, the others are here, and those where a reason cannot arise are skipped here
saying why. Here, no other reason's words come with the one given.

The words name the reason (accounting.py builds the messages):

    unknown   INVALID_ARGUMENT   "the server knows no such sequence"
    ended     INVALID_ARGUMENT   "it ended (sequence_end) after N time steps"
              (with an offset: FAILED_PRECONDITION "it ended after N time steps")
    expired   INVALID_ARGUMENT   "it expired after S s idle"
    lost      ABORTED            "was lost: Redis at ... lost its data at ..."
                                 "was lost: the server process holding it stopped
                                  unexpectedly"

Reason x store (memory, redis, owned), and where each cell is proven:

- unknown, every store: test_session_manager.py::
  test_a_continuation_of_an_unknown_id_must_begin_with_the_start_flag (the whole message).
- ended, every store: test_session_manager.py::test_an_end_frees_the_state; with an
  offset: test_step_accounting.py::
  test_a_retried_start_is_answered_again_and_a_new_start_begins_again.
- expired, every store: test_session_manager.py::test_an_idle_session_expires.
- lost, Redis lost its data:
  memory: does not apply (skipped below); redis: test_redis_store.py::
  test_a_sequence_whose_state_redis_lost_with_its_data_is_lost_not_unknown, over the wire
  tests/faults/test_redis_outage.py::test_redis_killed_and_started_again_empty[redis];
  owned: here (a sequence no worker holds any longer), while the sequences the workers
  hold go on (test_redis_killed_and_started_again_empty[owned]).
- lost, its server process stopped:
  memory and redis: do not apply (skipped below); owned: test_owned_store.py::
  test_a_dead_worker_is_reaped_in_every_bucket_and_its_sessions_are_lost, over the wire
  tests/faults/test_worker_crash.py::test_a_killed_worker_is_started_again_while_the_other_serves[owned].
- none of these: two clients sending one step of a live sequence at once, with offsets,
  every store: here (two processes' session managers for the stores in Redis); over the
  wire on two workers tests/faults/test_uncertain_writes.py::
  test_attempts_at_one_step_on_two_workers_are_applied_once.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable

import numpy as np
import pytest
from redis_helpers import keys_like, sync_client
from test_session_manager import fresh_key

from rnnserve.service.errors import ServiceError, Unavailable
from rnnserve.service.sessions import SessionKey, SessionManager, StateStore
from rnnserve.service.sessions.accounting import RowStep
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.owned import generation
from rnnserve.service.sessions.owned.store import OwnedStore
from rnnserve.service.types import State

# The words that name each reason, found in no other reason's message (an unknown
# sequence's says "never started, or it ended or expired longer ago").
REASON_WORDS = {
    "unknown": r"knows no such sequence",
    "ended": r"it ended (\(sequence_end\) )?after",
    "expired": r"it expired after",
    "lost: Redis lost its data": r"was lost: Redis at .* lost its data",
    "lost: its process stopped": r"was lost: the server process holding it stopped",
}


def reasons_in(error: ServiceError) -> set[str]:
    return {reason for reason, words in REASON_WORDS.items() if re.search(words, error.message)}


def assert_reason(error: ServiceError, code: str, reason: str) -> None:
    """The error has the code and gives the reason, and no other."""
    assert (error.code, reasons_in(error)) == (code, {reason}), error.message


def zeros() -> State:
    return {"h": np.zeros((1, 1, 1), np.float32)}


async def add_one(state: State) -> tuple[float, State]:
    """One time step that adds 1 to the running sum, yielding mid-step so that attempts
    at one step overlap."""
    await asyncio.sleep(0.005)
    total = state["h"] + 1
    return float(total.item()), {"h": total}


def answers(result: float | None) -> dict[str, np.ndarray]:
    return {"y": np.array([[result]], np.float32)}


def offset_step(key: SessionKey, offset: int, start: bool = False) -> RowStep:
    """The step of one time step at `offset`; its digest names it, so that a second attempt
    at it is known for one."""
    return RowStep(key, start, False, offset, 1, f"step at {offset}".encode())


NOT_FOR_MEMORY = pytest.mark.skip(
    reason="does not apply: the memory store keeps states in the server's one process, "
    "without Redis (that process stopping is the server stopping)"
)


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("memory", marks=NOT_FOR_MEMORY),
        pytest.param(
            "redis",
            marks=pytest.mark.skip(
                reason="proven by test_redis_store.py::"
                "test_a_sequence_whose_state_redis_lost_with_its_data_is_lost_not_unknown "
                "and tests/faults/test_redis_outage.py"
            ),
        ),
        "owned",
    ],
)
def test_a_sequence_no_worker_holds_after_redis_lost_its_data_is_lost_with_redis(
    redis_url: str, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server stopped cleanly (its states written to Redis for the next one), then Redis
    lost its data (its keys deleted, as a restart without persistence leaves it): the
    sequence is held nowhere. A worker asked to step it first says it may be retried (a
    live worker holding it may not have claimed it again yet), then, once every live
    worker has had the time to claim its own (LIVENESS_S, shortened here), that its state
    was lost with Redis's data."""
    monkeypatch.setattr(generation, "LIVENESS_S", 0.5)
    namespace = f"test-{uuid.uuid4().hex}"

    async def scenario() -> None:
        stopped = SessionManager(OwnedStore(redis_url, 60.0, namespace), max_sessions=10)
        survivor = SessionManager(OwnedStore(redis_url, 60.0, namespace), max_sessions=10)
        await stopped.start()
        await survivor.start()
        key = fresh_key()
        await stopped.step(offset_step(key, 0, start=True), zeros(), add_one, answers)
        await stopped.close()
        client = sync_client(redis_url)
        for stored in keys_like(redis_url, f"{namespace}:*"):
            client.delete(stored)
        client.close()
        async with asyncio.timeout(30):
            while True:
                with pytest.raises(ServiceError) as refused:
                    await survivor.step(offset_step(key, 1), zeros(), add_one, answers)
                if not isinstance(refused.value, Unavailable):
                    break
                # Redis did lose its data; what the sequence became is not said yet.
                assert reasons_in(refused.value) == set(), refused.value.message
                assert "claims it again within" in refused.value.message
                assert refused.value.message.endswith("the request may be retried")
                await asyncio.sleep(0.1)
        assert_reason(refused.value, "ABORTED", "lost: Redis lost its data")
        assert f"Redis at {redis_url[8:]} lost its data at " in refused.value.message
        await survivor.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "store",
    [
        pytest.param("memory", marks=NOT_FOR_MEMORY),
        pytest.param(
            "redis",
            marks=pytest.mark.skip(
                reason="does not apply: the redis store writes every step to Redis, so a "
                "dead worker loses no sequence (tests/faults/test_worker_crash.py[redis]: "
                "every sequence continues)"
            ),
        ),
        pytest.param(
            "owned",
            marks=pytest.mark.skip(
                reason="proven by test_owned_store.py::"
                "test_a_dead_worker_is_reaped_in_every_bucket_and_its_sessions_are_lost and "
                "tests/faults/test_worker_crash.py[owned]"
            ),
        ),
    ],
)
def test_a_sequence_whose_process_stopped_is_lost_with_it(store: str) -> None:
    """Each cell is skipped: see its reason."""


@pytest.mark.parametrize("make_store", ["memory", "redis", "owned"], indirect=True)
def test_two_clients_sending_one_step_of_a_live_sequence_hear_no_reason(
    make_store: Callable[..., StateStore],
) -> None:
    """Two clients send each step of one sequence at once, with its offset (one a retry of
    the other's attempt, say), to two server processes where the store is shared: each
    step is applied once, and each attempt is answered its sum, or told to retry it
    (UNAVAILABLE), never that the sequence is unknown, ended, expired or lost; nor does
    a sweep running meanwhile expire it."""
    steps = 20

    async def scenario() -> None:
        first = SessionManager(make_store(), max_sessions=10)
        # The memory store is one process's: both clients reach that one.
        one_process = isinstance(first.store, MemoryStore)
        managers = [first] if one_process else [first, SessionManager(make_store(), 10)]
        for manager in managers:
            await manager.start()
        key = fresh_key()
        await first.step(offset_step(key, 0, start=True), zeros(), add_one, answers)

        async def attempt(manager: SessionManager, offset: int) -> float:
            """One client's attempt at the step at `offset`, sent again while told to."""
            for _ in range(50):
                try:
                    result, outcome = await manager.step(
                        offset_step(key, offset), zeros(), add_one, answers
                    )
                except Unavailable as retry:
                    assert reasons_in(retry) == set(), retry.message
                    continue
                if outcome.answer is not None:  # the other attempt's, answered again
                    return float(outcome.answer["y"].item())
                assert result is not None
                return result
            raise AssertionError(f"the step at {offset} was never answered")

        for offset in range(1, steps + 1):
            both = asyncio.gather(attempt(first, offset), attempt(managers[-1], offset))
            # Each process sweeps its idle sessions meanwhile, as its sweeper does.
            sweeps = asyncio.gather(*(manager.store.expire() for manager in managers))
            answered, expired = await asyncio.gather(both, sweeps)
            # Applied once: each answer is the sum before it plus one.
            assert list(answered) == [offset + 1.0, offset + 1.0]
            assert expired == [[]] * len(managers)
        for manager in managers:
            await manager.close()

    asyncio.run(scenario())
