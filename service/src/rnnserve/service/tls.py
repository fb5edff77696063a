"""The server's TLS files, checked at start and read for the front ends.

`tls_cert` (the certificate chain, PEM) with `tls_key` (its private key, PEM, unencrypted)
make the server speak TLS; `tls_client_ca` (PEM) makes it require client certificates
signed by that CA (mutual TLS). A file that is missing, unreadable or not what it should be
stops the server at start with one line naming the file and the problem (Python's ssl
module reads them the way the TLS library will).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rnnserve.protocol.errors import UsageError
from rnnserve.service.settings import Settings


@dataclass(frozen=True)
class TlsFiles:
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None  # set: every client must present a certificate signed by it


def load_tls(settings: Settings) -> TlsFiles | None:
    """The TLS files the settings name, checked; None when the server speaks plaintext."""
    cert, key, client_ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None and key is None:
        if client_ca is not None:
            raise UsageError(
                f"--tls-client-ca {client_ca}: needs --tls-cert and --tls-key (mutual TLS "
                "is TLS in which the client shows a certificate too)"
            )
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise UsageError(f"{given} needs {missing}: the certificate and its private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    chain = _read("--tls-cert", cert)
    _check("--tls-cert", cert, lambda: context.load_verify_locations(cafile=cert))
    private_key = _read("--tls-key", key)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(
                f"--tls-key {key}: is not the key of the certificate in {cert}"
            ) from None
        raise UsageError(f"--tls-key {key}: holds no PEM private key ({error.reason})") from None
    except _Encrypted:
        raise UsageError(
            f"--tls-key {key}: is encrypted; give the key unencrypted (readable by the server only)"
        ) from None
    ca = None
    if client_ca is not None:
        ca = _read("--tls-client-ca", client_ca)
        _check("--tls-client-ca", client_ca, lambda: context.load_verify_locations(client_ca))
    return TlsFiles(chain, private_key, ca)


class _Encrypted(Exception):
    """Raised by the password callback: the server never prompts for a key's password."""


def _no_password() -> str:
    raise _Encrypted


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{flag} {path}: cannot be read: {error.strerror}") from None


def _check(flag: str, path: Path, load: Callable[[], None]) -> None:
    try:
        load()
    except ssl.SSLError as error:
        raise UsageError(
            f"{flag} {path}: holds no PEM certificate ({error.reason or error})"
        ) from None
