"""AsyncRestClient: RestClient for asyncio, every method a coroutine with the same name,
arguments, timeouts, errors and results (those of AsyncRnnClient, less `stream`).

The requests and what their answers mean are client/rest_wire.py's, shared with the sync
RestClient; what is built on the calls is api.AsyncClient's, shared with AsyncRnnClient.
HTTP/1.1 on asyncio streams carries it (aio/http.py): keep-alive connections, one per call
in flight, so that calls run concurrently. A call's `timeout` is the whole exchange's
deadline, as a gRPC call's is. Make it, and use it, inside one running event loop.
"""

from __future__ import annotations

import asyncio
import http.client
from typing import Any, TypeVar

from rnnserve.client import rest_wire
from rnnserve.client.aio.http import HttpConnection
from rnnserve.client.api import AsyncClient, Headers
from rnnserve.client.errors import DeadlineExceeded, Unavailable
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.rest_wire import Answer, Call, RestConnection
from rnnserve.client.wire import InferResult

T = TypeVar("T")


class AsyncRestClient(RestConnection[HttpConnection], AsyncClient):
    async def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    # The calls ------------------------------------------------------------------------

    async def server_live(self, *, timeout: float | None = None) -> bool:
        return await self._call(rest_wire.server_live(), timeout)

    async def server_ready(self, *, timeout: float | None = None) -> bool:
        return await self._call(rest_wire.server_ready(), timeout)

    async def model_ready(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> bool:
        return await self._call(rest_wire.model_ready(model, version), timeout)

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        return await self._call(rest_wire.server_metadata(), timeout)

    async def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        return await self._call(rest_wire.model_metadata(model, version), timeout)

    async def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        return await self._call(rest_wire.model_infer(request, self.binary), timeout, headers)

    # The connections ------------------------------------------------------------------

    async def _call(self, call: Call[T], timeout: float | None, headers: Headers = ()) -> T:
        """One exchange within the call's timeout; a failure to reach the server or to hear
        it in time raised as UNAVAILABLE or DEADLINE_EXCEEDED, an error answer as its
        status."""
        seconds = self.timeout(timeout)
        try:
            async with asyncio.timeout(seconds):
                connection = await self._take()
                status, fields, body = await connection.exchange(
                    call.method, self.prefix + call.path, f"{self.host}:{self.port}", call.body,
                    self.request_headers(call, headers),
                )  # fmt: skip
        except TimeoutError:  # the connection is closed: its late answer is never read
            raise DeadlineExceeded(f"{self.url}: no answer within {seconds} s") from None
        except (OSError, http.client.HTTPException) as error:
            raise Unavailable(f"{self.url}: {error!r}") from None
        if connection.reusable:
            self.idle.append(connection)
        else:
            connection.close()
        return self.outcome(call, Answer(status, fields, body))

    async def _take(self) -> HttpConnection:
        """An idle connection the server has not closed, or a new one."""
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                return connection
            connection.close()
        return await HttpConnection.open(self.host, self.port, self.ssl)
