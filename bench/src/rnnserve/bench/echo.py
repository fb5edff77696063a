"""The transport floor: a bare gRPC server in one Python process, on the same grpcio and
asyncio server as rnnserve, that parses each ModelInferRequest and answers a precomputed
one-step sine response. No model, no data plane: what is left is gRPC and protobuf.

Run as `python -m rnnserve.bench.echo --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-name", default="sine-lstm")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model_name))


if __name__ == "__main__":
    main()
