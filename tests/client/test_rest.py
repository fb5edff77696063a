"""What the REST clients (sync and asyncio) do of HTTP itself, against a real HTTP server of
the standard library's that records what they send and answers as told: a sequence's
routing header and the token on every call, connections the server closed while idle
opened again, chunked answers read whole; and a streaming sequence, which the REST API
cannot carry, refused."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from client_kinds import REST_KINDS, connect, disconnect, session_of

from rnnserve.client.aio import AsyncSequenceSession
from rnnserve.client.aio.rest import AsyncRestClient
from rnnserve.client.errors import Unimplemented
from rnnserve.client.metadata import ServerMetadata
from rnnserve.client.rest import RestClient
from rnnserve.client.sequence import ROUTING_HEADER, SequenceSession

WAIT_S = 30.0  # for the server's side of a connection to be closed


class RecordingServer(http.server.ThreadingHTTPServer):
    """Records each request (method, path, header fields) and answers every one `status`
    with the JSON `answer`: whole or in chunks; keeping the connection open, or closing it
    after each answer without saying so (as a keep-alive timeout closes an idle one)."""

    def __init__(
        self, status: int, answer: dict[str, Any], chunked: bool = False, keep_alive: bool = True
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status, self.answer = status, answer
        self.chunked, self.keep_alive = chunked, keep_alive
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.connections_closed = threading.Semaphore(0)
        self.address = f"127.0.0.1:{self.server_address[1]}"

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.connections_closed.release()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RecordingServer

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.command, self.path, dict(self.headers)))
        body = json.dumps(self.server.answer).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (body[:5], body[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.close_connection = not self.server.keep_alive

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass  # the test reads `requests`


@contextlib.contextmanager
def serving(server: RecordingServer) -> Iterator[RecordingServer]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def unimplemented() -> Iterator[RecordingServer]:
    """Refuses every call UNIMPLEMENTED, which no client retries."""
    with serving(RecordingServer(501, {"error": "not here", "code": "UNIMPLEMENTED"})) as server:
        yield server


METADATA = {"name": "recorder", "version": "0", "extensions": ["sequence"]}


@pytest.mark.parametrize("rest_kind", REST_KINDS)
def test_every_call_of_a_sequence_names_it_in_a_header(unimplemented, rest_kind: str) -> None:
    """As over gRPC (tests/service/sessions/test_routing.py): the header beside the token."""
    client = connect(rest_kind, unimplemented.address, token="t0ken")
    sequence = session_of(client, "sine-lstm", "user-7:chat-3")
    with pytest.raises(Unimplemented):
        sequence.step({"x": np.zeros((1, 2, 1), np.float32)}, ["y"])
    disconnect(client)

    [(method, path, headers)] = unimplemented.requests
    assert (method, path) == ("POST", "/v2/models/sine-lstm/infer")
    assert headers[ROUTING_HEADER] == "user-7:chat-3"
    assert headers["authorization"] == "Bearer t0ken"


@pytest.mark.parametrize("rest_kind", REST_KINDS)
def test_a_connection_the_server_closed_while_idle_is_opened_again(rest_kind: str) -> None:
    with serving(RecordingServer(200, METADATA, keep_alive=False)) as server:
        client = connect(rest_kind, server.address)
        answers = []
        for _ in range(3):
            answers.append(client.server_metadata())
            assert server.connections_closed.acquire(timeout=WAIT_S)  # while the client idles
        disconnect(client)

    assert answers == [ServerMetadata("recorder", "0", ["sequence"])] * 3
    assert len(server.requests) == 3


@pytest.mark.parametrize("rest_kind", REST_KINDS)
def test_a_chunked_answer_is_read_whole(rest_kind: str) -> None:
    with serving(RecordingServer(200, METADATA, chunked=True)) as server:
        client = connect(rest_kind, server.address)
        answers = [client.server_metadata(), client.server_metadata()]  # one connection
        disconnect(client)

    assert answers == [ServerMetadata("recorder", "0", ["sequence"])] * 2


def test_a_streaming_sequence_over_rest_is_refused() -> None:
    """The REST API has no streaming; the session says so when made, before any step."""
    with pytest.raises(ValueError, match="streaming sequence needs gRPC") as sync:
        SequenceSession(RestClient("127.0.0.1:1"), "seq2seq-gru", 1, streaming=True)
    with pytest.raises(ValueError, match="streaming sequence needs gRPC") as asyncio:
        AsyncSequenceSession(AsyncRestClient("127.0.0.1:1"), "seq2seq-gru", 1, streaming=True)

    assert "RestClient cannot call" in str(sync.value)
    assert "AsyncRestClient cannot call" in str(asyncio.value)
