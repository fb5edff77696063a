"""The transport floor: a bare gRPC server in one Python process, on the same grpcio and
asyncio server as rnnserve, that parses each ModelInferRequest and answers a precomputed
one-step sine response. No model, no data plane: what is left is gRPC and protobuf.

With `--model M.onnx` it is the model floor instead: ModelInfer and each message of
ModelStreamInfer run the model as a server with none of rnnserve's layers would. It parses
the request, takes the sequence's state from a dict (zeros on `sequence_start`), makes one
ONNX Runtime run with rnnserve's session options, keeps the new state and answers the first
output and `sequence_offset`, and checks nothing. What rnnserve spends beyond this floor is
its own; what this floor spends beyond the echo is the model's run. Its states are those
the version's spec names (model/spec.py), zeros as the spec makes them; the data are the
graph's other input and output (every recurrent model of export/).

Run as `python -m rnnserve.bench.echo --port P [--procs N] [--listeners L] [--model
M.onnx]`: with N > 1, N such processes share the port (grpc's SO_REUSEPORT, as `rnnserve
serve --workers N` does), the floor of as many rnnserve workers; with L > 1, L grpc.aio
servers of each process share it too (as `rnnserve serve --grpc-listeners L`). Each runs
on the event loop rnnserve runs on by default (`--event-loop auto`: uvloop where
installed; service/event_loop.py): the floor's loop is rnnserve's, so that the ratios
measure rnnserve's own code. With `--cpu-affinity` (none, auto or a list, as rnnserve's
`cpu_affinity`: service/affinity.py), process i runs its threads on the i-th CPU of the
setting, as worker i of rnnserve does. With `--busy-poll-us N` its event loop polls, awake,
for N µs after each answer, as rnnserve's `busy_poll_us` keeps its own (service/busy_poll.py).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_args

import grpc

from rnnserve.bench.payloads import step_response
from rnnserve.service import affinity
from rnnserve.service.busy_poll import BusyPoll
from rnnserve.service.event_loop import EventLoop, loop_factory


def answered(busy: BusyPoll | None) -> None:
    """Tells the floor's busy polling, if on, of a request answered (each runs alone: no await
    between its start and its end; of one session, as the floor does not read the request's)."""
    if busy is not None:
        busy.begin()
        busy.end(0)


def handler(model_name: str, busy: BusyPoll | None = None) -> grpc.GenericRpcHandler:
    from rnnserve.protocol import messages as pb
    from rnnserve.protocol.rpc import SERVICE_NAME

    # Serialised once: the floor should not pay for building its answer.
    unary_answer: bytes = step_response(model_name).SerializeToString()
    stream_answer: bytes = pb.ModelStreamInferResponse(
        infer_response=step_response(model_name)
    ).SerializeToString()

    async def model_infer(request: Any, context: grpc.aio.ServicerContext[Any, bytes]) -> bytes:
        answered(busy)
        return unary_answer

    async def model_stream_infer(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, bytes]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            answered(busy)
            yield stream_answer

    parse = pb.ModelInferRequest.FromString
    # A None serializer sends the bytes as they are.
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer, parse, None),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                model_stream_infer, parse, None
            ),
        },
    )


def model_handler(
    model_name: str, model: Path, busy: BusyPoll | None = None
) -> grpc.GenericRpcHandler:
    """The model floor's ModelInfer and ModelStreamInfer (see the module's docstring)."""
    import numpy as np
    import onnxruntime as ort

    from rnnserve.model.folder import read_version
    from rnnserve.protocol import messages as pb
    from rnnserve.protocol.rpc import SERVICE_NAME
    from rnnserve.service.runtime import session_options
    from rnnserve.service.settings import Settings

    spec = read_version(model.parent)[0]
    session = ort.InferenceSession(
        str(model), session_options(Settings()), providers=["CPUExecutionProvider"]
    )
    data_input = next(i.name for i in session.get_inputs() if i.name not in spec.state_inputs)
    data_output = next(o.name for o in session.get_outputs() if o.name not in spec.state_outputs)
    names = [data_output, *spec.state_outputs]
    zeros = spec.zero_state(1)  # one sequence's
    states: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    run = session._sess.run  # as rnnserve calls it: no per-call checks of the wrapper's

    def answer(request: Any, response: Any) -> None:
        parameters = request.parameters
        sequence = parameters["sequence_id"].int64_param
        if "sequence_start" in parameters or sequence not in states:
            state, offset = zeros, 0
        else:
            state, offset = states[sequence]
        shape = tuple(request.inputs[0].shape)
        data = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(shape)
        outputs = run(names, {data_input: data, **state}, None)
        offset += shape[1]
        states[sequence] = dict(zip(spec.state_inputs, outputs[1:], strict=True)), offset
        response.model_name, response.model_version, response.id = model_name, "1", request.id
        response.outputs.add(name=data_output, datatype="FP32", shape=outputs[0].shape)
        response.raw_output_contents.append(outputs[0].tobytes())
        response.parameters["sequence_offset"].int64_param = offset
        answered(busy)

    async def model_infer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = pb.ModelInferResponse()
        answer(request, response)
        return response

    async def model_stream_infer(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            reply = pb.ModelStreamInferResponse()
            answer(request, reply.infer_response)
            yield reply

    parse, serialize = pb.ModelInferRequest.FromString, pb.ModelInferResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer, parse, serialize),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                model_stream_infer, parse, pb.ModelStreamInferResponse.SerializeToString
            ),
        },
    )


async def serve(
    port: int, model_name: str, model: Path | None, listeners: int, busy_poll_us: int
) -> None:
    from grpc_health.v1 import health, health_pb2_grpc

    busy = BusyPoll(busy_poll_us) if busy_poll_us else None
    answers = handler(model_name, busy) if model is None else model_handler(model_name, model, busy)
    # The standard health service (SERVING from the start): how the harness waits for it.
    checks = health.aio.HealthServicer()
    servers = [grpc.aio.server() for _ in range(listeners)]  # SO_REUSEPORT: gRPC's default
    for server in servers:
        server.add_generic_rpc_handlers((answers,))
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
    await asyncio.gather(*(server.wait_for_termination() for server in servers))


def _serve(
    port: int,
    model_name: str,
    model: Path | None,
    listeners: int,
    event_loop: EventLoop,
    cpus: str,
    busy_poll_us: int,
    index: int = 0,
) -> None:
    affinity.pin(cpus, index)
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        runner.run(serve(port, model_name, model, listeners, busy_poll_us))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default="sine-lstm")
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port")
    parser.add_argument(
        "--listeners", type=int, default=1, help="grpc.aio servers of each process on the port"
    )
    parser.add_argument("--model", type=Path, help="the model floor of this ONNX file")
    parser.add_argument(
        "--event-loop", choices=get_args(EventLoop), default="auto", help="as rnnserve's"
    )
    parser.add_argument("--cpu-affinity", type=affinity.parse, default="none", help="as rnnserve's")
    parser.add_argument("--busy-poll-us", type=int, default=0, help="as rnnserve's")
    args = parser.parse_args()
    serving = (
        args.port, args.model_name, args.model, args.listeners, args.event_loop, args.cpu_affinity,
        args.busy_poll_us,
    )  # fmt: skip
    if args.procs == 1:
        _serve(*serving)
        return
    # The processes end with this one: SIGTERM or SIGINT, caught here, is passed on.
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.append(signum))
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve, args=(*serving, index), daemon=True)
        for index in range(args.procs)
    ]
    for process in processes:
        process.start()
    while not stopping:
        signal.pause()
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


if __name__ == "__main__":
    main()
