"""What every state store promises the session manager: the memory store, the Redis store
and the owned store (both on a real redis-server and on a real Redis Cluster of three
masters with a replica each) pass the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from rnnserve.service.errors import FailedPrecondition
from rnnserve.service.sessions import SessionKey, StateStore
from rnnserve.service.sessions.state import Progress
from rnnserve.service.types import ANONYMOUS, State

KEY = SessionKey(ANONYMOUS, "sine-lstm", "1", 7)


def lstm_state(seed: int = 0, rows: int = 1, hidden: int = 4) -> State:
    rng = np.random.default_rng(seed)
    return {stem: rng.normal(size=(2, rows, hidden)).astype(np.float32) for stem in ("h", "c")}


def zeros_like(state: State) -> State:
    """A batch state of `state`'s shapes, all zeros: somewhere to load states into."""
    return {stem: np.zeros_like(array) for stem, array in state.items()}


async def save_one(store: StateStore, key: SessionKey, state: State) -> None:
    await store.save([key], state, [0], [Progress()])


async def load_one(store: StateStore, key: SessionKey, like: State) -> State | None:
    """The key's state loaded into a one-row batch shaped like `like`; None when there is
    none (a tombstone is none); its error raised when it cannot serve."""
    into = zeros_like(like)
    [loaded] = await store.load([key], into, [0])
    if isinstance(loaded, FailedPrecondition):
        raise loaded
    return into if isinstance(loaded, Progress) else None


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
        await save_one(store, KEY, state)
        assert (await store.contains([KEY]))[0]
        assert await store.count() == 1
        assert_same_state(await load_one(store, KEY, state), state)
        await store.close()

    asyncio.run(scenario())


def test_saving_again_replaces_the_state(make_store: Callable[..., StateStore]) -> None:
    async def scenario() -> None:
        store = make_store()
        await save_one(store, KEY, lstm_state(0))
        await save_one(store, KEY, lstm_state(1))
        assert_same_state(await load_one(store, KEY, lstm_state()), lstm_state(1))
        assert await store.count() == 1
        await store.close()

    asyncio.run(scenario())


def test_integer_and_string_ids_are_different_sessions(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await save_one(store, SessionKey(ANONYMOUS, "m", "1", 7), lstm_state(0))
        assert not (await store.contains([SessionKey(ANONYMOUS, "m", "1", "7")]))[0]
        assert not (await store.contains([SessionKey(ANONYMOUS, "m", "2", 7)]))[0]
        assert await load_one(store, SessionKey(ANONYMOUS, "other", "1", 7), lstm_state()) is None
        await store.close()

    asyncio.run(scenario())


def test_delete_frees_the_state_and_says_whether_there_was_one(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await save_one(store, KEY, lstm_state())
        assert await store.delete([KEY]) == [True]
        assert await store.delete([KEY]) == [False]
        assert not (await store.contains([KEY]))[0]
        assert await load_one(store, KEY, lstm_state()) is None
        assert await store.count() == 0
        await store.close()

    asyncio.run(scenario())


def test_a_state_of_other_shapes_than_the_model_expects_is_refused(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        await save_one(store, KEY, lstm_state())
        gru_state = {"h": lstm_state()["h"]}
        with pytest.raises(FailedPrecondition, match="does not fit the model") as raised:
            await load_one(store, KEY, gru_state)
        assert "sequence_start=true" in raised.value.message
        with pytest.raises(FailedPrecondition, match=r"expects \{'h': \(2, 1, 8\)"):
            await load_one(store, KEY, lstm_state(hidden=8))
        await store.close()

    asyncio.run(scenario())


def test_an_idle_session_expires_and_is_reported_once(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store(0.05)
        await save_one(store, KEY, lstm_state())
        reported: list[SessionKey] = []
        while not reported:  # poll for the effect: no assumption about timing
            await asyncio.sleep(0.02)
            reported = await store.expire()
        assert reported == [KEY]
        assert await load_one(store, KEY, lstm_state()) is None
        assert await store.count() == 0
        assert await store.expire() == []
        await store.close()

    asyncio.run(scenario())


def test_an_expiry_noticed_by_a_new_start_is_still_reported_once(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store(0.05)
        await save_one(store, KEY, lstm_state())
        while (await store.contains([KEY]))[0]:
            await asyncio.sleep(0.02)
        store.idle_timeout_s = 60.0
        await save_one(store, KEY, lstm_state(1))  # the id starts again
        assert await store.expire() == [KEY]
        assert await store.expire() == []
        assert (await store.contains([KEY]))[0]
        await store.close()

    asyncio.run(scenario())


def test_many_sessions_load_and_save_as_rows_of_one_batch(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        batch = lstm_state(rows=5)
        keys = [SessionKey(ANONYMOUS, "sine-lstm", "1", i) for i in range(5)]
        await store.save(keys[:4], batch, [0, 1, 2, 3], [Progress()] * 4)
        # Gathered into other rows, in another order; the unknown session's row is untouched.
        into = {stem: np.full((2, 5, 4), -1, np.float32) for stem in batch}
        loaded = await store.load([keys[4], keys[3], keys[0]], into, [0, 1, 4])
        assert loaded == [None, Progress(), Progress()]
        for stem in batch:
            np.testing.assert_array_equal(into[stem][:, 0], -1)
            np.testing.assert_array_equal(into[stem][:, 1], batch[stem][:, 3])
            np.testing.assert_array_equal(into[stem][:, 4], batch[stem][:, 0])
        assert await store.delete([keys[1], keys[4]]) == [True, False]
        assert await store.contains(keys) == [True, False, True, True, False]
        await store.close()

    asyncio.run(scenario())


def test_thousands_of_sessions_come_and_go_without_mixing_states(
    make_store: Callable[..., StateStore],
) -> None:
    async def scenario() -> None:
        store = make_store()
        batch, again = lstm_state(rows=3000), lstm_state(1, rows=3000)
        keys = [SessionKey(ANONYMOUS, "sine-lstm", "1", i) for i in range(3000)]
        rows = list(range(3000))
        await store.save(keys, batch, rows, [Progress(row) for row in rows])
        await store.delete(keys[::2])  # free slots in the middle, then take them again
        await store.save(keys[::2], again, rows[::2], [Progress()] * len(rows[::2]))
        into = zeros_like(batch)
        loaded = await store.load(keys, into, rows)
        assert [one.offset for one in loaded] == [0 if row % 2 == 0 else row for row in rows]
        for stem in batch:
            np.testing.assert_array_equal(into[stem][:, 1::2], batch[stem][:, 1::2])
            np.testing.assert_array_equal(into[stem][:, ::2], again[stem][:, ::2])
        assert await store.count() == 3000
        await store.close()

    asyncio.run(scenario())
