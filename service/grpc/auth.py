"""Authentication and authorization of every call of the inference service, in one guard.

The front end registers each method of GRPCInferenceService behind `Guard` (once, at
start: no per-call interceptor machinery). Before the method runs, the Authenticator
(service/auth.py) turns the call's `authorization` metadata, or its client certificate's
subject common name, into a principal and checks the role the method needs; a call that
fails the check ends with UNAUTHENTICATED or PERMISSION_DENIED. The principal reaches the
method through a context variable (each call runs in a task of its own):
`current_principal()`. The health service (for probes) and reflection are registered
apart, unguarded. Without authentication there is no guard, and every call's principal is
`anonymous`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from rnnserve.service import metrics
from rnnserve.service.auth import Authenticator
from rnnserve.service.errors import ServiceError
from rnnserve.service.types import ANONYMOUS

_PRINCIPAL: ContextVar[str] = ContextVar("rnnserve_principal", default=ANONYMOUS)
CERTIFICATE_NAME = "x509_common_name"  # grpc's auth context property of the subject CN
AUTHORIZATION = "authorization"


def current_principal() -> str:
    """The principal of the call being handled."""
    return _PRINCIPAL.get()


class Guard:
    """Wraps the servicer's methods (rpc.add_servicer's `wrap`) behind the check."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def __call__(self, operation: str, kind: str, method: Callable[..., Any]) -> Callable[..., Any]:
        admit = self._admit
        if kind.endswith("_unary"):

            async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context, operation)
                return await method(request, context)

            return answer

        async def responses(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await admit(context, operation)
            async for response in method(request, context):
                yield response

        return responses

    async def _admit(self, context: grpc.aio.ServicerContext, operation: str) -> None:
        """Sets the call's principal, or ends the call (abort raises) when it may not
        proceed."""
        authenticator = self._authenticator
        authorization = next(
            (value for key, value in context.invocation_metadata() or () if key == AUTHORIZATION),
            None,
        )
        name = None
        if authenticator.by_certificate:  # the auth context is read only when it names
            names = context.auth_context().get(CERTIFICATE_NAME)
            name = names[0].decode() if names else None
        try:
            principal = authenticator.authenticate(authorization, name)
            authenticator.authorize(principal, operation)
        except ServiceError as error:
            metrics.AUTH_REFUSED.labels(operation, error.code).inc()
            await context.abort(grpc.StatusCode[error.code], error.message)
        _PRINCIPAL.set(principal.name)
