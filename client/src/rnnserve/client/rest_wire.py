"""What the sync and asyncio REST clients share, all but the exchanges themselves: the
server they talk to (URL, TLS, whether tensors go binary), each call of the REST API as an
HTTP exchange (`Call`: method, path, body, headers) and what its answer means (its result,
or the exception of the status the server named), and which kept-alive connections the
server has closed.

A ModelInfer request is the message `wire.build_request` builds for gRPC, sent as REST's
JSON: its inputs in Triton's binary data extension (exact and compact) or as JSON `data`,
the encoding rnnserve.protocol.rest shares with the server. Failures raise the gRPC
clients' exceptions (`errors.from_rest`: the status the error body names, with its details
such as `sequence_offset`).
"""

from __future__ import annotations

import json
import selectors
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

from rnnserve.client.api import Headers, Options
from rnnserve.client.errors import Internal, from_rest
from rnnserve.client.metadata import ModelMetadata, ServerMetadata
from rnnserve.client.wire import InferResult, tensors_of
from rnnserve.protocol import codec, rest
from rnnserve.protocol.codec import CodecError

T = TypeVar("T")
C = TypeVar("C")  # a kept-alive connection, of whatever kind the client uses
JSON = "application/json"
BINARY = "application/octet-stream"


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One call of the REST API: the HTTP request, the statuses that answer it (others
    carry an error) and what its answer reads as."""

    method: str
    path: str  # below the URL's own path
    read: Callable[[Answer], T]
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ok: tuple[int, ...] = (200,)


class RestConnection(Options, Generic[C]):
    """The server a REST client talks to, the settings every call uses and the connections
    kept alive between calls (`idle`: a call takes one, or opens one, and gives it back
    once it has read its answer whole; list.pop and append are atomic, so threads may
    share a sync client)."""

    def __init__(
        self,
        url: str = "http://localhost:8000",
        timeout_s: float | None = 30.0,
        *,
        tls: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        token: str | None = None,
        decode_text: bool = True,
        binary: bool = True,
    ) -> None:
        """A client of the server at `url`: http://HOST:PORT[/PATH], https://..., or
        HOST:PORT (https with `tls` or any certificate, else http). Over https the
        server's certificate is checked against `root_certificates` (PEM; the system's
        roots when None); `private_key` and `certificate_chain` (PEM) are the client's own,
        for mutual TLS. `timeout_s`, `token` and `decode_text` as RnnClient's. `binary`:
        tensors both ways in the binary data extension (exact and compact) rather than
        JSON `data`."""
        super().__init__(timeout_s, token, decode_text)
        secure = bool(tls or root_certificates or private_key or certificate_chain)
        if "://" not in url:
            url = f"{'https' if secure else 'http'}://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https://HOST:PORT URL, got {url!r}")
        if parts.scheme == "http" and secure:
            raise ValueError(f"TLS and certificates need https://, not {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (80 if parts.scheme == "http" else 443)
        self.prefix = parts.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context(cafile=root_certificates)
            if certificate_chain is not None:
                self.ssl.load_cert_chain(certificate_chain, private_key)
        self.binary = binary
        self.idle: list[C] = []

    def request_headers(self, call: Call[Any], extra: Headers) -> dict[str, str]:
        """A call's HTTP headers: its own, the client's (its token), then `extra`."""
        return {**call.headers, **dict(self.headers(extra))}

    def outcome(self, call: Call[T], answer: Answer) -> T:
        """What `answer` reads as; the error it carries, raised."""
        if answer.status not in call.ok:
            raise from_rest(answer.status, answer.body)
        try:
            return call.read(answer)
        except (CodecError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise Internal(f"the server's answer does not decode: {error!r}") from None


def dropped(sock: Any) -> bool:
    """Whether an idle connection's socket has been closed by the server (as its keep-alive
    timeout does): it has something to read, which can only be its end (or bytes no
    request asked for). Such a connection is opened anew rather than failing a call."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


# The calls ------------------------------------------------------------------------------


def _ok(answer: Answer) -> bool:
    """Health and readiness: 200 yes, 400 no (Triton's answers, without a body)."""
    return answer.status == 200


def server_live() -> Call[bool]:
    return Call("GET", "/v2/health/live", _ok, ok=(200, 400))


def server_ready() -> Call[bool]:
    return Call("GET", "/v2/health/ready", _ok, ok=(200, 400))


def model_ready(model: str, version: str) -> Call[bool]:
    return Call("GET", _model_path(model, version) + "/ready", _ok, ok=(200, 400))


def server_metadata() -> Call[ServerMetadata]:
    return Call("GET", "/v2", lambda answer: ServerMetadata.from_json(answer.json()))


def model_metadata(model: str, version: str) -> Call[ModelMetadata]:
    return Call(
        "GET", _model_path(model, version), lambda answer: ModelMetadata.from_json(answer.json())
    )


def model_infer(request: Any, binary: bool) -> Call[InferResult]:
    """POST .../infer of a ModelInferRequest message (`wire.build_request`'s): its inputs,
    the outputs it names and its parameters; tensors both ways binary when `binary`."""
    buffers: list[bytes] | None = [] if binary else None
    inputs = [
        rest.tensor_to_json(name, datatype, data, buffers)
        for name, datatype, data in tensors_of(request.inputs, request.raw_input_contents)
    ]
    parameters = codec.parameters_from_proto(request.parameters, "request")
    header: dict[str, Any] = {
        "inputs": inputs,
        "parameters": {**parameters, rest.BINARY_DATA_OUTPUT: binary},
    }
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": output.name} for output in request.outputs]
    body, length = rest.join_body(header, buffers or [])
    headers = {"Content-Type": JSON if length is None else BINARY}
    if length is not None:
        headers[rest.HEADER_LENGTH] = str(length)
    path = _model_path(request.model_name, request.model_version) + "/infer"
    return Call("POST", path, _infer_result, body, headers)


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def _infer_result(answer: Answer) -> InferResult:
    """An infer response's outputs (BYTES as `bytes`) and parameters."""
    header, binary_part = rest.split_body(answer.body, answer.headers.get(rest.HEADER_LENGTH))
    binary = rest.BinaryData(binary_part)
    outputs = {}
    for item in header.get("outputs", []):
        name, _, data, _ = rest.tensor_from_json(item, binary, kind="output")
        outputs[name] = data
    return InferResult(
        model_name=header.get("model_name", ""),
        model_version=header.get("model_version", ""),
        id=header.get("id", ""),
        outputs=outputs,
        parameters=rest.parameters_from_json(header.get("parameters"), "response"),
    )
