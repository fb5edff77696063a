"""The session manager: the state carried between the requests of a sequence.

The computation here is a running sum kept in the state, so every answer shows which
state a request started from.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from prometheus_client import REGISTRY

from rnnserve.service.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from rnnserve.service.sessions import RowStep, SessionKey, SessionManager, StateStore
from rnnserve.service.sessions.manager import Computation
from rnnserve.service.sessions.store import LiveRows
from rnnserve.service.types import ANONYMOUS, State


def zeros() -> State:
    """A fresh initial state: a continuation's stored state is copied into it."""
    return {"h": np.zeros((1, 1, 1), np.float32)}


def add(value: float) -> Computation[float]:
    """A step that adds `value` to the running sum and answers the new sum."""

    async def run(state: State) -> tuple[float, State]:
        total = state["h"] + value
        return float(total.item()), {"h": total}

    return run


def no_answers(result: object) -> dict[str, np.ndarray]:
    return {}


def batch(rows: int) -> State:
    """A batch's initial state, zeros, `rows` rows."""
    return {"h": np.zeros((1, rows, 1), np.float32)}


async def add_ten(state: State) -> tuple[None, State]:
    """A step of a batch that adds ten to each row's running sum."""
    return None, {"h": state["h"] + 10}


async def step(
    manager: SessionManager,
    key: SessionKey,
    start: bool,
    end: bool,
    initial: State,
    run: Computation[float],
) -> float | None:
    """One step without an offset, as a Triton client sends it: what `run` returned."""
    result, _ = await manager.step(RowStep(key, start, end, length=1), initial, run, no_answers)
    return result


def live_rows_store(make_store: Callable[..., StateStore], idle_s: float) -> StateStore:
    """A store whose sessions expire after `idle_s` and that offers LiveRows' calls; the
    test does not apply to the others."""
    store = make_store(idle_s)
    if not isinstance(store, LiveRows):
        pytest.skip("does not apply: the store steps every batch through step_rows")
    return store


def fresh_key(sequence_id: int | str = 1) -> SessionKey:
    # A model name of its own per test keeps the metric samples of tests apart.
    return SessionKey(ANONYMOUS, f"model-{uuid.uuid4().hex[:8]}", "1", sequence_id)


def metric(name: str, key: SessionKey) -> float:
    value = REGISTRY.get_sample_value(name, {"model": key.model, "version": key.version})
    return value or 0.0


def active(manager: SessionManager, key: SessionKey) -> int:
    """rnnserve_sessions_active of the key's version, as the store counts it when scraped."""
    return manager.store.active().get((key.model, key.version), 0)


def test_a_sequence_carries_its_state_from_request_to_request(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key()
        assert await step(manager, key, True, False, zeros(), add(1)) == 1
        assert await step(manager, key, False, False, zeros(), add(2)) == 3
        assert await step(manager, key, False, True, zeros(), add(3)) == 6
        assert metric("rnnserve_sessions_started_total", key) == 1
        assert metric("rnnserve_sessions_ended_total", key) == 1
        assert active(manager, key) == 0
        await manager.close()

    asyncio.run(scenario())


def test_a_start_begins_from_the_given_initial_state() -> None:
    async def scenario() -> None:
        manager = SessionManager(make_memory_store(), max_sessions=10)
        key = fresh_key()
        resumed = {"h": np.full((1, 1, 1), 40.0, np.float32)}  # a snapshot the client kept
        assert await step(manager, key, True, False, resumed, add(2)) == 42
        await manager.close()

    asyncio.run(scenario())


def test_a_continuation_of_an_unknown_id_must_begin_with_the_start_flag(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key(99)
        with pytest.raises(InvalidArgument) as raised:
            await step(manager, key, False, False, zeros(), add(1))
        assert raised.value.message == (
            f"sequence 99 for model {key.model} version 1 is not active: the server knows no "
            "such sequence (never started, or it ended or expired longer ago than the server "
            "remembers); a sequence must begin with sequence_start=true"
        )
        await manager.close()

    asyncio.run(scenario())


def test_a_start_on_an_id_in_use_restarts_the_session(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key()
        await step(manager, key, True, False, zeros(), add(5))
        assert await step(manager, key, True, False, zeros(), add(1)) == 1
        assert await step(manager, key, False, False, zeros(), add(1)) == 2
        assert metric("rnnserve_sessions_started_total", key) == 2
        assert active(manager, key) == 1
        await manager.close()

    asyncio.run(scenario())


def test_an_end_frees_the_state(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        store = make_store()
        manager = SessionManager(store, max_sessions=10)
        key = fresh_key()
        await step(manager, key, True, False, zeros(), add(1))
        await step(manager, key, False, True, zeros(), add(1))
        assert await store.contains([key]) == [False]
        with pytest.raises(InvalidArgument, match=r"it ended \(sequence_end\) after 2 time steps"):
            await step(manager, key, False, False, zeros(), add(1))
        await manager.close()

    asyncio.run(scenario())


def test_a_failed_step_changes_nothing(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key()
        await step(manager, key, True, False, zeros(), add(1))

        async def fail(state: State) -> tuple[float, State]:
            raise RuntimeError("the model failed")

        with pytest.raises(RuntimeError):
            await step(manager, key, False, True, zeros(), fail)
        assert await step(manager, key, False, False, zeros(), add(1)) == 2
        await manager.close()

    asyncio.run(scenario())


def test_a_stored_state_the_model_no_longer_fits_is_refused(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key()
        await step(manager, key, True, False, zeros(), add(1))
        wider = {"h": np.zeros((1, 1, 2), np.float32)}
        with pytest.raises(FailedPrecondition, match="does not fit the model"):
            await step(manager, key, False, False, wider, add(1))
        await manager.close()

    asyncio.run(scenario())


def test_an_idle_session_expires(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(0.05), max_sessions=10)
        await manager.start()
        key = fresh_key()
        await step(manager, key, True, False, zeros(), add(1))
        # Poll: no timing assumed, but a lost expiry fails here instead of hanging the suite.
        async with asyncio.timeout(30):
            while metric("rnnserve_sessions_expired_total", key) == 0:
                await asyncio.sleep(0.02)
        assert active(manager, key) == 0
        with pytest.raises(InvalidArgument, match=r"is not active: it expired after 0\.05 s idle"):
            await step(manager, key, False, False, zeros(), add(1))
        await manager.close()

    asyncio.run(scenario())


def test_the_session_limit_refuses_new_sessions_only(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=2)
        first, second, third = fresh_key(1), fresh_key(2), fresh_key(3)
        await step(manager, first, True, False, zeros(), add(1))
        await step(manager, second, True, False, zeros(), add(1))
        with pytest.raises(ResourceExhausted) as raised:
            await step(manager, third, True, False, zeros(), add(1))
        assert raised.value.message.startswith(
            "session limit reached: 2 active sessions (max_sessions=2)"
        )
        assert metric("rnnserve_sessions_rejected_total", third) == 1
        # At the limit, sessions in use go on and may restart.
        assert await step(manager, first, False, False, zeros(), add(1)) == 2
        assert await step(manager, first, True, False, zeros(), add(1)) == 1
        await step(manager, second, False, True, zeros(), add(1))
        assert await step(manager, third, True, False, zeros(), add(1)) == 1
        await manager.close()

    asyncio.run(scenario())


def test_concurrent_starts_never_exceed_the_session_limit() -> None:
    async def scenario() -> None:
        manager = SessionManager(make_memory_store(), max_sessions=3)

        async def slow_start(state: State) -> tuple[float, State]:
            await asyncio.sleep(0.01)  # every start is in flight at once
            return 0.0, state

        model = fresh_key().model
        starts = [
            step(manager, SessionKey(ANONYMOUS, model, "1", i), True, False, zeros(), slow_start)
            for i in range(1, 9)
        ]
        results = await asyncio.gather(*starts, return_exceptions=True)
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(refused) == 5
        assert await manager.store.count() == 3
        await manager.close()

    asyncio.run(scenario())


def test_requests_of_one_session_apply_in_arrival_order_one_at_a_time(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        key = fresh_key()
        inside = 0
        order: list[int] = []

        def append(index: int) -> Computation[None]:
            async def run(state: State) -> tuple[None, State]:
                nonlocal inside
                inside += 1
                assert inside == 1, "two requests of one session interleaved"
                await asyncio.sleep(0.001 * (index % 3))  # yield to the others mid-step
                order.append(index)
                inside -= 1
                return None, {"h": state["h"] * 2 + index}

            return run

        await step(manager, key, True, False, zeros(), append(0))
        await asyncio.gather(
            *(step(manager, key, False, False, zeros(), append(i)) for i in range(1, 30))
        )
        assert order == list(range(30))
        expected = zeros()["h"]
        for index in range(30):
            expected = expected * 2 + index  # the same float32 arithmetic, in order
        assert await step(manager, key, False, True, zeros(), add(0)) == expected.item()
        await manager.close()

    asyncio.run(scenario())


def test_a_row_that_cannot_step_fails_alone_and_the_others_keep_their_states(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        first, second = fresh_key(1), fresh_key(2)
        await step(manager, first, True, False, zeros(), add(1))
        rows = [RowStep(second, False, False), RowStep(first, False, False)]  # second unknown
        _, outcomes = await manager.step_rows(rows, batch(2), add_ten, no_answers)
        assert isinstance(outcomes[0].error, InvalidArgument) and outcomes[1].error is None
        assert await step(manager, first, False, False, zeros(), add(0)) == 11
        await manager.close()

    asyncio.run(scenario())


def test_continuations_of_live_sessions_step_as_step_rows_steps_them(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        manager = SessionManager(make_store(), max_sessions=10)
        model = fresh_key().model
        sums = {1: 1.0, 2: 2.0, 3: 3.0}  # each session's running sum, twins alike
        plain = [SessionKey(ANONYMOUS, model, "1", i) for i in sums]
        twins = [SessionKey(ANONYMOUS, model, "1", -i) for i in sums]
        for key, twin, total in zip(plain, twins, sums.values(), strict=True):
            await step(manager, key, True, False, zeros(), add(total))
            await step(manager, twin, True, False, zeros(), add(total))
        continued = await manager.continue_rows(plain, [2, 2, 2], batch(3), add_ten)
        rows = [RowStep(twin, False, False, length=2) for twin in twins]
        _, outcomes = await manager.step_rows(rows, batch(3), add_ten, no_answers)
        if isinstance(manager.store, LiveRows):
            assert continued is not None
            assert continued[1].tolist() == [outcome.offset for outcome in outcomes] == [3] * 3
        else:  # left to step_rows, having changed nothing
            assert continued is None
        for key, twin, total in zip(plain, twins, sums.values(), strict=True):
            ten = 10 if continued is not None else 0
            assert await step(manager, key, False, False, zeros(), add(0)) == total + ten
            assert await step(manager, twin, False, False, zeros(), add(0)) == total + 10
        await manager.close()

    asyncio.run(scenario())


def test_a_continuation_whose_sessions_expire_while_it_runs_writes_over_no_other_session(
    make_store: Callable[..., StateStore],
) -> None:
    """A store that saves a batch's states where it loaded them from must notice that a
    session left its place while the batch ran: here the batch's sessions expire during
    the run and a new session starts in the place one held; it keeps its own state."""
    idle_s = 0.5
    store = live_rows_store(make_store, idle_s)

    async def scenario() -> None:
        manager = SessionManager(store, max_sessions=10)
        model = fresh_key().model
        batch_keys = [SessionKey(ANONYMOUS, model, "1", i) for i in range(3)]
        newcomer = SessionKey(ANONYMOUS, model, "1", "newcomer")
        for key in batch_keys:
            await step(manager, key, True, False, zeros(), add(1))

        async def expiring_run(state: State) -> tuple[None, State]:
            await asyncio.sleep(idle_s * 3)
            assert set(await store.expire()) == set(batch_keys)
            await step(manager, newcomer, True, False, zeros(), add(100))
            return await add_ten(state)

        continued = await manager.continue_rows(batch_keys, [1, 1, 1], batch(3), expiring_run)
        assert continued is not None
        assert await step(manager, newcomer, False, False, zeros(), add(0)) == 100
        await manager.close()

    asyncio.run(scenario())


def test_continuations_of_a_session_not_live_are_left_to_step_rows_changing_nothing(
    make_store: Callable[..., StateStore],
) -> None:
    idle_s = 0.5
    store = live_rows_store(make_store, idle_s)

    async def scenario() -> None:
        manager = SessionManager(store, max_sessions=10)
        model = fresh_key().model
        live, ended, expired, unknown, misfit = (
            SessionKey(ANONYMOUS, model, "1", name)
            for name in ("live", "ended", "expired", "unknown", "misfit")
        )
        await step(manager, expired, True, False, zeros(), add(1))
        await asyncio.sleep(idle_s * 3)  # past its deadline (no sweeper: still in the store)
        for key in (live, ended):
            await step(manager, key, True, False, zeros(), add(1))
        await step(manager, ended, False, True, zeros(), add(1))
        wider = {"h": np.zeros((1, 1, 2), np.float32)}  # of another layout
        await manager.step(RowStep(misfit, True, False), wider, add_ten, no_answers)
        for other in (ended, expired, unknown, misfit):
            assert await manager.continue_rows([live, other], [1, 1], batch(2), add_ten) is None
        # Nothing ran or changed: step_rows tells each row what a step alone hears.
        keys = (live, ended, expired, unknown, misfit)
        rows = [RowStep(key, False, False, length=1) for key in keys]
        _, outcomes = await manager.step_rows(rows, batch(5), add_ten, no_answers)
        assert outcomes[0].error is None and outcomes[0].offset == 2
        assert "expired after 0.5 s idle" in str(outcomes[2].error)
        for row, outcome in zip(rows[1:], outcomes[1:], strict=True):
            error = outcome.error
            assert error is not None
            with pytest.raises(type(error)) as alone:
                await step(manager, row.key, False, False, zeros(), add(0))
            assert alone.value.message == error.message
        assert await step(manager, live, False, False, zeros(), add(0)) == 11
        await manager.close()

    asyncio.run(scenario())


def test_requests_naming_the_same_sessions_in_opposite_orders_both_finish() -> None:
    async def scenario() -> None:
        manager = SessionManager(make_memory_store(), max_sessions=10)
        first, second = fresh_key(1), fresh_key(2)
        for key in (first, second):
            await step(manager, key, True, False, zeros(), add(0))

        async def slow(state: State) -> tuple[None, State]:
            await asyncio.sleep(0.01)  # both requests wait for each other's sessions
            return None, {"h": state["h"] + 1}

        def request(keys: list[SessionKey]) -> Awaitable[object]:
            rows = [RowStep(key, False, False) for key in keys]
            return manager.step_rows(rows, {"h": np.zeros((1, 2, 1), np.float32)}, slow, no_answers)

        async with asyncio.timeout(30):
            await asyncio.gather(*(request([first, second]) for _ in range(5)),
                                 *(request([second, first]) for _ in range(5)))  # fmt: skip
        assert await step(manager, first, False, False, zeros(), add(0)) == 10
        await manager.close()

    asyncio.run(scenario())


def make_memory_store() -> StateStore:
    from rnnserve.service.sessions.memory_store import MemoryStore

    return MemoryStore()
