"""The honest limits of sessions, over the wire: idle expiry, the session limit and the
refusal of bidirectional models, each with its status and a message saying why."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scrape import scrape

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError

IDLE_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def repository(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sine-lstm from the tiny repository beside a bidirectional tagger built for it."""
    from rnnserve.export.build import build_repository

    root = tmp_path_factory.mktemp("bidirectional")
    build_repository(root, names=["tagger-gru-bi"], preset="tiny", seed=0)
    (root / "sine-lstm").symlink_to(tiny_repository / "sine-lstm")
    return root


def step(client: RnnClient, sequence_id: str, start: bool, model: str = "sine-lstm") -> None:
    parameters = {"sequence_id": sequence_id, "sequence_start": start}
    inputs = (
        {"text": ["hel"]} if model.startswith("tagger") else {"x": np.zeros((1, 3, 1), np.float32)}
    )
    client.infer_response_of(build_request(model, inputs, parameters=parameters))


def refused(client: RnnClient, sequence_id: str, start: bool, model: str = "sine-lstm"):
    with pytest.raises(InferenceError) as caught:
        step(client, sequence_id, start, model)
    return caught.value


def test_a_sequence_idle_past_the_timeout_is_dropped(start_server, repository: Path) -> None:
    server = start_server(repository, env={"RNNSERVE_SESSION_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)})
    with RnnClient(server.address) as client:
        step(client, "idle", start=True)
        step(client, "idle", start=False)  # within the timeout: still there
        time.sleep(IDLE_TIMEOUT_S * 3)
        error = refused(client, "idle", start=False)
    assert error.code == "INVALID_ARGUMENT"
    assert "sequence 'idle' for model sine-lstm version 1 is not active" in error.message
    assert f"it expired after {IDLE_TIMEOUT_S:g} s idle (session_idle_timeout_s)" in error.message
    # The sweeper reports each expiry once, whoever noticed it first.
    expired = 'rnnserve_sessions_expired_total{model="sine-lstm",version="1"}'
    for _ in range(100):
        metrics = scrape(server.metrics_url)
        if metrics.get(expired):
            break
        time.sleep(IDLE_TIMEOUT_S / 5)
    assert metrics[expired] == 1
    assert metrics['rnnserve_sessions_active{model="sine-lstm",version="1"}'] == 0


def test_starts_beyond_the_session_limit_are_refused(start_server, repository: Path) -> None:
    server = start_server(repository, env={"RNNSERVE_MAX_SESSIONS": "2"})
    with RnnClient(server.address) as client:
        step(client, "first", start=True)
        step(client, "second", start=True)
        step(client, "second", start=True)  # a restart takes no new place
        error = refused(client, "third", start=True)
        assert error.code == "RESOURCE_EXHAUSTED"
        assert "session limit reached: 2 active sessions (max_sessions=2)" in error.message
        step(client, "first", start=False)  # the sessions in place go on
        client.infer_response_of(build_request(
            "sine-lstm", {"x": np.zeros((1, 1, 1), np.float32)},
            parameters={"sequence_id": "first", "sequence_end": True},
        ))  # fmt: skip
        step(client, "third", start=True)  # an ended sequence frees its place
    metrics = scrape(server.metrics_url)
    assert metrics['rnnserve_sessions_rejected_total{model="sine-lstm",version="1"}'] == 1
    assert metrics['rnnserve_sessions_started_total{model="sine-lstm",version="1"}'] == 4
    assert metrics['rnnserve_sessions_ended_total{model="sine-lstm",version="1"}'] == 1
    assert metrics['rnnserve_sessions_active{model="sine-lstm",version="1"}'] == 2


def test_a_bidirectional_model_refuses_sequences(start_server, repository: Path) -> None:
    server = start_server(repository)
    with RnnClient(server.address) as client:
        assert client.tag("hello", model="tagger-gru-bi")  # whole sequences are served
        error = refused(client, "bi", start=True, model="tagger-gru-bi")
    assert error.code == "FAILED_PRECONDITION"
    assert "model 'tagger-gru-bi' is bidirectional and cannot stream" in error.message
    assert "backward direction needs the whole sequence" in error.message
