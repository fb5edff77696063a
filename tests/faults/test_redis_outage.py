"""Redis faults while clients step sequences: stopped (SIGSTOP, a hung Redis), killed, and
started again without its data. Requests that need Redis answer UNAVAILABLE (retryable,
naming the store), never INTERNAL, each within the store's timeout; health says NOT_SERVING
until Redis answers again; the log says so once each way. Sequences go on exactly after a
pause; after Redis lost its data, those whose states it held are ABORTED ("state ... was
lost") and start over, while the owned store's workers, which hold their states
themselves, claim them again and go on. No answer is ever wrong; the session gauge counts
what is there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from faults_helpers import Sequences
from grpc_health.v1 import health_pb2, health_pb2_grpc
from polling import eventually
from scrape import scrape, series

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import InferenceError

CLIENTS = 8
SESSIONS = 'rnnserve_sessions_active{model="sine-lstm",version="1"}'
STORE_UP = "rnnserve_state_store_up{}"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(server) -> int:  # type: ignore[no-untyped-def]
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def requests_with(code: str, samples: dict[str, float]) -> float:
    return sum(
        value
        for name, value in samples.items()
        if name.startswith("rnnserve_requests_total{") and f'code="{code}"' in name
    )


def test_a_stopped_redis_answers_unavailable_and_the_sequences_go_on_exactly(
    own_redis, start_server, sine_repository: Path
) -> None:
    server = start_server(sine_repository, args=["--state-store", "redis", "--redis-url",
                                                 own_redis.url])  # fmt: skip
    with Sequences(server.address, CLIENTS) as sequences:
        sequences.wait_for_steps(3)
        own_redis.pause()
        eventually(lambda: health_of(server) == NOT_SERVING, "health said NOT_SERVING")
        with RnnClient(server.address) as client:
            stateless = client.infer("sine-lstm", {"x": sequences.xs[0][None, :, None]}, ["y"])
            started = time.monotonic()
            with pytest.raises(InferenceError) as refused:
                client.infer("sine-lstm", {"x": sequences.xs[0][None, :3, None]}, ["y"],
                             {"sequence_id": "direct", "sequence_start": True})  # fmt: skip
            waited = time.monotonic() - started
        own_redis.resume()
        eventually(lambda: health_of(server) == SERVING, "health said SERVING again")
        sequences.wait_for_steps(5)
    print(f"\na request to a stopped Redis was answered UNAVAILABLE after {waited:.2f} s")

    assert stateless["y"].shape == (1, 60, 1)  # what needs no state is served throughout
    assert refused.value.code == "UNAVAILABLE"
    assert refused.value.message.startswith(f"the redis state store at {own_redis.url[8:]} is ")
    assert refused.value.message.endswith("nothing was applied: the request may be retried")
    assert waited < 10  # the store's timeout (1 s), not the grace of a hung socket
    assert sequences.wrong == [] and sequences.lost == []
    assert sequences.refused == [], sequences.summary()  # retried through the pause
    samples = scrape(server.metrics_url)
    assert requests_with("INTERNAL", samples) == 0
    assert samples[series("rnnserve_requests_total", code="UNAVAILABLE", model="sine-lstm",
                          protocol="grpc", rpc="ModelInfer", version="1")] >= 1  # fmt: skip
    assert samples[STORE_UP] == 1
    assert samples[SESSIONS] == sequences.active
    errors = [v for k, v in samples.items() if k.startswith("rnnserve_state_store_errors_total")]
    assert sum(errors) >= 1
    log = server.log()
    assert log.count("is unreachable") == 1 and log.count("answers again after") == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("store", ["redis", "owned"])
def test_redis_killed_and_started_again_empty(
    own_redis, start_server, sine_repository: Path, store: str
) -> None:
    server = start_server(sine_repository, args=["--state-store", store, "--redis-url",
                                                 own_redis.url])  # fmt: skip
    with Sequences(server.address, CLIENTS) as sequences:
        sequences.wait_for_steps(3)
        own_redis.kill()
        eventually(lambda: health_of(server) == NOT_SERVING, "health said NOT_SERVING")
        own_redis.start()  # on the same port, without the data
        eventually(lambda: health_of(server) == SERVING, "health said SERVING again")
        sequences.wait_for_steps(5)

    assert sequences.wrong == []
    assert sequences.refused == [], sequences.summary()
    if store == "redis":  # every state was in Redis: the sequences under way are lost
        assert sequences.lost, sequences.summary()
        for message in sequences.lost:
            assert f"was lost: Redis at {own_redis.url[8:]} lost its data at " in message
    else:  # each worker holds its states: claimed again, they go on exactly
        assert sequences.lost == []
    samples = scrape(server.metrics_url)
    assert requests_with("INTERNAL", samples) == 0
    assert samples[SESSIONS] == sequences.active  # counted in the new Redis
    log = server.log()
    assert "lost its data" in log
    assert "Traceback" not in log
