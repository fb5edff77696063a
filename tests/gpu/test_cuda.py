"""On CUDA: every default model runs on CUDAExecutionProvider and answers as the CPU
provider does (within 1e-5); a sequence in pieces equals the whole with its state resident
in GPU memory; 10,000 sessions hold state at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rnnserve.client.client import RnnClient
from rnnserve.client.sequence import SequenceSession
from rnnserve.model.folder import read_version
from rnnserve.service.runtime import ModelRuntime
from rnnserve.service.settings import Settings

MODELS = [
    f"{task}-{cell}" for task in ("sine", "tagger", "seq2seq") for cell in ("rnn", "lstm", "gru")
]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
SESSIONS = 10_000


def feeds_for(runtime: ModelRuntime, role: str) -> dict[str, np.ndarray]:
    """Every input of the graph at 2 for each dynamic size: numbers, or token 1."""
    rng = np.random.default_rng(5)
    feeds = {}
    for node in runtime.sessions[role].get_inputs():
        shape = [size if isinstance(size, int) else 2 for size in node.shape]
        if "int64" in node.type:
            feeds[node.name] = np.ones(shape, np.int64)
        else:
            feeds[node.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("model", MODELS)
def test_every_default_model_runs_on_cuda_as_on_the_cpu(gpu_repository: Path, model: str) -> None:
    _, graphs = read_version(gpu_repository / model / "1")
    on_gpu = ModelRuntime(model, "1", graphs, Settings(providers=[CUDA, CPU]))
    on_cpu = ModelRuntime(model, "1", graphs, Settings(providers=[CPU]))
    assert on_gpu.provider == CUDA
    for role in graphs:
        feeds = feeds_for(on_cpu, role)
        expected = on_cpu.run(role, feeds)
        for name, array in on_gpu.run(role, feeds).items():
            np.testing.assert_allclose(array, expected[name], rtol=0, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def cuda_server(start_module_server, gpu_repository: Path):
    """A server on CUDA, states resident in GPU memory (device_state auto), rows enough
    for 10,000 sessions in one request."""
    env = {"RNNSERVE_MAX_BATCH_SIZE": str(SESSIONS), "RNNSERVE_MAX_SESSIONS": str(2 * SESSIONS)}
    return start_module_server(gpu_repository, env=env)


def test_the_server_runs_on_cuda_with_states_on_the_gpu(cuda_server) -> None:
    assert "on CUDAExecutionProvider, session states on cuda:0 (device_state)" in cuda_server.log()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_sequence_in_pieces_equals_the_whole_with_state_on_the_gpu(
    cuda_server, cell: str
) -> None:
    model = f"sine-{cell}"
    x = np.sin(np.linspace(0, 30, 300)).astype(np.float32)
    with RnnClient(cuda_server.address) as client:
        whole = client.infer(model, {"x": x[None, :, None]}, ["y", "hn"])
        for streaming in (False, True):
            with SequenceSession(client, model, f"{cell}-{streaming}", streaming) as sequence:
                pieces = [
                    sequence.step({"x": x[None, start : start + 37, None]}, ["y", "hn"])
                    for start in range(0, len(x), 37)
                ]
            y = np.concatenate([piece["y"].reshape(-1) for piece in pieces])
            np.testing.assert_allclose(y, whole["y"].reshape(-1), rtol=0, atol=1e-5)
            np.testing.assert_allclose(pieces[-1]["hn"], whole["hn"], rtol=0, atol=1e-5)


def test_the_tagger_answers_ohlol_with_state_on_the_gpu(cuda_server) -> None:
    with (
        RnnClient(cuda_server.address) as client,
        SequenceSession(client, "tagger-gru", "hello", True) as sequence,
    ):
        tags = [
            sequence.step({"text": [char]}, ["text_out"], end=index == 4)["text_out"][0]
            for index, char in enumerate("hello")
        ]
    assert "".join(tags) == "ohlol"


def test_ten_thousand_sessions_hold_their_states_at_once(cuda_server) -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(0, 1, (SESSIONS, 6, 1)).astype(np.float32)
    ids = np.arange(1, SESSIONS + 1, dtype=np.uint64)
    with RnnClient(cuda_server.address) as client:
        whole = client.infer("sine-lstm", {"x": x}, ["y"])["y"]
        pieces = []
        for start, stop in ((0, 2), (2, 3), (3, 6)):
            controls = {"sequence_id": ids, "sequence_start": np.full(SESSIONS, start == 0)}
            answer = client.infer("sine-lstm", {"x": x[:, start:stop], **controls}, ["y"])
            pieces.append(answer["y"])
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, rtol=0, atol=1e-5)
