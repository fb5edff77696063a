"""What the sync and asyncio gRPC clients share of a connection: the channel (plaintext or
TLS, no message size limit) and its stub, besides what every client holds (api.Options: the
bearer token sent with every call, the default timeout, the text outputs learnt).

The client imports nothing of the server. It speaks TLS (server certificates checked
against `root_certificates`, or the system's roots; with `private_key` and
`certificate_chain`, mutual TLS) and sends a bearer token with every call when given one.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import grpc

from rnnserve.client.api import Options
from rnnserve.protocol import rpc

OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


class Connection(Options):
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
        super().__init__(timeout_s, token, decode_text)
        self.address = address
        if tls or root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(
                _read(root_certificates), _read(private_key), _read(certificate_chain)
            )
            self.channel: Any = self.GRPC.secure_channel(address, credentials, options=OPTIONS)
        else:
            self.channel = self.GRPC.insecure_channel(address, options=OPTIONS)
        self.stub = rpc.Stub(self.channel)
