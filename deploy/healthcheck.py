"""Container health check: exit 0 when the server's gRPC health service answers SERVING.

Usage: healthcheck.py [HOST:PORT]; the default is 127.0.0.1 on $RNNSERVE_GRPC_PORT (8001).
It asks for the overall server status (service ""), which turns SERVING once the model
repository is loaded and NOT_SERVING while the server drains on SIGTERM.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else f"127.0.0.1:{os.environ.get('RNNSERVE_GRPC_PORT', 8001)}"
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=4)
        except grpc.RpcError as error:
            print(f"{target}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
