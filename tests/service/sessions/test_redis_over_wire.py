"""Sessions shared through a real redis-server or a real Redis Cluster, with every step in
Redis (the redis store) or each state in the server that steps it (the owned store):
servers pointed at one Redis serve the same sessions, and a session outlives the server
process that started it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from session_helpers import CLUSTER_TURN_SLOW, bounds, step_request, y_of

from rnnserve.bench.redis_cluster import LocalCluster
from rnnserve.client.client import RnnClient

MODEL = "sine-gru"
CHUNKS = [5, 3, 8, 4]


def whole_and_input(client: RnnClient) -> tuple[np.ndarray, np.ndarray]:
    x = np.sin(np.linspace(0, 4, sum(CHUNKS))).astype(np.float32)
    return client.infer(MODEL, {"x": x[None, :, None]}, ["y"])["y"].reshape(-1), x


def send_piece(client: RnnClient, x: np.ndarray, sequence_id: str, index: int) -> np.ndarray:
    start, end = bounds(CHUNKS)[index]
    request = step_request(MODEL, x[start:end], sequence_id, index, len(CHUNKS))
    return y_of(client.infer_response_of(request))


@pytest.fixture(params=["redis", "owned"])
def env(request: pytest.FixtureRequest, any_redis: str) -> dict[str, str]:
    """Each store on one redis-server and on a Redis Cluster."""
    return {"RNNSERVE_STATE_STORE": request.param, "RNNSERVE_REDIS_URL": any_redis}


@pytest.mark.slow  # on one redis-server: test_routing.py, which counts offsets and hand-overs
@pytest.mark.parametrize("store", ["redis", "owned"])
def test_a_session_started_on_one_server_continues_on_another_over_a_cluster(
    start_server, tiny_repository: Path, redis_cluster: LocalCluster, store: str
) -> None:
    env = {"RNNSERVE_STATE_STORE": store, "RNNSERVE_REDIS_URL": redis_cluster.url}
    servers = [start_server(tiny_repository, env=env) for _ in range(2)]
    clients = [RnnClient(server.address) for server in servers]
    whole, x = whole_and_input(clients[0])
    # Pieces alternate between the two servers: each continues where the other stopped.
    pieces = [send_piece(clients[i % 2], x, "hand-over", i) for i in range(len(CHUNKS))]
    for client in clients:
        client.close()
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-5)


@CLUSTER_TURN_SLOW
def test_a_session_survives_a_restart_of_the_server(
    start_server, tiny_repository: Path, env: dict[str, str]
) -> None:
    first = start_server(tiny_repository, env=env)
    with RnnClient(first.address) as client:
        whole, x = whole_and_input(client)
        pieces = [send_piece(client, x, "restart", i) for i in range(2)]
    assert first.stop() == 0  # SIGTERM: a clean exit
    second = start_server(tiny_repository, env=env)
    with RnnClient(second.address) as client:
        pieces += [send_piece(client, x, "restart", i) for i in range(2, len(CHUNKS))]
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=1e-5)
