"""deploy/healthcheck.py, the images' HEALTHCHECK, asks the gRPC health service."""

from __future__ import annotations

from pathlib import Path

import grpc
from deploytools import RunningServer, healthcheck
from processes import free_port


def test_passes_against_a_serving_server(serving: RunningServer) -> None:
    result = healthcheck(serving.grpc_target)
    assert result.code == 0, result.output
    assert "SERVING" in result.output


def test_fails_when_nothing_listens() -> None:
    result = healthcheck(f"127.0.0.1:{free_port()}")
    assert result.code == 1
    assert "UNAVAILABLE" in result.output


def test_asks_a_mutual_tls_server_over_tls(start_server, sine_repository: Path, pki) -> None:
    tls = {
        "RNNSERVE_TLS_CERT": str(pki.server.cert), "RNNSERVE_TLS_KEY": str(pki.server.key),
        "RNNSERVE_TLS_CLIENT_CA": str(pki.ca),
    }  # fmt: skip
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.alice.key.read_bytes(), pki.alice.cert.read_bytes()
    )
    server = start_server(sine_repository, env=tls, credentials=credentials)
    client = {"RNNSERVE_HEALTHCHECK_CERT": str(pki.alice.cert),
              "RNNSERVE_HEALTHCHECK_KEY": str(pki.alice.key)}  # fmt: skip

    def check(**env: str) -> int:
        return healthcheck(server.address, {**tls, **client, **env}).code

    assert check() == 0  # trusting the server's own certificate (the default)
    assert check(RNNSERVE_HEALTHCHECK_CA=str(pki.ca)) == 0
    # Trusting another CA, or showing no certificate, gets no answer.
    assert check(RNNSERVE_HEALTHCHECK_CA=str(pki.other_ca)) == 1
    assert healthcheck(server.address, {**tls, "RNNSERVE_TLS_CLIENT_CA": ""}).code == 1
