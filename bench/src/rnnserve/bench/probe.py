"""A sequential probe for one session's step latency: a synchronous Python gRPC client
timing each round trip with perf_counter_ns. k6's clock has millisecond resolution on
streams, so step latency on ModelStreamInfer (and, for a like-for-like ratio, on
ModelInfer and on the echo floor) is measured here, one request in flight at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rnnserve.bench.payloads import step_request
from rnnserve.bench.report import Metrics, quantiles_ms
from rnnserve.bench.servers import Running
from rnnserve.protocol.errors import UsageError


def _timed(steps: int, send: Any) -> tuple[list[int], float]:
    import grpc

    samples = []
    cpu_started = time.process_time()
    try:
        for index in range(steps):
            started = time.perf_counter_ns()
            send(index)
            samples.append(time.perf_counter_ns() - started)
    except grpc.RpcError as error:
        raise UsageError(f"step {index} failed: {error.code().name}: {error.details()}") from None
    return samples, time.process_time() - cpu_started


def _figures(samples: list[int], cpu_s: float, warmup: int) -> Metrics:
    measured = samples[warmup:]
    return {
        **quantiles_ms(measured),
        "steps": float(len(measured)),
        "probe_cpu_us_per_request": 1e6 * cpu_s / len(samples),
    }


def unary_steps(
    target: str,
    model_name: str,
    steps: int,
    warmup: int,
    sequence_id: int,
    *,
    server: Running | None = None,
    token: str = "",
    offsets: bool = False,
) -> Metrics:
    """Steps of one session through ModelInfer (no session when sequence_id is 0); over
    `server`'s channel (TLS when it speaks TLS) when given, with a bearer token, and with
    each step's sequence_offset (one time step per step)."""
    import grpc

    from rnnserve.protocol import rpc

    first = step_request(model_name, sequence_id, start=True)
    rest = step_request(model_name, sequence_id, start=False)
    metadata = (("authorization", f"Bearer {token}"),) if token else None

    def send(index: int) -> None:
        request = first if index == 0 else rest
        if offsets:
            request.parameters["sequence_offset"].int64_param = index
        infer(request, metadata=metadata)

    with server.channel() if server else grpc.insecure_channel(target) as channel:
        infer = rpc.Stub(channel).ModelInfer
        samples, cpu_s = _timed(steps + warmup, send)
    return _figures(samples, cpu_s, warmup)


def stream_steps(
    target: str, model_name: str, steps: int, warmup: int, sequence_id: int
) -> Metrics:
    """Steps of one session through one ModelStreamInfer stream, one step in flight."""
    import queue

    import grpc

    from rnnserve.protocol import rpc

    first = step_request(model_name, sequence_id, start=True)
    rest = step_request(model_name, sequence_id, start=False)
    outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def requests() -> Iterator[Any]:
        while (request := outbox.get()) is not None:
            yield request

    with grpc.insecure_channel(target) as channel:
        responses = rpc.Stub(channel).ModelStreamInfer(requests())

        def send(index: int) -> None:
            outbox.put(first if index == 0 else rest)
            answer = next(responses)
            if answer.error_message:
                raise UsageError(f"stream step {index} failed: {answer.error_message}")

        try:
            samples, cpu_s = _timed(steps + warmup, send)
        finally:
            outbox.put(None)
    return _figures(samples, cpu_s, warmup)
