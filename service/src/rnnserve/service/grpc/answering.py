"""One unary RPC of the inference service answered: admitted by the Authenticator
(service/auth.py), recorded by the Recorder (service/access.py), its failure turned into
its gRPC status. The servicer answers every unary RPC through `Answering.answer`, and
ModelInfer's compiled handler (receiving.py) does too: compiled, as a step's path is.

Failures become their gRPC status with the message verbatim (`client_error` turns anything
unexpected into INTERNAL, logged once) and the error's details as trailing metadata
(`sequence-offset`). A request's id (its `id` field, else the `x-request-id` metadata) is
echoed in the `x-request-id` initial metadata.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from rnnserve.service.access import REQUEST_ID_HEADER, Call, Recorder, request_id_of
from rnnserve.service.auth import AUTHORIZATION, Authenticator
from rnnserve.service.errors import client_error, detail_headers

T = TypeVar("T")
# The call's context; requests and responses are messages of our own descriptor pool (Any).
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
CERTIFICATE_NAME = "x509_common_name"  # grpc's auth context property of the subject CN


def headers_of(context: Context) -> dict[str, str]:
    """The call's text metadata by key (binary values, `-bin` keys, left out)."""
    return {
        key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)
    }


def certificate_name(context: Context) -> str | None:
    """The subject CN of the client certificate the handshake verified (mutual TLS)."""
    names = context.auth_context().get(CERTIFICATE_NAME, ())
    return next((name.decode() for name in names), None)


class Answering:
    def __init__(self, recorder: Recorder, authenticator: Authenticator) -> None:
        self.recorder = recorder
        self._authenticator = authenticator
        # Fixed for the server's life (tokens, client certificates, or neither): without
        # either every call is anonymous's, and admitting one calls nothing.
        self._authenticates = authenticator.enabled

    async def answer(
        self,
        rpc: str,
        model: str,
        version: str,
        context: Context,
        work: Callable[[Call], Awaitable[T]],
        request_id: str = "",
        counted: bool = True,
    ) -> T | None:
        """Run one RPC's work, admitted and recorded, and turn failures into statuses
        (None: a non-OK status sends no message). The record is written before the client
        hears the answer, a refusal too."""
        headers = headers_of(context)
        request_id = request_id_of(request_id, headers)
        with self.recorder.call(rpc, model, version, request_id, counted=counted) as call:
            if request_id:
                await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
            try:
                self.admit(call, headers, context)
                return await work(call)
            except Exception as failure:
                error = client_error(failure, f"{rpc} for model {model!r}")
                call.code = error.code
        # The status is set and the handler returns, rather than context.abort(): abort's
        # exception would hold this frame, and through it the request, in a reference cycle
        # with the call's state, keeping every refused request's tensors (59 MiB for the
        # budget's refusals) until Python's cyclic collector happens to run.
        context.set_code(grpc.StatusCode[error.code])
        context.set_details(error.message)
        context.set_trailing_metadata(detail_headers(error))
        return None

    def admit(self, call: Call, headers: dict[str, str], context: Context) -> None:
        """Names the call's principal and checks its role (UNAUTHENTICATED or
        PERMISSION_DENIED otherwise), from its metadata or its client certificate."""
        if self._authenticates:
            self._authenticator.admit(
                call, headers.get(AUTHORIZATION), lambda: certificate_name(context)
            )
