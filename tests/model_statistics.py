"""What a server under test's ModelStatistics say of its runs."""

from __future__ import annotations

from typing import Any

from rnnserve.protocol import messages as pb


def batched_runs(server: Any, model: str) -> int:
    """The model's ORT runs of more than one row so far (its batch_stats)."""
    (stats,) = server.stub.ModelStatistics(pb.ModelStatisticsRequest(name=model)).model_stats
    return sum(batch.compute_infer.count for batch in stats.batch_stats if batch.batch_size > 1)
