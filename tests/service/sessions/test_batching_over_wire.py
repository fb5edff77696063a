"""Batching across sessions over the wire: concurrent steps of different sessions share
ORT runs (seen on /metrics), and every session's answers equal those of a server that
runs each step alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from scrape import scrape
from session_helpers import AioSessions

SESSIONS = 32
STEPS = 12
PIECE = 4  # equal piece lengths, so that steps meet in batches


def stream_all(address: str) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    inputs = [rng.normal(0, 1, STEPS * PIECE).astype(np.float32) for _ in range(SESSIONS)]

    async def scenario() -> list[np.ndarray]:
        sessions = AioSessions(address)
        outputs = await asyncio.gather(*(
            sessions.streamed("sine-lstm", x, [PIECE] * STEPS, f"batched-{index}")
            for index, x in enumerate(inputs)
        ))  # fmt: skip
        await sessions.close()
        return outputs

    return asyncio.run(scenario())


def batch_sizes(metrics_url: str) -> tuple[float, float]:
    """(ORT runs, ORT runs of one row) of sine-lstm, from the rnnserve_batch_size histogram."""
    metrics = scrape(metrics_url)
    labels = 'model="sine-lstm",version="1"'
    return (
        metrics[f"rnnserve_batch_size_count{{{labels}}}"],
        metrics[f'rnnserve_batch_size_bucket{{le="1.0",{labels}}}'],
    )


@pytest.mark.slow  # 768 steps through two servers; batching in process: test_batcher.py
def test_concurrent_sessions_share_runs_and_answer_as_if_alone(
    start_server, tiny_repository: Path
) -> None:
    batched_server = start_server(
        tiny_repository,
        env={"RNNSERVE_BATCHING": "true", "RNNSERVE_BATCH_MAX_QUEUE_DELAY_US": "2000"},
    )
    batched = stream_all(batched_server.address)
    runs, single_runs = batch_sizes(batched_server.metrics_url)
    assert runs < SESSIONS * STEPS  # some runs carried several sessions' steps
    assert single_runs < runs

    alone_server = start_server(  # nor coalescing, which the default does
        tiny_repository, env={"RNNSERVE_BATCHING": "false", "RNNSERVE_COALESCE_STEPS": "false"}
    )
    alone = stream_all(alone_server.address)
    runs, single_runs = batch_sizes(alone_server.metrics_url)
    assert runs == single_runs == SESSIONS * STEPS
    for got, expected in zip(batched, alone, strict=True):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
