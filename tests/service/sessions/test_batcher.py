"""Cross-session batching: steps of different sessions arriving together share one run,
and every session gets what it would have got alone."""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rnnserve.service.errors import Unavailable
from rnnserve.service.sessions import (
    Batcher,
    RowStep,
    Runner,
    SessionKey,
    SessionManager,
    Tensors,
)
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.types import ANONYMOUS, State

STATES = ["h0", "c0", "hn", "cn"]
INPUT_SIZE = 3
HIDDEN_SIZE = 5


class Recorder:
    """A runner doubling x and adding 1 to h, recording the rows of every run."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, feeds: Tensors) -> Tensors:
        self.batch_sizes.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2, "hn": feeds["h0"] + 1}


def step_feeds(value: float, length: int = 1) -> Tensors:
    return {
        "x": np.full((1, length, 1), value, np.float32),
        "h0": np.full((1, 1, 2), value, np.float32),
    }


def batch_feeds(rows: int, value: float) -> Tensors:
    """A step of several rows (a stateless request of a batch)."""
    return {
        "x": np.full((rows, 1, 1), value, np.float32),
        "h0": np.full((1, rows, 2), value, np.float32),
    }


def make_batcher(runner: Runner, **options: object) -> Batcher:
    return Batcher(runner, dict.fromkeys(STATES, 1), model="batcher-test", version="1", **options)


def test_steps_arriving_together_share_runs_up_to_the_maximum_batch() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_size=8, max_delay_us=10_000)
        results = await asyncio.gather(*(batcher.run(step_feeds(i)) for i in range(32)))
        assert max(recorder.batch_sizes) > 1
        assert all(size <= 8 for size in recorder.batch_sizes)
        assert sum(recorder.batch_sizes) == 32
        for i, result in enumerate(results):  # each caller gets its own rows back
            np.testing.assert_array_equal(result["y"], np.full((1, 1, 1), 2 * i))
            np.testing.assert_array_equal(result["hn"], np.full((1, 1, 2), i + 1))
        await batcher.close()

    asyncio.run(scenario())


def test_only_steps_of_equal_length_share_a_run() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_size=64, max_delay_us=10_000)
        steps = [step_feeds(i, length=1 + i % 2) for i in range(10)]
        results = await asyncio.gather(*(batcher.run(feeds) for feeds in steps))
        assert sorted(recorder.batch_sizes) == [5, 5]
        for feeds, result in zip(steps, results, strict=True):
            np.testing.assert_array_equal(result["y"], feeds["x"] * 2)
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_never_passes_the_maximum_and_a_larger_step_runs_alone() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, max_size=8, max_delay_us=10_000)
        steps = [batch_feeds(3, i) for i in range(6)] + [batch_feeds(10, 6)]
        results = await asyncio.gather(*(batcher.run(feeds) for feeds in steps))
        assert sorted(recorder.batch_sizes) == [6, 6, 6, 10]  # steps of 3 rows, two a run
        for feeds, result in zip(steps, results, strict=True):
            np.testing.assert_array_equal(result["y"], feeds["x"] * 2)
        await batcher.close()

    asyncio.run(scenario())


def test_preferred_sizes_run_without_waiting_out_the_queue_delay() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        # A delay no test would wait out: only the preferred sizes end these batches.
        batcher = make_batcher(recorder, max_size=64, max_delay_us=600_000_000,
                               preferred_sizes=(2, 4))  # fmt: skip
        await asyncio.gather(*(batcher.run(step_feeds(i)) for i in range(8)))
        assert recorder.batch_sizes == [4, 4]  # the largest preferred size, twice
        await asyncio.gather(*(batcher.run(step_feeds(i)) for i in range(2)))
        assert recorder.batch_sizes[2:] == [2]  # a smaller one, with no more steps queued
        await batcher.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_small_batch_runs_on_the_event_loop_and_a_larger_one_in_the_executor() -> None:
    async def scenario() -> list[str]:
        threads = []

        def runner(feeds: Tensors) -> Tensors:
            threads.append(threading.current_thread().name)
            return {"y": feeds["x"], "hn": feeds["h0"]}

        with ThreadPoolExecutor(1, thread_name_prefix="executor") as executor:
            # A step is 12 bytes of inputs: two fit, three do not.
            batcher = make_batcher(runner, max_size=8, max_delay_us=10_000,
                                   inline_max_bytes=24, executor=executor)  # fmt: skip
            for steps in (2, 3):
                await asyncio.gather(*(batcher.run(step_feeds(i)) for i in range(steps)))
            await batcher.close()
        return threads

    assert asyncio.run(scenario()) == [threading.main_thread().name, "executor_0"]


def test_with_batching_off_every_step_runs_alone() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        batcher = make_batcher(recorder, enabled=False)
        await asyncio.gather(*(batcher.run(step_feeds(i)) for i in range(8)))
        assert recorder.batch_sizes == [1] * 8
        await batcher.close()

    asyncio.run(scenario())


def test_a_failed_run_fails_every_step_in_it_and_the_next_runs_go_on() -> None:
    async def scenario() -> None:
        broken = True
        recorder = Recorder()

        def runner(feeds: Tensors) -> Tensors:
            if broken:
                raise RuntimeError("ORT failed")
            return recorder(feeds)

        batcher = make_batcher(runner, max_size=8, max_delay_us=10_000)
        results = await asyncio.gather(
            *(batcher.run(step_feeds(i)) for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        broken = False
        assert (await batcher.run(step_feeds(3)))["y"].item() == 6
        await batcher.close()

    asyncio.run(scenario())


def test_closing_answers_waiting_steps_that_the_server_is_shutting_down() -> None:
    async def scenario() -> None:
        release = threading.Event()

        def stuck(feeds: Tensors) -> Tensors:
            release.wait()
            return {"y": feeds["x"], "hn": feeds["h0"]}

        batcher = make_batcher(stuck, max_size=1, max_delay_us=0)
        waiting = [asyncio.create_task(batcher.run(step_feeds(i))) for i in range(3)]
        await asyncio.sleep(0.01)
        await batcher.close()
        release.set()
        for task in waiting:
            with pytest.raises(Unavailable, match="shutting down"):
                await task

    asyncio.run(scenario())


def build_recurrent_model(cell: str, path: Path, seed: int = 0) -> None:
    """One ONNX LSTM or GRU layer honouring the sine graph contract:
    x [batch, seq, input], h0[, c0] [1, batch, hidden] -> y [batch, seq, hidden], hn[, cn]."""
    gates = {"LSTM": 4, "GRU": 3}[cell]
    rng = np.random.default_rng(seed)

    def weights(name: str, *shape: int) -> TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    states = ["h", "c"] if cell == "LSTM" else ["h"]
    initializers = [
        weights("W", 1, gates * HIDDEN_SIZE, INPUT_SIZE),
        weights("R", 1, gates * HIDDEN_SIZE, HIDDEN_SIZE),
        weights("B", 1, 2 * gates * HIDDEN_SIZE),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "direction_axis"),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]),
        helper.make_node(
            cell,
            ["x_time_major", "W", "R", "B", "", *(f"{stem}0" for stem in states)],
            ["y_directions", *(f"{stem}n" for stem in states)],
            hidden_size=HIDDEN_SIZE,
        ),
        helper.make_node("Squeeze", ["y_directions", "direction_axis"], ["y_time_major"]),
        helper.make_node("Transpose", ["y_time_major"], ["y"], perm=[1, 0, 2]),
    ]
    state_info = [
        helper.make_tensor_value_info(f"{stem}{end}", TensorProto.FLOAT, [1, "batch", HIDDEN_SIZE])
        for end in "0n"
        for stem in states
    ]
    half = len(state_info) // 2
    graph = helper.make_graph(
        nodes,
        f"{cell.lower()}-test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", INPUT_SIZE]),
         *state_info[:half]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN_SIZE]),
         *state_info[half:]],
        initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="session", params=["LSTM", "GRU"])
def recurrent_runner(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[str], Runner]:
    """(state stems, runner) of a real small ONNX model run by ONNX Runtime on the CPU."""
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    build_recurrent_model(request.param, path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return (["h", "c"] if request.param == "LSTM" else ["h"]), run


async def stream_sessions(
    runner: Runner, stems: list[str], sequences: list[np.ndarray], chunks: list[list[int]],
    *, batching: bool,
) -> tuple[list[np.ndarray], list[int]]:  # fmt: skip
    """Streams each sequence through its own session, all sessions interleaved; returns
    each session's outputs joined and the batch sizes the runner saw."""
    sizes: list[int] = []

    def recording_runner(feeds: Tensors) -> Tensors:
        sizes.append(feeds["x"].shape[0])
        return runner(feeds)

    batcher = Batcher(
        recording_runner, {f"{s}{e}": 1 for s in stems for e in "0n"}, model="m", version="1",
        enabled=batching, max_size=16, max_delay_us=2_000,
    )  # fmt: skip
    manager = SessionManager(MemoryStore(), max_sessions=len(sequences))
    layout = {stem: (1, 1, HIDDEN_SIZE) for stem in stems}
    model = f"model-{uuid.uuid4().hex[:8]}"

    async def stream(index: int) -> np.ndarray:
        key = SessionKey(ANONYMOUS, model, "1", index)
        outputs: list[np.ndarray] = []
        position = 0
        for number, length in enumerate(chunks[index]):
            x = sequences[index][None, position : position + length]
            position += length

            async def run(state: State, x: np.ndarray = x) -> tuple[np.ndarray, State]:
                feeds = {"x": x} | {f"{stem}0": state[stem] for stem in stems}
                result = await batcher.run(feeds)
                return result["y"], {stem: result[f"{stem}n"] for stem in stems}

            last = number == len(chunks[index]) - 1
            # A continuation's stored state is copied into it.
            initial = {stem: np.zeros(shape, np.float32) for stem, shape in layout.items()}
            row = RowStep(key, number == 0, last, length=length)
            output, _ = await manager.step(row, initial, run, lambda _: {})
            outputs.append(output)
        return np.concatenate(outputs, axis=1)[0]

    joined = await asyncio.gather(*(stream(i) for i in range(len(sequences))))
    await batcher.close()
    await manager.close()
    return joined, sizes


def test_streamed_sessions_batched_equal_unbatched_and_the_whole_sequence(
    recurrent_runner: tuple[list[str], Runner],
) -> None:
    stems, runner = recurrent_runner
    rng = np.random.default_rng(1)
    sessions, length = 24, 40
    sequences = [rng.normal(size=(length, INPUT_SIZE)).astype(np.float32) for _ in range(sessions)]
    chunks = []
    for _ in range(sessions):  # chunk sizes 1, 2 or 4, so equal lengths meet often
        sizes = rng.choice([1, 2, 4], size=length).tolist()  # ints, as RowStep declares
        while sum(sizes) > length:
            sizes.pop()
        chunks.append([*sizes, length - sum(sizes)] if sum(sizes) < length else sizes)

    batched, batch_sizes = asyncio.run(
        stream_sessions(runner, stems, sequences, chunks, batching=True)
    )
    unbatched, unbatched_sizes = asyncio.run(
        stream_sessions(runner, stems, sequences, chunks, batching=False)
    )
    assert max(batch_sizes) > 1
    assert set(unbatched_sizes) == {1}
    whole = runner(
        {"x": np.stack(sequences)}
        | {f"{stem}0": np.zeros((1, sessions, HIDDEN_SIZE), np.float32) for stem in stems}
    )["y"]
    for index in range(sessions):
        np.testing.assert_allclose(batched[index], unbatched[index], rtol=0, atol=1e-6)
        np.testing.assert_allclose(batched[index], whole[index], rtol=0, atol=1e-5)
