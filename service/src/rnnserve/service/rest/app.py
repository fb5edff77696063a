"""The Open Inference Protocol's REST API (KServe v2, with Triton's extensions) as a
Starlette application over the DataPlane: each route converts, calls the data plane and
converts back, as the gRPC servicer does.

Routes (Triton's paths; `[/versions/{version}]` is optional, the newest version without):

    GET  /v2/health/live, /v2/health/ready             200, or 400 when not (no body)
    GET  /v2                                           server metadata
    GET  /v2/models/{name}[/versions/{version}]        model metadata
    GET  /v2/models/{name}[/versions/{version}]/ready  200, or 400 when not (no body)
    GET  /v2/models/{name}[/versions/{version}]/config Triton's ModelConfig as JSON
    GET  /v2/models[/{name}[/versions/{version}]]/stats Triton's statistics
    POST /v2/models/{name}[/versions/{version}]/infer  inference (JSON and binary tensors)
    POST /v2/repository/index                          the repository's models

Streaming has no REST route (Triton's generate extension is not implemented): use gRPC's
ModelStreamInfer. A failure is `{"error": message, "code": gRPC status name}` with the
HTTP status of that code (rnnserve.protocol.rest.HTTP_STATUS). Every request goes through
the front end's Recorder (service/access.py), and its id (the body's `id`, else the
`x-request-id` header) comes back in the `x-request-id` header. An error's details (the
`sequence_offset` a client resynchronises from) ride in its body and as headers
(`sequence-offset`). Every route but the health probes is admitted by the Authenticator
(service/auth.py): a bearer token in the `Authorization` header, or under mutual TLS the
client certificate's subject CN (frontend.py puts it in the request's scope); the role each
route needs is that of the RPC it mirrors. A refusal is 401 (with `WWW-Authenticate:
Bearer`) or 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rnnserve.protocol import rest
from rnnserve.service import triton
from rnnserve.service.access import (
    REQUEST_ID_HEADER,
    Call,
    Recorder,
    request_id_of,
    sequence_id_of,
)
from rnnserve.service.auth import AUTHORIZATION, Authenticator
from rnnserve.service.dataplane import DataPlane
from rnnserve.service.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    client_error,
    detail_headers,
)
from rnnserve.service.logs import REQUEST_ID
from rnnserve.service.rest import converter
from rnnserve.service.stalls import Stalls

JSON = "application/json"
BINARY = "application/octet-stream"
# Where the front end's protocol puts the client certificate's subject CN (mutual TLS).
CERTIFICATE_NAME = "rnnserve.certificate_name"
_COMPRESSIONS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # zlib wbits

Work = Callable[[Call], Awaitable[Response]]
T = TypeVar("T")


class PayloadTooLarge(ResourceExhausted):
    """A body over max_message_bytes: RESOURCE_EXHAUSTED, as gRPC says it, but HTTP 413."""

    http_status = 413


class BodyTimeout(DeadlineExceeded):
    """A body still arriving after request_body_timeout_s: the client's delay, HTTP 408;
    the connection closes (the rest of the body is not waited for)."""

    http_status = 408
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}


def error_response(error: ServiceError) -> JSONResponse:
    """`{"error": message, "code": status name, **details}`, its details as headers too."""
    status = getattr(error, "http_status", rest.HTTP_STATUS.get(error.code, 500))
    headers = {**getattr(error, "headers", {}), **dict(detail_headers(error))}
    if error.code == "UNAUTHENTICATED":
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        {"error": error.message, "code": error.code, **error.details},
        status_code=status,
        headers=headers,
    )


def _version_routes(path: str, endpoint: Callable[..., Any], methods: list[str]) -> list[Route]:
    """A model route with and without `/versions/{version}`."""
    return [
        Route(f"/v2/models/{{name}}{path}", endpoint, methods=methods),
        Route(f"/v2/models/{{name}}/versions/{{version}}{path}", endpoint, methods=methods),
    ]


class RestApi:
    """The application: `app` is what uvicorn serves. `serving` says whether the server
    reports itself ready (the server process sets it, as for gRPC's health service)."""

    def __init__(
        self, dataplane: DataPlane, serving: Callable[[], bool], authenticator: Authenticator
    ) -> None:
        self._dataplane = dataplane
        self._serving = serving
        self._authenticator = authenticator
        self._recorder = Recorder("http", dataplane.labels)
        settings = dataplane.settings
        self._budget = dataplane.budget
        self._max_bytes = settings.max_received_bytes
        self._max_bytes_setting = (
            "max_message_bytes"
            if self._max_bytes == settings.max_message_bytes
            else "max_inflight_bytes"
        )
        self._stalls = Stalls(settings.request_body_timeout_s)
        self._inline_max_bytes = settings.inline_max_bytes
        routes = [
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2", self.server_metadata),
            Route("/v2/models/stats", self.statistics),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            *_version_routes("", self.model_metadata, ["GET"]),
            *_version_routes("/ready", self.model_ready, ["GET"]),
            *_version_routes("/config", self.model_config, ["GET"]),
            *_version_routes("/stats", self.statistics, ["GET"]),
            *_version_routes("/infer", self.infer, ["POST"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._no_route})

    async def _answer(
        self, request: Request, rpc: str, work: Work, *, probe: bool = False
    ) -> Response:
        """Run one route's work, admitted and recorded, turning failures into JSON errors.
        A `probe` (live, ready) is open to all and kept out of the metrics."""
        model = request.path_params.get("name", "")
        version = request.path_params.get("version", "")
        request_id = request_id_of("", request.headers)
        with self._recorder.call(rpc, model, version, request_id, counted=not probe) as call:
            try:
                if not probe:
                    self._authenticator.admit(
                        call,
                        request.headers.get(AUTHORIZATION),
                        lambda: request.scope.get(CERTIFICATE_NAME),
                    )
                response = await work(call)
            except ClientDisconnect:  # gone before its body arrived: no one to answer
                call.code = "CANCELLED"
                return Response(status_code=499)
            except Exception as failure:
                error = client_error(failure, f"{rpc} for model {model!r}")
                call.code = error.code
                response = error_response(error)
            if call.request_id:
                response.headers[REQUEST_ID_HEADER] = call.request_id
            return response

    async def _no_route(self, request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = f"no route {request.method} {request.url.path}; see the REST API in README"
        return JSONResponse({"error": message}, status_code=error.status_code)

    # Health and metadata ------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            return _yes_or_no(self._dataplane.live())

        return await self._answer(request, "ServerLive", work, probe=True)

    async def ready(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            return _yes_or_no(self._serving() and self._dataplane.ready())

        return await self._answer(request, "ServerReady", work, probe=True)

    async def server_metadata(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            metadata = self._dataplane.server_metadata()
            return JSONResponse(converter.server_metadata_to_json(metadata))

        return await self._answer(request, "ServerMetadata", work)

    async def model_ready(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            return _yes_or_no(self._dataplane.model_ready(call.model, call.version))

        return await self._answer(request, "ModelReady", work)

    async def model_metadata(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            metadata = self._dataplane.model_metadata(call.model, call.version)
            return JSONResponse(converter.model_metadata_to_json(metadata))

        return await self._answer(request, "ModelMetadata", work)

    async def model_config(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            config = self._dataplane.model_config(call.model, call.version)
            return JSONResponse(converter.message_to_json(triton.model_config_to_proto(config)))

        return await self._answer(request, "ModelConfig", work)

    async def statistics(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            stats = self._dataplane.model_statistics(call.model, call.version)
            message = triton.model_statistics_to_proto(stats)
            return JSONResponse(converter.message_to_json(message))

        return await self._answer(request, "ModelStatistics", work)

    async def repository_index(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            async with self._body(request) as body:
                try:
                    options = json.loads(body) if body.strip() else {}
                except ValueError:  # UnicodeDecodeError too
                    options = None
            ready_only = options.get("ready", False) if isinstance(options, dict) else None
            if not isinstance(ready_only, bool):
                raise InvalidArgument('the body must be a JSON object such as {"ready": true}')
            entries = self._dataplane.repository_index()
            return JSONResponse(converter.repository_index_to_json(entries, ready_only))

        return await self._answer(request, "RepositoryIndex", work)

    # Inference ----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        async def work(call: Call) -> Response:
            self._dataplane.model(call.model, call.version)  # NOT_FOUND before any body error
            async with self._body(request) as body:
                return await self._infer(request, call, body)

        return await self._answer(request, "ModelInfer", work)

    async def _infer(self, request: Request, call: Call, body: bytes | bytearray) -> Response:
        infer_request, output_format = await self._convert(
            len(body),
            converter.request_from_json,
            body, request.headers.get(rest.HEADER_LENGTH), call.model, call.version,
            call.principal,
        )  # fmt: skip
        if infer_request.id:
            call.request_id = infer_request.id
            REQUEST_ID.set(infer_request.id)
        call.sequence_id = sequence_id_of(infer_request.parameters)
        response = await self._dataplane.infer(infer_request)
        size = sum(tensor.data.nbytes for tensor in response.outputs)
        content, header_length = await self._convert(
            size, converter.response_to_json, response, output_format
        )
        headers = {} if header_length is None else {rest.HEADER_LENGTH: str(header_length)}
        content, encoding = await self._convert(
            len(content), _compressed, content, request.headers.get("accept-encoding", "")
        )
        if encoding:
            headers["Content-Encoding"] = encoding
        media_type = JSON if header_length is None else BINARY
        return Response(content, headers=headers, media_type=media_type)

    async def _convert(self, size: int, convert: Callable[..., T], *args: Any) -> T:
        """`convert(*args)`, in a thread when `size` (bytes) is past inline_max_bytes: JSON
        of a large tensor takes milliseconds that must not stall the event loop."""
        if size <= self._inline_max_bytes:
            return convert(*args)
        return await asyncio.to_thread(convert, *args)

    @contextlib.asynccontextmanager
    async def _body(self, request: Request) -> AsyncIterator[bytes | bytearray]:
        """The request's body, decompressed, held in the memory budget from before it
        arrives to the end of the block: its reading waits until the budget has room for
        its Content-Length (or, without one, the largest body received; compressed, the
        largest once inflated too). Refused past `max_received_bytes` (413), after waiting
        `request_body_timeout_s` for room (429), or when it has not arrived by then (408,
        and the connection closes)."""
        largest = self._largest_body(request.headers)
        task = asyncio.current_task()
        assert task is not None
        self._stalls.watch(task)
        try:
            no_room = functools.partial(self._budget.waited, largest)
            arrival = await self._stalls.within(task, self._budget.receive(largest), no_room)
            with arrival:
                read = await self._stalls.within(task, self._read(request), self._too_late)
                self._stalls.forget(task)  # in: the request takes as long as it needs
                body = self._inflated(read, request.headers)
                del read  # inflated: the compressed bytes go
                arrival.arrived(len(body))
                yield body
        finally:
            self._stalls.forget(task)

    def _too_late(self) -> BodyTimeout:
        return BodyTimeout(
            f"the request body did not arrive within {self._stalls.timeout_s:g} s "
            "(request_body_timeout_s)"
        )

    def _largest_body(self, headers: Headers) -> int:
        """The most bytes the request's body may take once read (and inflated)."""
        declared = headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else self._max_bytes
        if size > self._max_bytes:
            raise self._too_large(size)
        encoding = _encoding(headers)
        if encoding == "identity":
            return size
        if encoding not in _COMPRESSIONS:
            raise InvalidArgument(
                f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none"
            )
        return size + self._max_bytes

    async def _read(self, request: Request) -> bytearray:
        body = bytearray()
        async with contextlib.aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > self._max_bytes:
                    raise self._too_large(len(body))
        return body

    def _inflated(self, body: bytearray, headers: Headers) -> bytes | bytearray:
        encoding = _encoding(headers)
        if encoding == "identity":
            return body
        inflater = zlib.decompressobj(_COMPRESSIONS[encoding])
        try:
            inflated = inflater.decompress(body, self._max_bytes + 1)
        except zlib.error as error:
            raise InvalidArgument(f"the body does not decompress as {encoding}: {error}") from None
        if len(inflated) > self._max_bytes:
            raise self._too_large(len(inflated))
        return inflated

    def _too_large(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body holds at least {size} bytes; at most {self._max_bytes} are "
            f"accepted ({self._max_bytes_setting})"
        )


def _encoding(headers: Headers) -> str:
    return headers.get("content-encoding", "identity").strip().lower()


def _yes_or_no(answer: bool) -> Response:
    """A health or readiness answer, as Triton gives it: the status says it all."""
    return Response(status_code=200 if answer else 400)


def _compressed(content: bytes, accept_encoding: str) -> tuple[bytes, str]:
    """The body compressed as the client accepts (gzip first), if it asked."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        return gzip.compress(content, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(content, 1), "deflate"
    return content, ""
