"""Authentication and authorization of every gRPC call, in one interceptor.

Each call of a guarded service runs behind a check: the Authenticator (service/auth.py)
turns its `authorization` metadata, or its client certificate's subject common name, into a
principal and checks the role its method needs; a call that fails the check ends with
UNAUTHENTICATED or PERMISSION_DENIED before its handler runs. The principal reaches the
handler through a context variable (grpc.aio runs interceptors and the handler in one
context): `current_principal()`. The health service (for probes) and reflection are open.
Without authentication there is no interceptor, and every call's principal is `anonymous`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from rnnserve.service import metrics
from rnnserve.service.auth import Authenticator
from rnnserve.service.errors import ServiceError
from rnnserve.service.types import ANONYMOUS

_PRINCIPAL: ContextVar[str] = ContextVar("rnnserve_principal", default=ANONYMOUS)
CERTIFICATE_NAME = "x509_common_name"  # grpc's auth context property of the subject CN


def current_principal() -> str:
    """The principal of the call being handled."""
    return _PRINCIPAL.get()


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, open_services: set[str]) -> None:
        self._authenticator = authenticator
        self._open = open_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        service, _, operation = details.method.lstrip("/").partition("/")  # type: ignore[attr-defined]
        if handler is None or service in self._open:
            return handler
        return _guarded(handler, lambda context: self._admit(context, operation))

    async def _admit(self, context: grpc.aio.ServicerContext, operation: str) -> None:
        """Sets the call's principal, or ends the call (abort raises) when it may not
        proceed."""
        metadata = dict(context.invocation_metadata() or ())
        names = context.auth_context().get(CERTIFICATE_NAME) or [b""]
        try:
            principal = self._authenticator.authenticate(
                metadata.get("authorization"), names[0].decode()
            )
            self._authenticator.authorize(principal, operation)
        except ServiceError as error:
            metrics.AUTH_REFUSED.labels(operation, error.code).inc()
            await context.abort(grpc.StatusCode[error.code], error.message)
        _PRINCIPAL.set(principal.name)


Admit = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _guarded(handler: grpc.RpcMethodHandler, admit: Admit) -> grpc.RpcMethodHandler:
    """The handler, behind `admit`, for each kind of RPC."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await admit(context)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)
    if handler.stream_unary is not None:
        inner = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: Any) -> Any:
            await admit(context)
            return await inner(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codecs)
    streaming = handler.unary_stream or handler.stream_stream

    async def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await admit(context)
        async for response in streaming(request, context):
            yield response

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(responses, **codecs)
    return grpc.stream_stream_rpc_method_handler(responses, **codecs)
