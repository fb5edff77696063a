"""ModelStreamInfer's handler, all in compiled code, as ModelInfer's is (receiving.py): the
stream reads its requests one at a time, in arrival order (steps of a sequence depend on
the state the previous step left; other streams run concurrently), and writes each
request's replies, with grpc.aio's reader-writer API (`context.read`, `context.write`),
which a compiled coroutine can use where an async generator, which mypyc does not compile,
could not. Every message of a stream goes through here.

Each request is admitted, converted, recorded and answered: once (every task's but token
decoding's, `DataPlane.answers_once`), or once per decoded token. A stream's credentials are
the whole stream's, so their refusal ends it; any other failure is answered in the stream,
which stays open and can send no trailer: with its status and details as parameters of the
error's `infer_response`.

Once the server drains (SIGTERM), a stream waiting for its next request ends at once,
UNAVAILABLE ("shutting down; retry on another instance"), and one answering a request ends
so once it has answered it: an idle stream never holds a shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from rnnserve.protocol import messages as pb
from rnnserve.service.access import (
    REQUEST_ID_HEADER,
    Call,
    Recording,
    request_id_of,
    sequence_id_of,
)
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import PermissionDenied, ServiceError, Unauthenticated, client_error
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context, headers_of
from rnnserve.service.types import InferRequest

RPC = "ModelStreamInfer"
SHUTTING_DOWN = "the server is shutting down; retry on another instance"


class StreamRequests:
    """ModelStreamInfer's handler: a stream's requests read and answered one at a time."""

    def __init__(self, answering: Answering, dataplane: DataPlane) -> None:
        self._answering = answering
        self._dataplane = dataplane

    def handler(self) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.stream_stream_rpc_method_handler(
            self._serve,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        )

    async def _serve(self, requests: Any, context: Context) -> None:
        """The stream, to its end or the drain's (its requests are read with `context`, so
        grpc's iterator over them, `requests`, stays unused)."""
        headers = headers_of(context)
        stream_id = request_id_of("", headers)
        if stream_id:
            await context.send_initial_metadata(((REQUEST_ID_HEADER, stream_id),))
        dataplane = self._dataplane
        reading = _Reading(context, dataplane.draining)
        try:
            while (request := await reading.next()) is not None:
                request_id = request.id or stream_id
                if dataplane.answers_once(request.model_name):
                    await context.write(await self._reply(request, request_id, headers, context))
                else:
                    await self._replies(request, request_id, headers, context)
        finally:
            reading.close()
        if dataplane.draining.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _reply(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> Any:
        """The one reply of a request answered once, or of its failure; a refusal of the
        stream's credentials ends the stream instead."""
        with self._recorded(request, request_id) as call:
            try:
                infer_request, typed = self._received(request, call, headers, context)
                response = await self._dataplane.infer(infer_request)
                return converter.stream_response_to_proto(response, typed)
            except Exception as failure:
                reply, refusal = _failed(request, call, failure)
        if refusal is not None:  # the stream's credentials: no later request would pass
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)
        return reply

    async def _replies(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> None:
        """A request's replies written as they come, one per decoded token, or its
        failure's."""
        refusal = None
        with self._recorded(request, request_id) as call:
            writing = False
            try:
                infer_request, typed = self._received(request, call, headers, context)
                async for response in self._dataplane.stream_infer(infer_request):
                    reply = converter.stream_response_to_proto(response, typed)
                    writing = True
                    await context.write(reply)
                    writing = False
            except Exception as failure:
                if writing:  # the stream's own failure (its client gone), not the request's
                    raise
                reply, refusal = _failed(request, call, failure)
                if reply is not None:
                    await context.write(reply)
        if refusal is not None:
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)

    def _recorded(self, request: Any, request_id: str) -> Recording:
        return self._answering.recorder.call(
            RPC, request.model_name, request.model_version, request_id
        )

    def _received(
        self, request: Any, call: Call, headers: dict[str, str], context: Context
    ) -> tuple[InferRequest, bool]:
        """A request admitted (its principal checked) and converted; whether it sent typed
        contents (its replies do too)."""
        self._answering.admit(call, headers, context)
        infer_request = converter.request_from_proto(request, call.principal)
        call.sequence_id = sequence_id_of(infer_request.parameters)
        return infer_request, converter.sends_contents(request)


def _failed(request: Any, call: Call, failure: Exception) -> tuple[Any, ServiceError | None]:
    """A failed request's reply, in the stream, which stays open for the next request; or,
    when the stream's credentials were refused, no reply and the refusal that ends the
    stream."""
    if isinstance(failure, Unauthenticated | PermissionDenied):
        call.code = failure.code
        return None, failure
    error = client_error(failure, f"{RPC} for model {request.model_name!r}")
    call.code = error.code
    return converter.stream_error_to_proto(request, error), None


class _Reading:
    """Reading a stream's requests, which end once the data plane drains: a read waiting for
    the next request is cancelled then, while a request being answered is answered first.
    Reads are plain awaits of the call; only the drain, once, wakes a waiting one."""

    def __init__(self, context: Context, draining: asyncio.Event) -> None:
        self._context = context
        self._handler = asyncio.current_task()
        self._reading = self._drained = False
        self._draining = asyncio.ensure_future(draining.wait())
        self._draining.add_done_callback(self._drain)

    def _drain(self, waited: asyncio.Future[Any]) -> None:
        if waited.cancelled():  # the stream ended first (close)
            return
        self._drained = True
        if self._reading and self._handler is not None:
            self._handler.cancel()

    async def next(self) -> Any:
        """The next request; None at the stream's end, or once the data plane drains."""
        if self._drained:
            return None
        self._reading = True
        try:
            request = await self._context.read()
        except asyncio.CancelledError:
            if not self._drained:  # the call itself was cancelled
                raise
            if self._handler is not None:
                self._handler.uncancel()  # the drain's cancellation, handled here
            return None
        finally:
            self._reading = False
        return None if request is grpc.aio.EOF else request

    def close(self) -> None:
        self._draining.cancel()
