"""What the security tests share: the principals and their tokens, the token file, and
gRPC credentials from the test certificates (the `pki` fixture)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from rnnserve.bench.pki import Issued

TOKENS = {  # principal: (token, roles)
    "alice": ("alice-token-4f1c", "infer"),
    "mallory": ("mallory-token-9b2e", "infer"),
    "ops": ("ops-token-77d0", "infer,admin"),
}


def write_tokens(path: Path) -> Path:
    lines = ["# name  sha256(token)  roles"]
    for name, (token, roles) in TOKENS.items():
        lines.append(f"{name}  {hashlib.sha256(token.encode()).hexdigest()}  {roles}")
    path.write_text("\n".join(lines) + "\n")
    return path


def credentials(ca: Path, client: Issued | None = None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(ca.read_bytes())
    return grpc.ssl_channel_credentials(
        ca.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
    )


def bearer(principal: str) -> tuple[tuple[str, str]]:
    """gRPC metadata carrying the principal's token."""
    return (("authorization", f"Bearer {TOKENS[principal][0]}"),)
