"""device_state: the memory store keeps session states where the models run, and a step
reads and leaves its state there (service/device.py, sessions/device_slab.py). Here the
device is the CPU provider's, which runs the same code as CUDA; tests/gpu runs it on a GPU.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from session_helpers import AioSessions, random_chunks

from rnnserve.client.client import RnnClient
from rnnserve.client.sequence import SequenceSession
from rnnserve.model.folder import read_version
from rnnserve.service.device import CPU_PROVIDER, DeviceArray, StateDevice, state_device
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.sessions.memory_store import MemoryStore
from rnnserve.service.sessions.state import Progress, SessionKey
from rnnserve.service.settings import Settings

STEPS = 200


def test_auto_keeps_states_on_the_host_without_cuda() -> None:
    assert state_device(Settings()) is None  # this ONNX Runtime build has no CUDA
    assert state_device(Settings(device_state="off")) is None


def test_on_keeps_them_on_the_cpu_provider_without_cuda() -> None:
    device = state_device(Settings(device_state="on"))
    assert device is not None and device.describe() == "cpu:0"


@pytest.mark.parametrize(
    "settings",
    [Settings(device_state="on", state_store="redis"), Settings(device_state="on", batching=True)],
    ids=["redis", "batching"],
)
def test_redis_stores_and_batched_steps_keep_states_on_the_host(settings: Settings) -> None:
    assert state_device(settings) is None


def key(sequence_id: int) -> SessionKey:
    return SessionKey("anyone", "m", "1", sequence_id)


def test_a_load_merges_stored_rows_into_a_batch_on_the_device() -> None:
    async def scenario() -> None:
        store = MemoryStore(device=StateDevice(CPU_PROVIDER, Settings()))
        saved = {"h0": np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)}
        await store.save([key(1), key(2), key(3)], saved, [0, 1, 2], [Progress(1)] * 3)
        # A batch of three rows: row 1 starts (its own zeros), rows 0 and 2 continue.
        into = {"h0": np.zeros((2, 3, 4), np.float32)}
        await store.load([key(3), key(1)], into, [0, 2])
        assert isinstance(into["h0"], DeviceArray)  # on the device, not copied back
        expected = np.stack([saved["h0"][:, 2], np.zeros((2, 4)), saved["h0"][:, 0]], axis=1)
        np.testing.assert_array_equal(np.asarray(into["h0"]), expected)
        # Scattered back from the device, in place, after the slab grew past its rows.
        more = [key(index) for index in range(10, 40)]
        wide = {"h0": np.ones((2, len(more), 4), np.float32)}
        await store.save(more, wide, list(range(len(more))), [Progress(1)] * len(more))
        await store.save([key(1)], into, [1], [Progress(2)])
        again = {"h0": np.full((2, 2, 4), 7, np.float32)}
        await store.load([key(1), key(2)], again, [0, 1])
        np.testing.assert_array_equal(np.asarray(again["h0"])[:, 0], np.zeros((2, 4)))
        np.testing.assert_array_equal(np.asarray(again["h0"])[:, 1], saved["h0"][:, 1])

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def sine_runtime(tiny_repository: Path) -> Iterator[tuple[ModelRuntime, dict[str, np.ndarray]]]:
    folder = tiny_repository / "sine-lstm" / "1"
    spec, graphs = read_version(folder)
    runtime = ModelRuntime("sine-lstm", "1", graphs, Settings(instances_per_device=3))
    rng = np.random.default_rng(3)
    feeds = {
        "x": rng.normal(0, 1, (2, 5, 1)).astype(np.float32),
        **{state.input: rng.normal(0, 1, state.graph_shape(2)).astype(np.float32)
           for state in spec.states},
    }  # fmt: skip
    yield runtime, feeds


def test_a_resident_run_answers_as_a_host_run_and_leaves_its_states_on_the_device(
    sine_runtime: tuple[ModelRuntime, dict[str, np.ndarray]],
) -> None:
    runtime, feeds = sine_runtime
    on_host = runtime.run("model", feeds)
    device = StateDevice(CPU_PROVIDER, Settings())
    resident = runtime.resident(device, frozenset({"hn", "cn"}), on_loop=False)("model", feeds)
    assert isinstance(resident["hn"], DeviceArray) and isinstance(resident["cn"], DeviceArray)
    assert isinstance(resident["y"], np.ndarray)
    for name, array in on_host.items():
        np.testing.assert_array_equal(np.asarray(resident[name]), array)
    # A resident state fed back is read where it is.
    fed_back = {**feeds, "h0": resident["hn"], "c0": resident["cn"]}
    host_fed = {**feeds, "h0": on_host["hn"], "c0": on_host["cn"]}
    resident_again = runtime.resident(device, frozenset({"hn", "cn"}), on_loop=True)
    np.testing.assert_array_equal(
        np.asarray(resident_again("model", fed_back)["hn"]), runtime.run("model", host_fed)["hn"]
    )


def test_instances_per_device_take_turns_and_answer_alike(
    sine_runtime: tuple[ModelRuntime, dict[str, np.ndarray]],
) -> None:
    runtime, feeds = sine_runtime
    answers = [runtime.run("model", feeds)["y"] for _ in range(4)]  # every instance, and again
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])


@pytest.fixture(scope="module")
def resident_server(start_module_server, tiny_repository: Path):
    """A server whose memory store keeps states on the CPU provider's device."""
    return start_module_server(tiny_repository, env={"RNNSERVE_DEVICE_STATE": "on"})


def test_the_start_line_says_where_models_run_and_states_live(resident_server) -> None:
    assert "on CPUExecutionProvider, session states on cpu:0 (device_state)" in (
        resident_server.log()
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_sequence_in_random_pieces_equals_the_whole_with_resident_state(
    resident_server, cell: str
) -> None:
    model = f"sine-{cell}"
    rng = np.random.default_rng(11)
    x = np.sin(np.linspace(0, 20, STEPS)).astype(np.float32)
    with RnnClient(resident_server.address) as client:
        whole = client.infer(model, {"x": x[None, :, None]}, ["y", "hn"])

    async def scenario() -> list[np.ndarray]:
        sessions = AioSessions(resident_server.address)
        answers = await asyncio.gather(
            sessions.unary(model, x, random_chunks(rng, STEPS, 1, 32), f"{cell}-unary"),
            sessions.streamed(model, x, random_chunks(rng, STEPS, 1, 32), f"{cell}-stream"),
            *(sessions.unary(model, -x, random_chunks(rng, STEPS, 5, 50), i) for i in range(1, 9)),
        )
        await sessions.close()
        return list(answers)

    unary, streamed, *_ = asyncio.run(scenario())
    for got in (unary, streamed):
        np.testing.assert_allclose(got, whole["y"].reshape(-1), rtol=0, atol=1e-5)
    # A client asking for hn gets it.
    with (
        RnnClient(resident_server.address) as client,
        SequenceSession(client, model, f"{cell}-hn") as sequence,
    ):
        for start in range(0, STEPS, 50):
            last = sequence.step({"x": x[None, start : start + 50, None]}, ["y", "hn"])
    np.testing.assert_allclose(last["hn"], whole["hn"], rtol=0, atol=1e-5)


def test_the_tagger_answers_ohlol_with_resident_state(resident_server) -> None:
    with (
        RnnClient(resident_server.address) as client,
        SequenceSession(client, "tagger-gru", "hello", True) as sequence,
    ):
        tags = [
            sequence.step({"text": [char]}, ["text_out"], end=index == 4)["text_out"][0]
            for index, char in enumerate("hello")
        ]
    assert "".join(tags) == "ohlol"


def test_rows_of_one_request_step_their_own_resident_sessions(resident_server) -> None:
    x = np.stack([np.sin(np.linspace(0, 6, 12)) * scale for scale in (1, -1, 2)])
    x = x.astype(np.float32)[:, :, None]
    ids = np.array([501, 502, 503], np.uint64)
    with RnnClient(resident_server.address) as client:
        whole = client.infer("sine-lstm", {"x": x}, ["y"])["y"]
        pieces = []
        for start, stop in ((0, 4), (4, 9), (9, 12)):
            controls = {"sequence_id": ids, "sequence_start": np.full(3, start == 0)}
            pieces.append(
                client.infer("sine-lstm", {"x": x[:, start:stop], **controls}, ["y"])["y"]
            )
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-5)
