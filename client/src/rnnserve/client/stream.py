"""Stream: one ModelStreamInfer call of the sync client, whose answers can be waited for
with a timeout.

gRPC's sync streams block in `next()` without a limit, so a thread of the stream's own
reads its replies into a queue, from which `receive` takes them with a timeout. A stream
that is not answered in time is cancelled: a late answer must never be read as the answer
to a later request.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from rnnserve.client.errors import DeadlineExceeded, Unavailable, from_rpc_error
from rnnserve.client.wire import InferResult, decode_stream_reply

if TYPE_CHECKING:
    from rnnserve.client.client import RnnClient

_END = object()  # the stream ended


def no_answer(timeout: float | None) -> DeadlineExceeded:
    return DeadlineExceeded(f"no answer on the stream within {timeout} s; it was cancelled")


def closed_stream() -> Unavailable:
    return Unavailable("the server closed the stream")


class Stream:
    def __init__(
        self,
        client: RnnClient,
        requests: Iterator[Any] | None,
        timeout: float | None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A stream sending `requests`, or, when None, what `send` is given; `timeout` is
        the whole stream's deadline (None: none); `headers` go with it besides the
        client's own."""
        self._client = client
        self._requests: queue.Queue[Any] | None = None
        if requests is None:
            self._requests = queue.Queue()
            requests = iter(self._requests.get, None)
        self._call = client.stub.ModelStreamInfer(
            requests, timeout=timeout, metadata=client.headers(headers)
        )
        self._replies: queue.Queue[Any] = queue.Queue()
        self.done = False  # ended, broke or cancelled: nothing more will come
        threading.Thread(target=self._read, name="rnnserve-stream", daemon=True).start()

    def _read(self) -> None:
        try:
            for reply in self._call:
                self._replies.put(reply)
            self._replies.put(_END)
        except grpc.RpcError as error:
            self._replies.put(error)

    def send(self, request: Any) -> None:
        assert self._requests is not None, "this stream sends the requests it was given"
        self._requests.put(request)

    def receive(self, timeout: float | None = None) -> InferResult | None:
        """The next response, within `timeout` seconds (None: until the stream's deadline);
        None once the stream has ended. A broken stream raises its status; an error the
        server reports in the stream raises too, the stream staying open."""
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.cancel()
            raise no_answer(timeout) from None
        if reply is _END or isinstance(reply, grpc.RpcError):
            self.done = True
            self._replies.put(reply)  # for any later receive
            if isinstance(reply, grpc.RpcError):
                raise from_rpc_error(reply)
            return None
        return self._client.text_decoded(decode_stream_reply(reply))

    def close(self) -> None:
        """No more requests: the server ends the stream once it has answered them."""
        if self._requests is not None:
            self._requests.put(None)

    def cancel(self) -> None:
        self.done = True
        self._call.cancel()
        self.close()
