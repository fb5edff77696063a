"""The floors of bench/echo.py. The model floor runs the model as a server with none of
rnnserve's layers would: it must still answer a sequence sent step by step as the whole
sequence run at once, or it would be a floor for less work than rnnserve's step."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from processes import cpu_seconds, thread_cpus, worker_pids

from rnnserve.bench import servers
from rnnserve.protocol import messages as pb
from rnnserve.protocol.rpc import Stub


def _step(sequence_id: int, x: np.ndarray, start: bool) -> object:
    request = pb.ModelInferRequest(model_name="sine-lstm")
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    request.parameters["sequence_id"].int64_param = sequence_id
    if start:
        request.parameters["sequence_start"].bool_param = True
    return request


@pytest.mark.parametrize("rpc", ["ModelInfer", "ModelStreamInfer"])
def test_the_model_floor_answers_a_sequence_step_by_step_as_it_is_whole(
    rpc: str, sine_repository: Path, tmp_path: Path
) -> None:
    model = sine_repository / "sine-lstm" / "1" / "model.onnx"
    xs = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4, 1)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    zeros = {
        state.name: np.zeros([d if isinstance(d, int) else 1 for d in state.shape], np.float32)
        for state in session.get_inputs()[1:]
    }
    [whole] = session.run(["y"], {"x": xs, **zeros})
    steps = [_step(7, xs[:, step : step + 1], start=step == 0) for step in range(xs.shape[1])]

    with (
        servers.echo_server(tmp_path, model=model) as floor,
        grpc.insecure_channel(floor.target) as channel,
    ):
        stub = Stub(channel)
        if rpc == "ModelInfer":
            responses = [stub.ModelInfer(step) for step in steps]
        else:
            responses = [reply.infer_response for reply in stub.ModelStreamInfer(iter(steps))]

    answers = [np.frombuffer(r.raw_output_contents[0], np.float32) for r in responses]
    np.testing.assert_allclose(np.concatenate(answers), whole.ravel(), rtol=1e-5, atol=1e-6)
    assert [r.parameters["sequence_offset"].int64_param for r in responses] == [1, 2, 3, 4]


def test_the_echo_floor_of_many_listeners_answers_every_connection_on_its_one_port(
    tmp_path: Path,
) -> None:
    """Its listeners (grpc.aio servers sharing the port, as rnnserve's) each answer the
    connections the kernel gives them: a connection of its own per channel."""
    with servers.echo_server(tmp_path, listeners=4) as echo:
        channels = [
            grpc.insecure_channel(echo.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(16)
        ]
        replies = [Stub(channel).ModelInfer(_step(n, np.zeros((1, 1, 1), np.float32), True))
                   for n, channel in enumerate(channels)]  # fmt: skip
        for channel in channels:
            channel.close()

    assert [reply.model_name for reply in replies] == ["sine-lstm"] * 16


def test_the_pinned_echo_floor_runs_its_threads_on_the_cpu_rnnserve_would(
    tmp_path: Path,
) -> None:
    """`--cpu-affinity` pins as rnnserve's does (service/affinity.py): the floor of a pinned
    rnnserve is pinned alike, each of its processes on the CPU of a worker of its index."""
    cpus = sorted(os.sched_getaffinity(0))
    with servers.echo_server(tmp_path, procs=2, cpu_affinity="auto") as echo:
        reply = Stub(grpc.insecure_channel(echo.target)).ModelInfer(
            _step(1, np.zeros((1, 1, 1), np.float32), True)
        )
        pinned = [cpus for pid in worker_pids(echo.pid) for cpus in thread_cpus(pid).values()]

    assert reply.model_name == "sine-lstm"
    assert {min(cpu) for cpu in pinned} == set(cpus[:2])
    assert all(len(cpu) == 1 for cpu in pinned)


def test_the_polling_echo_floor_answers_and_its_loop_sleeps_once_requests_stop(
    tmp_path: Path,
) -> None:
    """`--busy-poll-us` keeps the floor's event loop awake after each answer as rnnserve's
    `busy_poll_us` does (service/busy_poll.py), for the window only."""
    with servers.echo_server(tmp_path, busy_poll_us=200_000) as echo:
        with grpc.insecure_channel(echo.target) as channel:
            replies = [
                Stub(channel).ModelInfer(_step(1, np.zeros((1, 1, 1), np.float32), n == 0))
                for n in range(3)
            ]
        time.sleep(0.5)  # past the window
        before = cpu_seconds(echo.pid, echo.pid)
        time.sleep(1.0)
        idle = cpu_seconds(echo.pid, echo.pid) - before

    assert [reply.model_name for reply in replies] == ["sine-lstm"] * 3
    assert idle < 0.2  # the event loop sleeps again
