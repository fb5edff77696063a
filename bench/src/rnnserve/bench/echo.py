"""The transport floor: a bare gRPC server in one Python process, on the same grpcio and
asyncio server as rnnserve, that parses each ModelInferRequest and answers a precomputed
one-step sine response. No model, no data plane: what is left is gRPC and protobuf.

Run as `python -m rnnserve.bench.echo --port P [--procs N]`: with N > 1, N such processes
share the port (grpc's SO_REUSEPORT, as `rnnserve serve --workers N` does), the floor of
as many rnnserve workers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc

from rnnserve.bench.payloads import step_response


def handler(model_name: str) -> grpc.GenericRpcHandler:
    from rnnserve.protocol import messages as pb
    from rnnserve.protocol.rpc import SERVICE_NAME

    # Serialised once: the floor should not pay for building its answer.
    unary_answer: bytes = step_response(model_name).SerializeToString()
    stream_answer: bytes = pb.ModelStreamInferResponse(
        infer_response=step_response(model_name)
    ).SerializeToString()

    async def model_infer(request: Any, context: grpc.aio.ServicerContext[Any, bytes]) -> bytes:
        return unary_answer

    async def model_stream_infer(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, bytes]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
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


async def serve(port: int, model_name: str) -> None:
    from grpc_health.v1 import health, health_pb2_grpc

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(model_name),))
    # The standard health service (SERVING from the start): how the harness waits for it.
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _serve(port: int, model_name: str) -> None:
    asyncio.run(serve(port, model_name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default="sine-lstm")
    parser.add_argument("--procs", type=int, default=1, help="processes sharing the port")
    args = parser.parse_args()
    if args.procs == 1:
        _serve(args.port, args.model_name)
        return
    # The processes end with this one: SIGTERM or SIGINT, caught here, is passed on.
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stopping.append(signum))
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve, args=(args.port, args.model_name), daemon=True)
        for _ in range(args.procs)
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
