"""What every state store promises the session manager: the memory store and the Redis
store (against a real redis-server) pass the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from service.errors import FailedPrecondition
from service.sessions import SessionKey, State, StateStore
from service.sessions.state import layout_of

KEY = SessionKey("sine-lstm", "1", 7)


def lstm_state(seed: int = 0) -> State:
    rng = np.random.default_rng(seed)
    return {stem: rng.normal(size=(2, 1, 4)).astype(np.float32) for stem in ("h", "c")}


def assert_same_state(found: State | None, expected: State) -> None:
    assert found is not None
    assert list(found) == list(expected)
    for stem in expected:
        np.testing.assert_array_equal(found[stem], expected[stem])
        assert found[stem].dtype == np.float32


def test_a_saved_state_loads_back_exactly(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        store = make_store()
        state = lstm_state()
        await store.save(KEY, state)
        assert await store.contains(KEY)
        assert await store.count() == 1
        assert_same_state(await store.load(KEY, layout_of(state)), state)
        await store.close()

    asyncio.run(scenario())


def test_saving_again_replaces_the_state(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.save(KEY, lstm_state(0))
        await store.save(KEY, lstm_state(1))
        assert_same_state(await store.load(KEY, layout_of(lstm_state())), lstm_state(1))
        assert await store.count() == 1
        await store.close()

    asyncio.run(scenario())


def test_integer_and_string_ids_are_different_sessions(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.save(SessionKey("m", "1", 7), lstm_state(0))
        assert not await store.contains(SessionKey("m", "1", "7"))
        assert not await store.contains(SessionKey("m", "2", 7))
        assert await store.load(SessionKey("other", "1", 7), layout_of(lstm_state())) is None
        await store.close()

    asyncio.run(scenario())


def test_delete_frees_the_state_and_says_whether_there_was_one(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.save(KEY, lstm_state())
        assert await store.delete(KEY)
        assert not await store.delete(KEY)
        assert not await store.contains(KEY)
        assert await store.load(KEY, layout_of(lstm_state())) is None
        assert await store.count() == 0
        await store.close()

    asyncio.run(scenario())


def test_a_state_of_other_shapes_than_the_model_expects_is_refused(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await store.save(KEY, lstm_state())
        gru_layout = {"h": (2, 1, 4)}
        with pytest.raises(FailedPrecondition, match="does not fit the model") as raised:
            await store.load(KEY, gru_layout)
        assert "sequence_start=true" in raised.value.message
        with pytest.raises(FailedPrecondition, match=r"expects \{'h': \(2, 1, 8\)"):
            await store.load(KEY, {"h": (2, 1, 8), "c": (2, 1, 8)})
        await store.close()

    asyncio.run(scenario())


def test_an_idle_session_expires_and_is_reported_once(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store(0.05)
        await store.save(KEY, lstm_state())
        reported: list[SessionKey] = []
        while not reported:  # poll for the effect: no assumption about timing
            await asyncio.sleep(0.02)
            reported = await store.expire()
        assert reported == [KEY]
        assert await store.load(KEY, layout_of(lstm_state())) is None
        assert await store.count() == 0
        assert await store.expire() == []
        await store.close()

    asyncio.run(scenario())


def test_an_expiry_noticed_by_a_new_start_is_still_reported_once(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store(0.05)
        await store.save(KEY, lstm_state())
        while await store.contains(KEY):
            await asyncio.sleep(0.02)
        store.idle_timeout_s = 60.0
        await store.save(KEY, lstm_state(1))  # the id starts again
        assert await store.expire() == [KEY]
        assert await store.expire() == []
        assert await store.contains(KEY)
        await store.close()

    asyncio.run(scenario())
