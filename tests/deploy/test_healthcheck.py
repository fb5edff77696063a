"""deploy/healthcheck.py, the images' HEALTHCHECK, asks the gRPC health service."""

from __future__ import annotations

from deploytools import RunningServer, free_port, healthcheck


def test_passes_against_a_serving_server(serving: RunningServer) -> None:
    result = healthcheck(serving.grpc_target)
    assert result.code == 0, result.output
    assert "SERVING" in result.output


def test_fails_when_nothing_listens() -> None:
    result = healthcheck(f"127.0.0.1:{free_port()}")
    assert result.code == 1
    assert "UNAVAILABLE" in result.output
