"""Container health check: exit 0 when the server's gRPC health service answers SERVING.

Usage: healthcheck.py [HOST:PORT]; the default is 127.0.0.1 on $RNNSERVE_GRPC_PORT (8001).
It asks for the overall server status (service ""), which turns SERVING once the model
repository is loaded and NOT_SERVING while the server drains on SIGTERM.

The health service needs no token, but a server with TLS (RNNSERVE_TLS_CERT set, as the
server reads it) is asked over TLS: the check trusts RNNSERVE_HEALTHCHECK_CA (PEM; by
default the server's own certificate file: the certificate itself is then trusted) and,
under mutual TLS (RNNSERVE_TLS_CLIENT_CA set), shows RNNSERVE_HEALTHCHECK_CERT with
RNNSERVE_HEALTHCHECK_KEY. The server's certificate must name the host checked
(127.0.0.1 by default).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str) -> grpc.Channel:
    server_cert = os.environ.get("RNNSERVE_TLS_CERT")
    if not server_cert:
        return grpc.insecure_channel(target)
    trusted = Path(os.environ.get("RNNSERVE_HEALTHCHECK_CA", server_cert)).read_bytes()
    key = cert = None
    if os.environ.get("RNNSERVE_TLS_CLIENT_CA"):
        key_file = os.environ.get("RNNSERVE_HEALTHCHECK_KEY")
        cert_file = os.environ.get("RNNSERVE_HEALTHCHECK_CERT")
        if not (key_file and cert_file):
            raise SystemExit(
                "mutual TLS: set RNNSERVE_HEALTHCHECK_CERT and RNNSERVE_HEALTHCHECK_KEY to a "
                "client certificate and key the server's CA signed"
            )
        key, cert = Path(key_file).read_bytes(), Path(cert_file).read_bytes()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(trusted, key, cert))


def main(argv: list[str]) -> int:
    target = argv[1] if len(argv) > 1 else f"127.0.0.1:{os.environ.get('RNNSERVE_GRPC_PORT', 8001)}"
    with channel(target) as connection:
        stub = health_pb2_grpc.HealthStub(connection)
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
