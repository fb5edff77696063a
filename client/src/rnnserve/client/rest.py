"""RestClient: numpy in, numpy out over the Open Inference Protocol's REST API (KServe v2
JSON, Triton's binary tensor data extension), for `rnnserve infer --url http://...` and
anything else that must reach a server through HTTP only.

Tensor encoding is rnnserve.protocol.rest's, shared with the server. Failures raise the
gRPC client's exceptions (client/errors.py): the class of the status the server's error
body names (or its HTTP status's), with its details (`sequence_offset`). BYTES outputs
come as `bytes`. The standard library's http.client carries
it, one keep-alive connection; https:// URLs speak TLS (mutual TLS with a client
certificate), and a token goes with every request as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

from rnnserve.client.errors import DeadlineExceeded, Internal, Unavailable, from_rest
from rnnserve.client.wire import InferResult, Inputs
from rnnserve.protocol import codec, rest
from rnnserve.protocol.codec import CodecError, Parameter


class RestClient:
    def __init__(
        self,
        url: str = "http://localhost:8000",
        timeout_s: float | None = 30.0,
        *,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        """A client of the server at `url`. An https:// URL speaks TLS: the server's
        certificate is checked against `root_certificates` (PEM; the system's roots when
        None); `private_key` and `certificate_chain` (PEM) are the client's own, for mutual
        TLS. `token` goes with every request as `Authorization: Bearer <token>`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https://HOST:PORT URL, got {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self._prefix = parts.path.rstrip("/")
        self._headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if parts.scheme == "http":
            if root_certificates or private_key or certificate_chain:
                raise ValueError(f"certificates need TLS: use https:// rather than {url!r}")
            self._connection = http.client.HTTPConnection(
                parts.hostname, parts.port or 80, timeout=timeout_s
            )
            return
        context = ssl.create_default_context(cafile=root_certificates)
        if certificate_chain is not None:
            context.load_cert_chain(certificate_chain, private_key)
        self._connection = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout_s, context=context
        )

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Health and metadata ------------------------------------------------------------

    def server_ready(self, timeout: float | None = None) -> bool:
        return self._request("GET", "/v2/health/ready", ok=(200, 400), timeout=timeout)[0] == 200

    def model_metadata(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> dict[str, Any]:
        """The model's metadata, as the REST API's JSON."""
        body = self._request("GET", _model_path(model, version), timeout=timeout)[2]
        return cast(dict[str, Any], json.loads(body))  # the metadata response: a JSON object

    # Inference -------------------------------------------------------------------------

    def infer_response(
        self,
        model: str,
        inputs: Inputs,
        outputs: Sequence[str] = (),
        parameters: Mapping[str, Parameter] | None = None,
        version: str = "",
        binary: bool = True,
        timeout: float | None = None,
    ) -> InferResult:
        """One request. `binary`: tensors both ways in the binary data extension (exact
        and compact) rather than JSON `data`. `timeout`: see _request."""
        buffers: list[bytes] = []
        tensors = []
        for name, data in inputs.items():
            datatype, array = codec.wire_array(name, data)
            tensors.append(rest.tensor_to_json(name, datatype, array, buffers if binary else None))
        header: dict[str, Any] = {
            "inputs": tensors,
            "parameters": {**(parameters or {}), rest.BINARY_DATA_OUTPUT: binary},
        }
        if outputs:
            header["outputs"] = [{"name": name} for name in outputs]
        body, length = rest.join_body(header, buffers)
        headers = {
            "Content-Type": "application/json" if length is None else "application/octet-stream"
        }
        if length is not None:
            headers[rest.HEADER_LENGTH] = str(length)
        _, reply_headers, reply = self._request(
            "POST", _model_path(model, version) + "/infer", body, headers, timeout=timeout
        )
        return _result(reply, reply_headers.get(rest.HEADER_LENGTH))

    # The connection --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        timeout: float | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One exchange. `timeout` (the client's `timeout_s` unless given): the seconds
        connecting, and then each wait for the server's bytes, may take; past it the call
        raises DeadlineExceeded. http.client bounds each socket operation, not the whole
        exchange, unlike a gRPC deadline."""
        seconds = self.timeout_s if timeout is None else timeout
        self._connection.timeout = seconds  # for the connection it may open
        if self._connection.sock is not None:  # the kept-alive one
            self._connection.sock.settimeout(seconds)
        try:
            self._connection.request(
                method, self._prefix + path, body, {**self._headers, **(headers or {})}
            )
            response = self._connection.getresponse()
            data = response.read()
        except TimeoutError:
            self._connection.close()
            raise DeadlineExceeded(f"{self.url}: no answer in time") from None
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()
            raise Unavailable(f"{self.url}: {error}") from None
        if response.status not in ok:
            raise from_rest(response.status, data)
        return response.status, response.headers, data


def _model_path(model: str, version: str) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def _result(body: bytes, header_length: str | None) -> InferResult:
    try:
        header, binary_part = rest.split_body(body, header_length)
        binary = rest.BinaryData(binary_part)
        outputs = {}
        for item in header.get("outputs", []):
            name, _, data, _ = rest.tensor_from_json(item, binary, kind="output")
            outputs[name] = data
        parameters = rest.parameters_from_json(header.get("parameters"), "response")
    except CodecError as error:
        raise Internal(f"the server's answer does not decode: {error}") from None
    return InferResult(
        model_name=header.get("model_name", ""),
        model_version=header.get("model_version", ""),
        id=header.get("id", ""),
        outputs=outputs,
        parameters=dict(parameters),
    )
