"""The client library's retries, against a real server, with every client: a step whose
answer is lost on its way back (the server applied it; the client saw UNAVAILABLE, as when
a connection breaks) is sent again with the same offset and answered again, never applied
twice; a step the server counts differently is refused and raised, never answered
wrongly."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from client_kinds import REST_KINDS, Blocking, session_of, streaming_needs_grpc

from rnnserve.client.client import RnnClient
from rnnserve.client.errors import FailedPrecondition, SequenceOutOfStep, Unavailable
from rnnserve.client.retry import RetryPolicy
from rnnserve.protocol import rpc

X = np.sin(np.linspace(0, 4, 24, dtype=np.float32))
CHUNKS = [(start, start + 3) for start in range(0, 24, 3)]  # 8 steps of 3
FAST = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.01)


class LostAnswer(grpc.RpcError):
    """What a connection that breaks after the server answered looks like to the client."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the connection broke before the answer arrived"

    def trailing_metadata(self) -> tuple:
        return ()


class LoseAnswers(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Loses every third answer, after the server sent it: the sync client's, as an
    interceptor of its channel; the asyncio client's, through `AsyncLosingStub`."""

    def __init__(self) -> None:
        self._answers = itertools.count()
        self.lost = 0

    def lose(self) -> bool:
        lose = next(self._answers) % 3 == 2
        self.lost += lose
        return lose

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        outcome = continuation(details, request)
        outcome.result()  # the server answered
        if self.lose():
            raise LostAnswer()
        return outcome

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return _Replies(continuation(details, requests), self)


class _Replies:
    """A sync stream's replies, of which the chosen ones are lost after arriving."""

    def __init__(self, call: Any, losing: LoseAnswers) -> None:
        self._call, self._losing = call, losing

    def __iter__(self) -> _Replies:
        return self

    def __next__(self) -> Any:
        reply = next(self._call)
        if self._losing.lose():
            raise LostAnswer()
        return reply

    def cancel(self) -> None:
        self._call.cancel()


def _async_lost() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
        "the connection broke before the answer arrived",
    )  # fmt: skip


class AsyncLosingStub:
    """An asyncio client's stub whose chosen answers are lost after arriving."""

    def __init__(self, stub: rpc.Stub, losing: LoseAnswers) -> None:
        self._stub, self._losing = stub, losing

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def ModelInfer(self, request: Any, **options: Any) -> Any:
        async def answer() -> Any:
            reply = await self._stub.ModelInfer(request, **options)
            if self._losing.lose():
                raise _async_lost()
            return reply

        return answer()

    def ModelStreamInfer(self, requests: Any = None, **options: Any) -> Any:
        return _AsyncReplies(self._stub.ModelStreamInfer(requests, **options), self._losing)


class _AsyncReplies:
    """An asyncio stream whose chosen replies are lost after arriving."""

    def __init__(self, call: Any, losing: LoseAnswers) -> None:
        self._call, self._losing = call, losing

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> bool:
        return self._call.cancel()

    async def read(self) -> Any:
        reply = await self._call.read()
        if reply is not grpc.aio.EOF and self._losing.lose():
            raise _async_lost()
        return reply


class LosingProxy:
    """A TCP proxy on 127.0.0.1 in front of a REST port that loses the answers `losing`
    chooses: it breaks the client's connection when the server's answer starts to arrive,
    as a network that fails after the server answered does."""

    def __init__(self, port: int, losing: LoseAnswers) -> None:
        self._port, self._losing = port, losing
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self._port))
            asked = threading.Event()  # a request went out, not yet answered
            threading.Thread(
                target=self._requests, args=(client, server, asked), daemon=True
            ).start()
            threading.Thread(
                target=self._answers, args=(server, client, asked), daemon=True
            ).start()

    @staticmethod
    def _requests(client: socket.socket, server: socket.socket, asked: threading.Event) -> None:
        with client:
            while data := _received(client):
                asked.set()  # before sending: the server may answer at once
                if not _sent(server, data):
                    break
        _shut(server)

    def _answers(
        self, server: socket.socket, client: socket.socket, asked: threading.Event
    ) -> None:
        with server:
            while data := _received(server):
                if asked.is_set():  # the first bytes of an answer
                    asked.clear()
                    if self._losing.lose():
                        break
                if not _sent(client, data):
                    break
        _shut(client)

    def close(self) -> None:
        _shut(self._listener)  # wakes its accept
        self._listener.close()


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:  # the other side broke it off
        return b""


def _sent(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:  # the other side broke it off
        return False
    return True


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # shut already
        sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def lossy_client(server, connected, kind: str) -> Iterator[tuple[Any, LoseAnswers]]:
    """A client of the test's kind that loses every third answer."""
    losing = LoseAnswers()
    if kind in REST_KINDS:
        proxy = LosingProxy(server.http_port, losing)
        yield connected(proxy.address), losing
        proxy.close()
        return
    client = connected(server)
    if isinstance(client, Blocking):
        client.target.stub = AsyncLosingStub(client.target.stub, losing)
    else:
        client.stub = rpc.Stub(grpc.intercept_channel(client.channel, losing))
    yield client, losing


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "streamed"])
def test_a_step_whose_answer_was_lost_is_answered_again_not_applied_twice(
    client: RnnClient, lossy_client, kind: str, streaming: bool
) -> None:
    streaming_needs_grpc(kind, streaming)
    whole = client.infer("sine-lstm", {"x": X[None, :, None]}, ["y"])["y"].reshape(-1)
    lossy, losing = lossy_client
    session = session_of(lossy, "sine-lstm", f"lossy-{kind}-{streaming}", streaming, retry=FAST)
    pieces = [session.step({"x": X[None, a:b, None]}, ["y"], end=b == 24)["y"] for a, b in CHUNKS]
    session.close()

    np.testing.assert_allclose(np.concatenate(pieces, axis=1).reshape(-1), whole, atol=1e-6)
    assert session.offset == 24
    assert session.retries == losing.lost >= 3


def test_without_offsets_a_lost_answer_is_not_retried(lossy_client, kind: str) -> None:
    lossy, _ = lossy_client
    session = session_of(lossy, "sine-lstm", f"no-offsets-{kind}", offsets=False, retry=FAST)
    session.step({"x": X[None, :3, None]})
    session.step({"x": X[None, 3:6, None]})
    with pytest.raises(Unavailable):
        session.step({"x": X[None, 6:9, None]})  # applied, but it cannot know
    assert session.retries == 0


def test_a_step_the_server_counts_otherwise_raises_out_of_step(any_client, kind: str) -> None:
    mine = session_of(any_client, "sine-lstm", f"shared-id-{kind}")
    mine.step({"x": X[None, :3, None]})
    other = session_of(any_client, "sine-lstm", f"shared-id-{kind}")  # one principal, one id
    other.step({"x": X[None, :5, None]})  # starts it again, 5 time steps

    with pytest.raises(SequenceOutOfStep) as raised:
        mine.step({"x": X[None, 3:6, None]})
    error = raised.value
    assert isinstance(error, FailedPrecondition) and error.code == "FAILED_PRECONDITION"
    assert (error.client_offset, error.server_offset) == (3, 5)
    assert "the server has applied 5 time steps" in error.message
    assert "the sequence cannot go on from here" in error.message


def test_backoffs_grow_to_their_bound_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5)
    backoffs = list(policy.backoffs())
    bounds = [0.1, 0.2, 0.4, 0.5, 0.5]
    assert len(backoffs) == 5
    assert all(bound / 2 <= wait <= bound for wait, bound in zip(backoffs, bounds, strict=True))
