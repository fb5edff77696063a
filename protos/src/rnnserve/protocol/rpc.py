"""GRPCInferenceService's methods, read from the service descriptor: what a client calls and
what a server registers. The method list, names and streaming kinds come from protos/, so
neither side can drift from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc

from rnnserve.protocol import messages

SERVICE = messages.POOL.FindServiceByName(f"{messages.PACKAGE}.GRPCInferenceService")
SERVICE_NAME = SERVICE.full_name


def _kind(method: Any) -> str:
    return (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )


def _classes(method: Any) -> tuple[Any, Any]:
    return (
        getattr(messages, method.input_type.name),
        getattr(messages, method.output_type.name),
    )


class Stub:
    """One callable per RPC, as grpc's generated stubs have: `stub.ModelInfer(request)`."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        for method in SERVICE.methods:
            request, response = _classes(method)
            call = getattr(channel, _kind(method))
            setattr(
                self,
                method.name,
                call(
                    f"/{SERVICE_NAME}/{method.name}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString,
                ),
            )

    if TYPE_CHECKING:
        # The RPCs are set on each stub from the service descriptor, and their messages are
        # the pool's (Any to mypy): to mypy, every attribute is one of them.
        def __getattr__(self, name: str) -> Any: ...


def add_servicer(
    servicer: object,
    server: grpc.Server | grpc.aio.Server,
    own: Mapping[str, grpc.RpcMethodHandler[Any, Any]] | None = None,
) -> None:
    """Serves each RPC with the servicer's method of the same name, or with the handler
    `own` gives for it (by method name)."""
    handlers = dict(own or {})
    for method in SERVICE.methods:
        if method.name in handlers:
            continue
        request, response = _classes(method)
        make_handler = getattr(grpc, f"{_kind(method)}_rpc_method_handler")
        handlers[method.name] = make_handler(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
