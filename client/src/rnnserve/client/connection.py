"""What the sync and asyncio clients share of a connection: the channel (plaintext or TLS,
no message size limit), the bearer token sent with every call, the default timeout, and
what has been learnt of models' text outputs.

The client imports nothing of the server. It speaks TLS (server certificates checked
against `root_certificates`, or the system's roots; with `private_key` and
`certificate_chain`, mutual TLS) and sends a bearer token with every call when given one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import grpc

from rnnserve.client.wire import TextOutputs
from rnnserve.protocol import rpc

OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class Connection:
    """A channel, its stub, and the settings every call uses. Each client names the module
    that makes its channel: `grpc` or `grpc.aio`, which have the same functions for it."""

    GRPC: ClassVar[ModuleType]

    def __init__(
        self,
        address: str = "localhost:8001",
        timeout_s: float | None = 30.0,
        *,
        tls: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
        token: str | None = None,
        decode_text: bool = True,
    ) -> None:
        """A client of the server at `address`; every call waits at most `timeout_s`
        seconds unless its own `timeout` says otherwise (None: no limit). With `tls`
        (implied by any certificate file), the server's certificate is checked against
        `root_certificates` (PEM; the system's roots when None); `private_key` and
        `certificate_chain` (PEM) are the client's own, for mutual TLS. `token` goes with
        every call as `authorization: Bearer <token>`. `decode_text`: BYTES outputs the
        model's metadata marks as text come as `str` (False: every BYTES output as
        `bytes`)."""
        self.address = address
        self.timeout_s = timeout_s
        if tls or root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                _read(root_certificates), _read(private_key), _read(certificate_chain)
            )
            self.channel: Any = self.GRPC.secure_channel(address, credentials, options=OPTIONS)
        else:
            self.channel = self.GRPC.insecure_channel(address, options=OPTIONS)
        self.stub = rpc.Stub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (
            () if token is None else (("authorization", f"Bearer {token}"),)
        )
        self.text = TextOutputs(decode_text)

    def headers(self, extra: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        """A call's gRPC metadata: the client's own (its token), then the call's (a
        sequence's routing header)."""
        return (*self.metadata, *extra)

    def timeout(self, timeout: float | None) -> float | None:
        """A call's timeout: its own, else the client's."""
        return self.timeout_s if timeout is None else timeout
