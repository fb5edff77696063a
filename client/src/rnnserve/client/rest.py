"""RestClient: RnnClient over the Open Inference Protocol's REST API (KServe v2 JSON,
Triton's binary tensor data extension), for `rnnserve infer --url http://...` and anything
else that must reach a server through HTTP only.

It is an `api.Client`: the same methods, arguments, results and exceptions as RnnClient,
and SequenceSession steps sequences over it as over gRPC (offsets, retries, the
`sequence-id` routing header as an HTTP header). The REST API has no streaming: there is
no `stream`, and a streaming sequence is refused. The requests and what their answers mean
are client/rest_wire.py's, shared with `rnnserve.client.aio.AsyncRestClient`.

The standard library's http.client carries it: keep-alive connections, one per call in
flight (threads may share the client, as they share an RnnClient); https speaks TLS
(mutual TLS with a client certificate), and a token goes with every request as
`Authorization: Bearer <token>`. A call's `timeout` bounds connecting and then each wait
for the server's bytes (http.client's socket timeout), not the whole exchange as a gRPC
deadline does: past it the call raises DeadlineExceeded.
"""

from __future__ import annotations

import http.client
from typing import Any, TypeVar

from rnnserve.client import rest_wire
from rnnserve.client.api import Client, Headers
from rnnserve.client.errors import DeadlineExceeded, Unavailable
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.rest_wire import Answer, Call, RestConnection, dropped
from rnnserve.client.wire import InferResult

T = TypeVar("T")


class RestClient(RestConnection[http.client.HTTPConnection], Client):
    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()

    # The calls ------------------------------------------------------------------------

    def server_live(self, *, timeout: float | None = None) -> bool:
        return self._call(rest_wire.server_live(), timeout)

    def server_ready(self, *, timeout: float | None = None) -> bool:
        return self._call(rest_wire.server_ready(), timeout)

    def model_ready(self, model: str, version: str = "", *, timeout: float | None = None) -> bool:
        return self._call(rest_wire.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        return self._call(rest_wire.server_metadata(), timeout)

    def model_metadata(
        self, model: str, version: str = "", *, timeout: float | None = None
    ) -> ModelMetadata:
        return self._call(rest_wire.model_metadata(model, version), timeout)

    def _infer(self, request: Any, timeout: float | None, headers: Headers) -> InferResult:
        return self._call(rest_wire.model_infer(request, self.binary), timeout, headers)

    # The connections ------------------------------------------------------------------

    def _call(self, call: Call[T], timeout: float | None, headers: Headers = ()) -> T:
        """One exchange; a failure to reach the server or to hear it in time raised as
        UNAVAILABLE or DEADLINE_EXCEEDED, an error answer as its status."""
        seconds = self.timeout(timeout)
        connection = self._take(seconds)
        try:
            connection.request(
                call.method, self.prefix + call.path, call.body, self.request_headers(call, headers)
            )
            response = connection.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        except TimeoutError:
            connection.close()  # its late answer must never be read as a later call's
            raise DeadlineExceeded(f"{self.url}: no answer within {seconds} s") from None
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise Unavailable(f"{self.url}: {error!r}") from None
        self.idle.append(connection)
        return self.outcome(call, answer)

    def _take(self, seconds: float | None) -> http.client.HTTPConnection:
        """An idle connection, or a new one; `seconds` its timeout. One the server closed
        while idle is closed here, and opens again when used."""
        try:
            connection = self.idle.pop()
        except IndexError:
            if self.ssl is None:
                connection = http.client.HTTPConnection(self.host, self.port)
            else:
                connection = http.client.HTTPSConnection(self.host, self.port, context=self.ssl)
        if connection.sock is not None and dropped(connection.sock):
            connection.close()
        connection.timeout = seconds  # for the socket it may open
        if connection.sock is not None:
            connection.sock.settimeout(seconds)
        return connection
