"""Step accounting (`sequence_offset`) through the data plane, in process with real ONNX
Runtime, for every state store (memory; redis and owned on a real redis-server and on a
real Redis Cluster): each response says how many time steps its sequence consumed; a step
at the server's count is applied; a retry of the last step is answered again, exactly, and
not applied twice; any other offset is refused with FAILED_PRECONDITION naming the server's
count. Unary, streamed and multi-session requests alike; hand-overs and clean restarts keep
all of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import FailedPrecondition, ServiceError
from rnnserve.service.sessions import StateStore
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.settings import Settings
from rnnserve.service.types import ANONYMOUS, InferRequest, InferResponse, Parameter, Tensor

MODELS = ("sine-lstm", "tagger-gru", "seq2seq-gru")
X = np.sin(np.linspace(0, 3, 9, dtype=np.float32))
CHUNKS = [(0, 3), (3, 5), (5, 9)]  # three steps of 3, 2 and 4 time steps


@pytest.fixture(scope="module")
def repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three models these tests use, without loading the other six each time."""
    root = tmp_path_factory.mktemp("accounting-models")
    for name in MODELS:
        (root / name).symlink_to(tiny_repository / name)
    return root


MakeStore = Callable[[], StateStore]  # the make_store fixture (conftest.py): every store


class Plane:
    """A loaded DataPlane driven from a synchronous test through one event loop."""

    def __init__(self, runner: asyncio.Runner, repository: Path, store: StateStore) -> None:
        self.runner = runner
        settings = Settings(model_repository=repository, max_sessions_per_principal=3)
        self.plane = DataPlane(settings, store)
        runner.run(self.plane.load())

    def infer(self, request: InferRequest) -> InferResponse:
        return self.runner.run(self.plane.infer(request))

    def stream(self, request: InferRequest) -> list[InferResponse]:
        async def collect(responses: AsyncIterator[InferResponse]) -> list[InferResponse]:
            return [response async for response in responses]

        return self.runner.run(collect(self.plane.stream_infer(request)))

    def refusal(self, request: InferRequest) -> ServiceError:
        with pytest.raises(ServiceError) as raised:
            self.infer(request)
        return raised.value

    def close(self) -> None:
        self.runner.run(self.plane.close())


@pytest.fixture
def planes(repository: Path, make_store: MakeStore) -> Iterator[Callable[[], Plane]]:
    """Opens data planes over stores of one kind (several stand for several workers)."""
    opened: list[Plane] = []
    with asyncio.Runner() as runner:

        def open_plane() -> Plane:
            opened.append(Plane(runner, repository, make_store()))
            return opened[-1]

        yield open_plane
        for plane in opened:
            if plane.plane.live():
                plane.close()


def fp32(name: str, data: np.ndarray) -> Tensor:
    data = np.asarray(data, np.float32)
    return Tensor(name, "FP32", data.shape, data)


def text(name: str, rows: list[str]) -> Tensor:
    data = np.array([row.encode() for row in rows], object)
    return Tensor(name, "BYTES", data.shape, data)


def sine_step(
    sequence_id: int | str,
    chunk: tuple[int, int],
    offset: int | None,
    *,
    start: bool = False,
    end: bool = False,
    principal: str = ANONYMOUS,
    x: np.ndarray = X,
) -> InferRequest:
    parameters: dict[str, Parameter] = {
        "sequence_id": sequence_id, "sequence_start": start, "sequence_end": end,
    }  # fmt: skip
    if offset is not None:
        parameters["sequence_offset"] = offset
    piece = x[chunk[0] : chunk[1]][None, :, None]
    return InferRequest("sine-lstm", inputs=[fp32("x", piece)], outputs=["y", "hn"],
                        parameters=parameters, principal=principal)  # fmt: skip


def outputs(response: InferResponse) -> dict[str, np.ndarray]:
    return {tensor.name: tensor.data for tensor in response.outputs}


def y_of(response: InferResponse) -> np.ndarray:
    return outputs(response)["y"].reshape(-1)


def whole(plane: Plane, x: np.ndarray = X) -> np.ndarray:
    """The whole sequence in one stateless request: what the pieces must add up to."""
    request = InferRequest("sine-lstm", inputs=[fp32("x", x[None, :, None])], outputs=["y"])
    return y_of(plane.infer(request))


def assert_same(first: InferResponse, again: InferResponse) -> None:
    """A retry's answer is the first answer exactly, offset included."""
    assert again.parameters == first.parameters
    mine, theirs = outputs(first), outputs(again)
    assert list(mine) == list(theirs)
    for name, array in mine.items():
        np.testing.assert_array_equal(theirs[name], array)


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streamed"])
def test_each_step_is_applied_once_and_a_retry_gets_the_same_answer(
    planes: Callable[[], Plane], streaming: bool
) -> None:
    plane = planes()
    send = (lambda request: plane.stream(request)[-1]) if streaming else plane.infer
    retries = {"model": "sine-lstm", "version": "1"}
    before = REGISTRY.get_sample_value("rnnserve_sequence_retries_total", retries) or 0
    answers, offset = [], 0
    for index, chunk in enumerate(CHUNKS):
        request = sine_step(7, chunk, offset, start=index == 0, end=index == len(CHUNKS) - 1)
        answer = send(request)
        offset = chunk[1]
        assert answer.parameters["sequence_offset"] == offset
        assert_same(answer, send(request))  # the retry: answered again, applied once
        answers.append(answer)
    np.testing.assert_allclose(np.concatenate([y_of(a) for a in answers]), whole(plane), atol=1e-6)
    assert REGISTRY.get_sample_value("rnnserve_sequence_retries_total", retries) == before + 3


def test_steps_without_offsets_are_counted_and_applied_as_triton_sends_them(
    planes: Callable[[], Plane],
) -> None:
    plane = planes()
    first = plane.infer(sine_step(8, CHUNKS[0], None, start=True))
    second = plane.infer(sine_step(8, CHUNKS[1], None))
    assert [first.parameters, second.parameters] == [{"sequence_offset": 3}, {"sequence_offset": 5}]
    # Without an offset a request is always applied: the same one again is a new step.
    again = plane.infer(sine_step(8, CHUNKS[1], None))
    assert again.parameters == {"sequence_offset": 7}
    # Its answer was not kept: a step claiming to retry it is out of step.
    error = plane.refusal(sine_step(8, CHUNKS[1], 5))
    assert error.details == {"sequence_offset": 7}


APPLIED = "the server has applied 5 time steps"
OTHER = "a step of 2 time steps was applied at that offset with other inputs or flags"


@pytest.mark.parametrize(
    ("chunk", "offset", "x", "why"),
    [
        (CHUNKS[2], 4, X, APPLIED),  # a gap: one time step not sent
        (CHUNKS[2], 9, X, APPLIED),  # ahead
        (CHUNKS[2], 0, X, APPLIED),  # far behind
        (CHUNKS[1], 3, -X, OTHER),  # a "retry" of the last step with other data
        (CHUNKS[2], 3, X, OTHER),  # a "retry" of the last step with another length
    ],
    ids=["gap", "ahead", "behind", "other inputs", "other length"],
)
def test_a_step_at_another_offset_is_refused_naming_the_servers_count(
    planes: Callable[[], Plane], chunk: tuple[int, int], offset: int, x: np.ndarray, why: str
) -> None:
    plane = planes()
    plane.infer(sine_step(9, CHUNKS[0], 0, start=True))
    plane.infer(sine_step(9, CHUNKS[1], 3))

    error = plane.refusal(sine_step(9, chunk, offset, x=x))
    assert isinstance(error, FailedPrecondition) and why in error.message
    assert f"sequence_offset {offset} does not match sequence 9" in error.message
    assert error.details == {"sequence_offset": 5}
    # Nothing was applied: the sequence goes on from 5 and still equals the whole.
    last = plane.infer(sine_step(9, CHUNKS[2], 5, end=True))
    head = plane.infer(sine_step(10, (0, 5), 0, start=True))
    np.testing.assert_allclose(np.concatenate([y_of(head), y_of(last)]), whole(plane), atol=1e-6)


def test_a_retried_start_is_answered_again_and_a_new_start_begins_again(
    planes: Callable[[], Plane],
) -> None:
    plane = planes()
    start = sine_step("s", CHUNKS[0], 0, start=True)
    first = plane.infer(start)
    assert_same(first, plane.infer(start))
    # Another start, with other inputs, begins the sequence again.
    other = plane.infer(sine_step("s", CHUNKS[0], 0, start=True, x=-X))
    assert other.parameters == {"sequence_offset": 3}
    assert not np.array_equal(y_of(other), y_of(first))
    # A whole sequence in one request, retried: answered again from its record.
    once = sine_step("once", (0, 9), 0, start=True, end=True)
    answer = plane.infer(once)
    assert_same(answer, plane.infer(once))
    np.testing.assert_allclose(y_of(answer), whole(plane), atol=1e-6)
    # The end is final: a step after it is refused, naming the count it ended at.
    error = plane.refusal(sine_step("once", (0, 2), 9))
    assert "it ended after 9 time steps" in error.message
    assert error.details == {"sequence_offset": 9}


def test_a_late_start_after_its_sequence_went_on_is_refused_and_the_sequence_goes_on(
    planes: Callable[[], Plane], make_store: MakeStore
) -> None:
    """An attempt at a sequence's first step that arrives once the sequence has gone on
    (another attempt was answered, and the client went on) does not begin it again: the
    client's next steps would all be wrong. The start at the server's count does: a
    client that means to begin again says so. Stepped on two workers when the store has
    several (the late attempt reaches the other one), on one otherwise."""
    shared = MemoryStore not in (make_store, getattr(make_store, "func", None))
    first_worker = planes()
    other_worker = planes() if shared else first_worker
    start = sine_step("late", CHUNKS[0], 0, start=True)
    first_worker.infer(start)
    first_worker.infer(sine_step("late", CHUNKS[1], 3))

    error = other_worker.refusal(start)  # the late attempt
    assert isinstance(error, FailedPrecondition)
    assert "has gone on past its first step, to 5 time steps" in error.message
    assert "send the start with sequence_offset=5" in error.message
    assert error.details == {"sequence_offset": 5}
    last = first_worker.infer(sine_step("late", CHUNKS[2], 5, end=True))
    assert last.parameters == {"sequence_offset": 9}

    # Begun again on purpose, at the count; then retried: answered again, at 0 or the count.
    live = sine_step("again", (0, 5), 0, start=True)
    first_worker.infer(live)
    again = sine_step("again", CHUNKS[0], 5, start=True, x=-X)
    answer = other_worker.infer(again)
    assert answer.parameters == {"sequence_offset": 3}
    assert_same(answer, first_worker.infer(again))
    assert_same(answer, other_worker.infer(sine_step("again", CHUNKS[0], 0, start=True, x=-X)))


def test_a_retry_of_a_text_step_gets_its_text_again(planes: Callable[[], Plane]) -> None:
    plane = planes()

    def piece(chars: str, offset: int, start: bool = False) -> InferRequest:
        parameters: dict[str, Parameter] = {
            "sequence_id": "tag",
            "sequence_start": start,
            "sequence_offset": offset,
        }
        return InferRequest(
            "tagger-gru", inputs=[text("text", [chars])], outputs=["text_out", "logits"],
            parameters=parameters,
        )  # fmt: skip

    first = plane.infer(piece("hel", 0, start=True))
    assert_same(first, plane.infer(piece("hel", 0, start=True)))
    second = plane.infer(piece("lo", 3))
    assert_same(second, plane.infer(piece("lo", 3)))
    tagged = [outputs(a)["text_out"][0].decode() for a in (first, second)]
    whole_text = plane.infer(InferRequest("tagger-gru", inputs=[text("text", ["hello"])]))
    assert "".join(tagged) == outputs(whole_text)["text_out"][0].decode()


def test_a_streamed_translation_retried_at_its_end_is_decoded_again(
    planes: Callable[[], Plane],
) -> None:
    plane = planes()

    def piece(chars: str, offset: int, start: bool = False, end: bool = False) -> InferRequest:
        parameters: dict[str, Parameter] = {
            "sequence_id": "date", "sequence_start": start, "sequence_end": end,
            "sequence_offset": offset,
        }  # fmt: skip
        return InferRequest("seq2seq-gru", inputs=[text("text", [chars])], parameters=parameters)

    plane.stream(piece("22 nov", 0, start=True))
    tokens = plane.stream(piece(" 2026", 6, end=True))
    again = plane.stream(piece(" 2026", 6, end=True))
    assert len(again) == len(tokens) > 1
    for first, retried in zip(tokens, again, strict=True):
        assert_same(first, retried)
    assert tokens[-1].parameters["sequence_offset"] == 11


def test_rows_count_their_sequences_and_a_retried_row_gets_its_answer_again(
    planes: Callable[[], Plane],
) -> None:
    plane = planes()
    ids = np.array([11, 12, 13], np.uint64)

    def step(chunk: tuple[int, int], offsets: list[int], start: bool = False) -> InferResponse:
        x = np.stack([X, -X, 2 * X])[:, chunk[0] : chunk[1], None]
        rows = len(offsets)
        controls = [
            Tensor("sequence_id", "UINT64", (rows,), ids[:rows]),
            Tensor("sequence_start", "BOOL", (rows,), np.full(rows, start)),
            Tensor("sequence_offset", "INT64", (rows,), np.array(offsets, np.int64)),
        ]
        request = InferRequest("sine-lstm", inputs=[fp32("x", x[:rows]), *controls],
                               outputs=["y"])  # fmt: skip
        return plane.infer(request)

    first = step(CHUNKS[0], [0, 0, 0], start=True)
    assert outputs(first)["sequence_offset"].tolist() == [3, 3, 3]
    # Row 0 retries its first step, row 1 steps on, row 2 is out of step.
    second = step(CHUNKS[1], [3, 3, 1])
    np.testing.assert_array_equal(outputs(second)["sequence_offset"], [5, 5, 3])
    errors = [e.decode() for e in outputs(second)["sequence_error"]]
    assert errors[:2] == ["", ""] and "the server has applied 3 time steps" in errors[2]
    # The same request again: rows 0 and 1 are retries, answered exactly as before.
    again = step(CHUNKS[1], [3, 3, 1])
    np.testing.assert_array_equal(outputs(again)["y"][:2], outputs(second)["y"][:2])
    np.testing.assert_array_equal(outputs(again)["sequence_offset"], [5, 5, 3])
    # A retry in a batch of other rows: row 0 alone.
    alone = step(CHUNKS[1], [3])
    np.testing.assert_array_equal(outputs(alone)["y"][0], outputs(second)["y"][0])
    joined = np.concatenate([outputs(first)["y"][0], outputs(second)["y"][0]]).reshape(-1)
    np.testing.assert_allclose(joined, whole(plane)[:5], atol=1e-6)


def test_a_retry_finds_its_answer_after_a_hand_over_and_a_clean_restart(
    planes: Callable[[], Plane], make_store: MakeStore
) -> None:
    if MemoryStore in (make_store, getattr(make_store, "func", None)):  # memory-device too
        pytest.skip("the memory store is one process's")
    first_worker, second_worker = planes(), planes()
    start = sine_step("moving", CHUNKS[0], 0, start=True)
    answer = first_worker.infer(start)
    assert_same(answer, second_worker.infer(start))  # handed over (owned), or shared (redis)
    step = sine_step("moving", CHUNKS[1], 3)
    answer = second_worker.infer(step)
    second_worker.close()  # a clean stop leaves every state, progress included, in Redis
    restarted = planes()
    assert_same(answer, restarted.infer(step))
    last = restarted.infer(sine_step("moving", CHUNKS[2], 5, end=True))
    assert last.parameters == {"sequence_offset": 9}


def test_two_principals_using_one_id_never_meet(planes: Callable[[], Plane]) -> None:
    plane = planes()
    alice = plane.infer(sine_step(1, CHUNKS[0], 0, start=True, principal="alice"))
    plane.infer(sine_step(1, CHUNKS[0], 0, start=True, principal="mallory", x=-X))
    plane.infer(sine_step(1, CHUNKS[1], 3, principal="mallory", x=-X))
    second = plane.infer(sine_step(1, CHUNKS[1], 3, principal="alice"))
    assert second.parameters == {"sequence_offset": 5}
    np.testing.assert_allclose(
        np.concatenate([y_of(alice), y_of(second)]), whole(plane)[:5], atol=1e-6
    )
    # Mallory cannot end or even see Alice's sequence, nor Bob Mallory's.
    error = plane.refusal(sine_step(1, CHUNKS[2], None, principal="bob"))
    assert "is not active" in error.message


def test_one_principal_holds_at_most_max_sessions_per_principal(
    planes: Callable[[], Plane],
) -> None:
    plane = planes()  # max_sessions_per_principal=3
    for sequence_id in (1, 2, 3):
        plane.infer(sine_step(sequence_id, CHUNKS[0], 0, start=True, principal="alice"))
    error = plane.refusal(sine_step(4, CHUNKS[0], 0, start=True, principal="alice"))
    assert error.code == "RESOURCE_EXHAUSTED"
    assert "session limit of principal 'alice' reached: 3 active sessions" in error.message
    assert "max_sessions_per_principal=3" in error.message
    plane.infer(sine_step(4, CHUNKS[0], 0, start=True, principal="bob"))  # others unaffected
    plane.infer(sine_step(1, (0, 9), 0, start=True, end=True, principal="alice"))  # restart, end
    plane.infer(sine_step(4, CHUNKS[0], 0, start=True, principal="alice"))  # room again
