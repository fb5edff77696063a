"""AsyncStream: one ModelStreamInfer call of the asyncio client, whose answers can be
waited for with a timeout (a stream not answered in time is cancelled, as the sync
client's Stream is)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from rnnserve.client.errors import Cancelled, DeadlineExceeded, InferenceError, from_rpc_error
from rnnserve.client.stream import closed_stream, no_answer
from rnnserve.client.wire import InferResult, decode_stream_reply

if TYPE_CHECKING:
    from rnnserve.client.aio.client import AsyncRnnClient


class AsyncStream:
    def __init__(
        self,
        client: AsyncRnnClient,
        requests: Iterable[Any] | AsyncIterable[Any] | None,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A stream sending `requests`, or, when None, what `send` is given; `timeout` is
        the whole stream's deadline (None: none); `headers` go with it besides the
        client's own."""
        self._client = client
        self._call = client.stub.ModelStreamInfer(
            requests, timeout=timeout, metadata=client.headers(headers)
        )
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.done = False  # ended, broke or cancelled: nothing more will come
        self._cancelled = False

    async def send(self, request: Any) -> None:
        try:
            await self._call.write(request)
        except grpc.RpcError as error:
            raise self._failed(error) from None
        except asyncio.InvalidStateError:  # the call has ended
            self.done = True
            raise closed_stream() from None

    async def receive(self, timeout: float | None = None) -> InferResult | None:
        """The next response, within `timeout` seconds (None: until the stream's deadline);
        None once the stream has ended. A broken stream raises its status; an error the
        server reports in the stream raises too, the stream staying open."""
        if self._cancelled:  # grpc.aio would raise asyncio.CancelledError, as if for the task
            raise Cancelled("the stream was cancelled")
        try:
            reply = await asyncio.wait_for(self._call.read(), timeout)
        except TimeoutError:
            self.cancel()
            raise no_answer(timeout) from None
        except grpc.RpcError as error:
            raise self._failed(error) from None
        if reply is grpc.aio.EOF:
            self.done = True
            return None
        return await self._client.text_decoded(decode_stream_reply(reply))

    async def close(self) -> None:
        """No more requests: the server ends the stream once it has answered them."""
        if not self.done:
            await self._call.done_writing()

    def cancel(self) -> None:
        self.done = self._cancelled = True
        self._call.cancel()

    def _failed(self, error: grpc.RpcError) -> InferenceError:
        """What a broken stream raises: its status. grpc.aio reports a read or a write that
        the call's deadline cut short as INTERNAL ("Internal error from Core"); what ended
        the stream then is its deadline."""
        self.done = True
        past_deadline = self._deadline is not None and time.monotonic() >= self._deadline
        if error.code() == grpc.StatusCode.INTERNAL and past_deadline:
            return DeadlineExceeded("Deadline Exceeded")
        return from_rpc_error(error)
