"""One request of a ModelStreamInfer stream: admitted, converted, recorded, its failure a
reply, in compiled code, as ModelInfer's handler is (receiving.py): every message of a
stream goes through here. The stream itself, an async generator that mypyc does not
compile, stays in servicer.py and reads its requests one at a time.

A stream's credentials are the whole stream's, so their refusal ends it; any other failure
is answered in the stream, which stays open and can send no trailer: with its status and
details as parameters of the error's `infer_response`.
"""

from __future__ import annotations

from typing import Any

import grpc

from rnnserve.service.access import Call, Recording, sequence_id_of
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import PermissionDenied, ServiceError, Unauthenticated, client_error
from rnnserve.service.grpc import converter
from rnnserve.service.grpc.answering import Answering, Context
from rnnserve.service.types import InferRequest

RPC = "ModelStreamInfer"


class StreamRequests:
    def __init__(self, answering: Answering, dataplane: DataPlane) -> None:
        self._answering = answering
        self._dataplane = dataplane

    async def reply(
        self, request: Any, request_id: str, headers: dict[str, str], context: Context
    ) -> Any:
        """The one reply of a request answered once (every task's but token decoding's,
        `DataPlane.answers_once`), or of its failure; a refusal of the stream's credentials
        ends the stream instead."""
        with self.recorded(request, request_id) as call:
            try:
                infer_request, typed = self.received(request, call, headers, context)
                response = await self._dataplane.infer(infer_request)
                return converter.stream_response_to_proto(response, typed)
            except Exception as failure:
                reply, refusal = self.failed(request, call, failure)
        if refusal is not None:  # the stream's credentials: no later request would pass
            await context.abort(grpc.StatusCode[refusal.code], refusal.message)
        return reply

    def recorded(self, request: Any, request_id: str) -> Recording:
        return self._answering.recorder.call(
            RPC, request.model_name, request.model_version, request_id
        )

    def received(
        self, request: Any, call: Call, headers: dict[str, str], context: Context
    ) -> tuple[InferRequest, bool]:
        """A request admitted (its principal checked) and converted; whether it sent typed
        contents (its replies do too)."""
        self._answering.admit(call, headers, context)
        infer_request = converter.request_from_proto(request, call.principal)
        call.sequence_id = sequence_id_of(infer_request.parameters)
        return infer_request, converter.sends_contents(request)

    @staticmethod
    def failed(request: Any, call: Call, failure: Exception) -> tuple[Any, ServiceError | None]:
        """A failed request's reply, in the stream, which stays open for the next request;
        or, when the stream's credentials were refused, no reply and the refusal that
        ends the stream."""
        if isinstance(failure, Unauthenticated | PermissionDenied):
            call.code = failure.code
            return None, failure
        error = client_error(failure, f"{RPC} for model {request.model_name!r}")
        call.code = error.code
        return converter.stream_error_to_proto(request, error), None
