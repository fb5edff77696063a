"""Steps of different sessions that arrive together run as one batch (coalesce_steps, on by
default), and each is answered as it would be alone: the outputs, bit for bit, and
`sequence_offset` of a server that runs every step by itself, a session's steps in order,
and a step that cannot go on refused alone. A batch is checked against its steps run alone
until its shape is trusted, and a model whose batches differ runs its steps alone. In
process, with real ONNX Runtime over the tiny default models and users' exports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnserve.service.dataplane import DataPlane
from rnnserve.service.dataplane.coalescing import PROOF_VALUES
from rnnserve.service.errors import InvalidArgument
from rnnserve.service.sessions import open_store
from rnnserve.service.settings import Settings
from rnnserve.service.types import InferRequest, InferResponse, Parameter, Tensor

SESSIONS = 8
WAIT_S = 30  # for a batch that must not wait out its delay of a minute
SEQUENCE_FIRST = "lstm-seq-first"  # a user's export: x is (seq, batch, features)
BATCH_MEAN = "batch-mean"  # a user's export whose rows mix: its output adds the batch's mean


class Plane:
    def __init__(self, plane: DataPlane, runner: asyncio.Runner) -> None:
        self.plane = plane
        self.runner = runner

    def together(self, *requests: InferRequest) -> list[InferResponse | BaseException]:
        """The requests sent in one turn of the event loop."""

        async def send() -> list[InferResponse | BaseException]:
            calls = (self.plane.infer(request) for request in requests)
            return await asyncio.gather(*calls, return_exceptions=True)

        return self.runner.run(send())

    def spread(self, *requests: InferRequest) -> list[InferResponse | BaseException]:
        """The requests sent one turn of the event loop after the other, then awaited."""

        async def send() -> list[InferResponse | BaseException]:
            calls = []
            for request in requests:
                calls.append(asyncio.ensure_future(self.plane.infer(request)))
                await asyncio.sleep(0)
            answered = asyncio.gather(*calls, return_exceptions=True)
            return await asyncio.wait_for(answered, WAIT_S)

        return self.runner.run(send())

    def one_by_one(self, *requests: InferRequest) -> list[InferResponse]:
        return [self.runner.run(self.plane.infer(request)) for request in requests]

    def batch_sizes(self, model: str) -> set[int]:
        (stats,) = self.plane.model_statistics(model, "1")
        return set(stats.batch_stats)

    def runs(self, model: str) -> int:
        """The ORT runs the model's version has made."""
        (stats,) = self.plane.model_statistics(model, "1")
        return stats.execution_count


@pytest.fixture(scope="module")
def repository(
    tiny_repository: Path, user_exports: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The default models, a user's export with its batch on axis 1 (sequence first), and
    one whose rows mix."""
    from user_exports import export_batch_mean

    root = tmp_path_factory.mktemp("coalescing")
    for model in tiny_repository.iterdir():
        (root / model.name).symlink_to(model)
    shutil.copytree(user_exports[SEQUENCE_FIRST][1].parent, root / SEQUENCE_FIRST / "1")
    (root / BATCH_MEAN / "1").mkdir(parents=True)
    export_batch_mean(root / BATCH_MEAN / "1" / "model.onnx")
    return root


@contextlib.contextmanager
def running(*settings: Settings) -> Iterator[list[Plane]]:
    """A data plane for each of `settings`, loaded on one event loop, closed after."""
    with asyncio.Runner() as runner:
        made = []
        for each in settings:
            data_plane = DataPlane(each, open_store(each))
            runner.run(data_plane.load())
            made.append(Plane(data_plane, runner))
        yield made
        for plane in made:
            runner.run(plane.plane.close())


@pytest.fixture(scope="module")
def planes(repository: Path) -> Iterator[tuple[Plane, Plane]]:
    """A data plane that coalesces steps (the default) and one that runs each alone."""
    settings = (Settings(model_repository=repository, coalesce_steps=c) for c in (True, False))
    with running(*settings) as (together, alone):
        yield together, alone


@pytest.fixture(scope="module")
def delayed(repository: Path) -> Iterator[tuple[Plane, Plane]]:
    """Data planes whose batches wait for company (coalesce_max_delay_us): up to a minute
    but 4 steps at most, and a millisecond."""
    settings = (
        Settings(
            model_repository=repository,
            coalesce_steps=True,
            coalesce_max_delay_us=delay_us,
            batch_max_size=max_size,
        )
        for delay_us, max_size in ((60_000_000, 4), (1000, 64))
    )
    with running(*settings) as (full, short):
        yield full, short


def step(
    model: str, sequence_id: int, x: np.ndarray, *, start: bool = False, name: str = "x"
) -> InferRequest:
    parameters: dict[str, Parameter] = {"sequence_id": sequence_id}
    if start:
        parameters["sequence_start"] = True
    tensor = Tensor(name, "FP32", x.shape, x.astype(np.float32))
    return InferRequest(model, inputs=[tensor], parameters=parameters)


def text_step(model: str, sequence_id: int, word: str, *, start: bool = False) -> InferRequest:
    data = np.array([word.encode()], object)
    parameters: dict[str, Parameter] = {"sequence_id": sequence_id, "sequence_start": start}
    return InferRequest(
        model, inputs=[Tensor("text", "BYTES", data.shape, data)], parameters=parameters
    )


def start(planes: tuple[Plane, Plane], *requests: InferRequest) -> None:
    """The requests (starts) sent to both data planes, one by one."""
    for plane in planes:
        plane.one_by_one(*requests)


def as_alone(
    planes: tuple[Plane, Plane], *requests: InferRequest, spread: bool = False
) -> list[InferResponse | BaseException]:
    """The requests sent together (`spread`: one turn after the other) to the data plane
    that coalesces, each answer the one the other gives running them one by one; its
    answers and failures."""
    together, alone = planes
    got = together.spread(*requests) if spread else together.together(*requests)
    answered = [
        (response, request)
        for response, request in zip(got, requests, strict=True)
        if isinstance(response, InferResponse)
    ]
    expected = alone.one_by_one(*(request for _, request in answered))
    for (response, _), one in zip(answered, expected, strict=True):
        same(response, one)
    return got


def started_then_stepped(
    planes: tuple[Plane, Plane], model: str, ids: Iterable[int], x: np.ndarray, spread: bool
) -> list[InferResponse | BaseException]:
    """Sessions `ids` started with `x` (one by one), then each stepped with `x` again, sent
    as `as_alone` sends them; its answers and failures."""
    start(planes, *(step(model, i, x, start=True) for i in ids))
    return as_alone(planes, *(step(model, i, x) for i in ids), spread=spread)


def offsets(got: list[InferResponse | BaseException]) -> list[Parameter]:
    """Each answer's sequence_offset (every request answered)."""
    assert all(isinstance(response, InferResponse) for response in got), got
    return [response.parameters["sequence_offset"] for response in got]  # type: ignore[union-attr]


def same(got: InferResponse | BaseException, expected: InferResponse) -> None:
    """The same answer, every float to the bit."""
    assert isinstance(got, InferResponse), got
    assert got.parameters["sequence_offset"] == expected.parameters["sequence_offset"]
    assert [t.name for t in got.outputs] == [t.name for t in expected.outputs]
    for ours, theirs in zip(got.outputs, expected.outputs, strict=True):
        assert ours.shape == theirs.shape, ours.name
        if ours.datatype == "FP32":
            assert ours.data.tobytes() == theirs.data.tobytes(), ours.name
        else:
            np.testing.assert_array_equal(ours.data, theirs.data, err_msg=ours.name)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_steps_that_arrive_together_run_as_one_batch_and_answer_as_alone(
    planes: tuple[Plane, Plane], cell: str
) -> None:
    together, alone = planes
    model = f"sine-{cell}"
    ids = range(100, 100 + SESSIONS)
    values = np.linspace(-1, 1, SESSIONS * 4).reshape(4, SESSIONS)
    start(
        planes,
        *(
            step(model, i, np.full((1, 2, 1), v), start=True)
            for i, v in zip(ids, values[0], strict=True)
        ),
    )
    for row in values[1:]:
        as_alone(
            planes, *(step(model, i, np.full((1, 3, 1), v)) for i, v in zip(ids, row, strict=True))
        )
    assert SESSIONS in together.batch_sizes(model)  # one run stepped every session
    assert alone.batch_sizes(model) == {1}


def test_a_sessions_second_step_in_one_turn_runs_after_its_first(
    planes: tuple[Plane, Plane],
) -> None:
    x = np.full((1, 1, 1), 0.5)
    start(planes, step("sine-lstm", 7, x, start=True), step("sine-lstm", 8, x, start=True))
    got = as_alone(
        planes, step("sine-lstm", 7, x), step("sine-lstm", 8, x), step("sine-lstm", 7, x * 2)
    )
    assert offsets(got) == [2, 2, 3]


def test_a_step_whose_session_cannot_go_on_is_refused_alone(
    planes: tuple[Plane, Plane],
) -> None:
    x = np.full((1, 2, 1), 0.25)
    start(planes, step("sine-gru", 21, x, start=True), step("sine-gru", 22, x, start=True))
    got = as_alone(
        planes, step("sine-gru", 21, x), step("sine-gru", 404, x), step("sine-gru", 22, x)
    )
    refused = got[1]
    assert isinstance(refused, InvalidArgument)
    assert "404" in refused.message and "not active" in refused.message
    assert isinstance(got[0], InferResponse) and isinstance(got[2], InferResponse)


def test_tagger_steps_of_different_lengths_answer_as_alone(planes: tuple[Plane, Plane]) -> None:
    together, _ = planes
    words = ["he", "hel", "h", "hell", "he", "hello"]
    ids = range(300, 300 + len(words))
    start(planes, *(text_step("tagger-gru", i, "h", start=True) for i in ids))
    as_alone(
        planes, *(text_step("tagger-gru", i, word) for i, word in zip(ids, words, strict=True))
    )
    assert 2 in together.batch_sizes("tagger-gru")  # the two pieces of length 2 ran as one


def test_starts_and_steps_with_an_offset_run_alone(planes: tuple[Plane, Plane]) -> None:
    together, _ = planes
    x = np.full((1, 1, 1), 0.1)
    starts = [step("sine-rnn", i, x, start=True) for i in range(500, 504)]
    assert offsets(together.together(*starts)) == [1] * 4
    with_offsets = [step("sine-rnn", i, x) for i in range(500, 504)]
    for request in with_offsets:
        request.parameters["sequence_offset"] = 1
    before = together.batch_sizes("sine-rnn")
    assert offsets(together.together(*with_offsets)) == [2] * 4
    assert together.batch_sizes("sine-rnn") - before <= {1}


def test_steps_that_come_one_at_a_time_run_at_once_until_they_come_together_again(
    planes: tuple[Plane, Plane],
) -> None:
    together, alone = planes
    x = np.full((1, 1, 1), 0.3)
    ids = range(600, 600 + SESSIONS)
    start(planes, *(step("sine-lstm", i, x, start=True) for i in ids))
    lone = [step("sine-lstm", 600, x) for _ in range(300)]  # batches of one: run at once
    for got, expected in zip(together.one_by_one(*lone), alone.one_by_one(*lone), strict=True):
        same(got, expected)
    (stats,) = together.plane.model_statistics("sine-lstm", "1")
    before = stats.batch_stats[SESSIONS].count if SESSIONS in stats.batch_stats else 0
    for _ in range(40):  # within PROBE_AFTER steps, one joins again, and so does its turn
        as_alone(planes, *(step("sine-lstm", i, x) for i in ids))
    (stats,) = together.plane.model_statistics("sine-lstm", "1")
    assert stats.batch_stats[SESSIONS].count > before


def test_a_users_model_with_its_batch_on_axis_1_answers_as_alone(
    planes: tuple[Plane, Plane],
) -> None:
    together, _ = planes
    ids = range(700, 700 + SESSIONS)
    rng = np.random.default_rng(5)
    start(planes, *(step(SEQUENCE_FIRST, i, rng.normal(0, 1, (2, 1, 3)), start=True) for i in ids))
    for _ in range(2):
        as_alone(planes, *(step(SEQUENCE_FIRST, i, rng.normal(0, 1, (3, 1, 3))) for i in ids))
    assert SESSIONS in together.batch_sizes(SEQUENCE_FIRST)


def test_a_batch_is_checked_against_its_steps_alone_until_its_shape_is_trusted(
    planes: tuple[Plane, Plane],
) -> None:
    together, _ = planes
    ids = range(900, 900 + SESSIONS)
    x = np.full((1, 5, 1), 0.2)  # a length no other test steps
    got = started_then_stepped(planes, "sine-gru", ids, x, spread=False)
    values = SESSIONS * sum(output.data.size for output in got[0].outputs)  # type: ignore[union-attr]
    costs = []
    for _ in range(math.ceil(PROOF_VALUES / values) + 1):
        before = together.runs("sine-gru")
        as_alone(planes, *(step("sine-gru", i, x) for i in ids))
        costs.append(together.runs("sine-gru") - before)

    assert costs[0] == 1 + SESSIONS  # the batch's run, then each step's alone, compared
    assert costs[-1] == 1  # trusted: one run steps every session


def test_a_model_whose_batches_differ_from_its_steps_alone_runs_its_steps_alone(
    planes: tuple[Plane, Plane], caplog: pytest.LogCaptureFixture
) -> None:
    together, _ = planes
    ids = range(1000, 1000 + SESSIONS)
    rng = np.random.default_rng(9)

    def steps(first: bool = False) -> list[InferRequest]:
        return [
            step(BATCH_MEAN, i, rng.normal(0, 1, (1, 2, 4)), start=first, name="features")
            for i in ids
        ]

    start(planes, *steps(first=True))
    with caplog.at_level(logging.WARNING):
        as_alone(planes, *steps())  # its batch differs: each step runs alone, as answered
    before = together.runs(BATCH_MEAN)
    as_alone(planes, *steps())

    assert together.runs(BATCH_MEAN) - before == SESSIONS  # no batch any more
    warned = f"model {BATCH_MEAN} version 1: a batch of {SESSIONS} steps did not answer as its"
    assert warned in caplog.text


def test_with_a_delay_steps_of_different_turns_wait_for_one_batch_that_runs_once_full(
    planes: tuple[Plane, Plane], delayed: tuple[Plane, Plane]
) -> None:
    full, _ = delayed  # a minute's delay, 4 steps at most
    _, alone = planes
    x = np.full((1, 2, 1), 0.4)
    got = started_then_stepped((full, alone), "sine-lstm", range(800, 804), x, spread=True)
    assert offsets(got) == [4] * 4
    assert 4 in full.batch_sizes("sine-lstm")


def test_with_a_delay_the_steps_beyond_a_full_batch_run_in_the_next(
    planes: tuple[Plane, Plane], delayed: tuple[Plane, Plane]
) -> None:
    full, _ = delayed
    _, alone = planes
    x = np.full((1, 1, 1), -0.2)
    ids = range(810, 810 + SESSIONS)
    started_then_stepped((full, alone), "sine-gru", ids, x, spread=False)  # 8 in one turn
    assert full.batch_sizes("sine-gru") == {1, 4}  # the starts alone, then two of 4


def test_with_a_delay_a_batch_that_is_not_full_runs_once_the_delay_has_passed(
    planes: tuple[Plane, Plane], delayed: tuple[Plane, Plane]
) -> None:
    _, short = delayed  # a millisecond
    _, alone = planes
    x = np.full((1, 3, 1), 0.7)
    got = started_then_stepped((short, alone), "sine-lstm", (820, 821), x, spread=True)
    assert offsets(got) == [6, 6]
    assert 2 in short.batch_sizes("sine-lstm")


def test_with_a_delay_a_batch_runs_once_every_session_of_the_last_has_a_step_in_it(
    planes: tuple[Plane, Plane], delayed: tuple[Plane, Plane]
) -> None:
    full, _ = delayed  # a minute's delay, 4 steps at most
    _, alone = planes
    x = np.full((1, 1, 3), 0.6)  # one step of one row: the model is sequence first
    started_then_stepped((full, alone), SEQUENCE_FIRST, range(830, 834), x, spread=True)
    ending = step(SEQUENCE_FIRST, 833, x)
    ending.parameters["sequence_end"] = True  # runs alone: no batch waits for its session
    as_alone((full, alone), ending)

    # Three steps in three turns, of the three sessions left: the batch does not wait out
    # its minute for a fourth (as_alone waits WAIT_S at most).
    sent = (step(SEQUENCE_FIRST, i, x) for i in range(830, 833))
    got = as_alone((full, alone), *sent, spread=True)

    assert offsets(got) == [3] * 3
    assert 3 in full.batch_sizes(SEQUENCE_FIRST)


def test_with_a_delay_a_session_that_went_quiet_holds_a_batch_no_longer_than_the_delay(
    planes: tuple[Plane, Plane], delayed: tuple[Plane, Plane]
) -> None:
    _, short = delayed  # a millisecond
    _, alone = planes
    x = np.full((1, 1, 1), -0.5)
    started_then_stepped((short, alone), "sine-gru", (840, 841), x, spread=True)

    got = as_alone((short, alone), step("sine-gru", 840, x), spread=True)  # 841 stays away

    assert offsets(got) == [3]
