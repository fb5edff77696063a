"""SIGTERM with streams open: the request in flight on a busy stream is answered (and
right), the idle streams end at once UNAVAILABLE ("shutting down; retry on another
instance") rather than hold the shutdown for the grace period, and the owned store hands
every state it held to Redis before the process exits, well within the grace period.
Thousands of idle streams do not take the process past its grace period either."""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis
from polling import eventually
from scrape import scrape

from rnnserve.client.client import RnnClient, build_request, decode_response
from rnnserve.protocol import rpc

IDLE = 20
GRACE_S = 30  # the default grace period
MANY_IDLE, SHORT_GRACE_S = 2000, 5
# What the exit may take past the grace period: a bound, on a machine shared with other tests.
MARGIN_S = 3
IN_FLIGHT = "rnnserve_request_bytes_in_flight{}"
# Long enough to be in flight when SIGTERM comes (about a second of ORT work), inside the
# memory budget given below.
BUSY_X = np.random.default_rng(3).standard_normal((512, 3000, 1)).astype(np.float32)


class Stream:
    """One ModelStreamInfer stream whose requests the test sends one at a time."""

    def __init__(self, stub: rpc.Stub) -> None:
        self._requests: queue.Queue[Any] = queue.Queue()
        self._replies = stub.ModelStreamInfer(self._iterate())

    def _iterate(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def reply(self) -> Any:
        return next(self._replies)

    def end(self) -> grpc.RpcError:
        """How the server ended the stream (the test sends nothing more)."""
        try:
            reply = next(self._replies)
        except grpc.RpcError as error:
            return error
        finally:
            self._requests.put(None)
        raise AssertionError(f"a reply, not the stream's end: {reply}")


def test_sigterm_closes_idle_streams_at_once_and_answers_the_busy_one(
    own_redis, start_server, sine_repository: Path
) -> None:
    server = start_server(sine_repository, args=[
        "--state-store", "owned", "--redis-url", own_redis.url,
        "--max-request-elements", "400000000", "--max-inflight-bytes", "4000000000",
    ])  # fmt: skip
    with RnnClient(server.address, timeout_s=60) as client:
        reference = client.infer("sine-lstm", {"x": BUSY_X}, ["y"])["y"]
    channel = grpc.insecure_channel(server.address, [("grpc.max_receive_message_length", -1)])
    stub = rpc.Stub(channel)
    idle = [Stream(stub) for _ in range(IDLE)]
    for number, stream in enumerate(idle):  # each holds a sequence's state, then waits
        x = np.full((1, 2, 1), number, np.float32)
        start = {"sequence_id": f"idle-{number}", "sequence_start": True}
        stream.send(build_request("sine-lstm", {"x": x}, ["y"], start))
        assert not stream.reply().error_message
    busy = Stream(stub)
    busy.send(build_request("sine-lstm", {"x": BUSY_X}, ["y"]))
    answered: list[Any] = []
    reading = threading.Thread(target=lambda: answered.append(busy.reply()), daemon=True)
    reading.start()
    eventually(lambda: scrape(server.metrics_url)[IN_FLIGHT] > 0, "the busy request in flight")

    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    endings = [stream.end() for stream in idle]
    idle_closed = time.monotonic() - signalled
    code = server.process.wait(timeout=GRACE_S + 30)
    exited = time.monotonic() - signalled
    reading.join(timeout=30)
    channel.close()
    print(f"\nSIGTERM with {IDLE} idle streams and one busy: idle streams closed after "
          f"{idle_closed:.2f} s, exit after {exited:.2f} s")  # fmt: skip

    assert code == 0
    for ending in endings:
        assert ending.code() == grpc.StatusCode.UNAVAILABLE
        assert ending.details() == "the server is shutting down; retry on another instance"
    [reply] = answered
    assert not reply.error_message
    np.testing.assert_array_equal(decode_response(reply.infer_response).outputs["y"], reference)
    assert exited < GRACE_S  # nothing waited for the idle streams
    handed = redis.Redis.from_url(own_redis.url)
    try:  # every sequence's state is in Redis for the next server
        assert len(list(handed.scan_iter("rnnserve:state:*"))) == IDLE
    finally:
        handed.close()
    log = server.log()
    assert "Traceback" not in log and "stopped" in log


async def open_idle_streams(address: str, count: int) -> tuple[list[grpc.aio.Channel], list[Any]]:
    """`count` ModelStreamInfer streams, each answered once, then idle (asyncio: no thread
    per stream), a hundred to a connection."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(count // 100)]
    request = build_request("sine-lstm", {"x": np.zeros((1, 1, 1), np.float32)}, ["y"])
    streams: list[Any] = []

    async def answered(stream: Any) -> None:
        await stream.write(request)
        assert not (await stream.read()).error_message

    for first in range(0, count, 100):  # in batches: opened all at once, some fail to start
        batch = [rpc.Stub(channels[first // 100]).ModelStreamInfer() for _ in range(100)]
        await asyncio.gather(*(answered(stream) for stream in batch))
        streams += batch
    return channels, streams


async def ending(stream: Any) -> grpc.StatusCode:
    try:
        reply = await stream.read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    raise AssertionError(f"a reply, not the stream's end: {reply}")


def test_thousands_of_idle_streams_end_within_the_grace_period(
    start_server, sine_repository: Path
) -> None:
    server = start_server(sine_repository, args=["--grace-period-s", str(SHORT_GRACE_S)])

    async def scenario() -> tuple[float, list[grpc.StatusCode]]:
        channels, streams = await open_idle_streams(server.address, MANY_IDLE)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, SHORT_GRACE_S + 60)
        exited = time.monotonic() - signalled
        assert code == 0
        endings = await asyncio.gather(*(ending(stream) for stream in streams))
        for channel in channels:
            await channel.close()
        return exited, endings

    exited, endings = asyncio.run(scenario())
    print(f"\nSIGTERM with {MANY_IDLE} idle streams, grace {SHORT_GRACE_S} s: exit after "
          f"{exited:.2f} s")  # fmt: skip

    assert exited < SHORT_GRACE_S + MARGIN_S
    assert set(endings) == {grpc.StatusCode.UNAVAILABLE}
    log = server.log()
    assert "Traceback" not in log and "stopped" in log
