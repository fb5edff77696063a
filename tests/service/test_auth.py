"""The protocol-neutral authentication of service/auth.py: principals from tokens or
certificates, and the role each operation of the protocol needs."""

from __future__ import annotations

import hashlib

import pytest

from rnnserve.protocol import rpc
from rnnserve.service.auth import OPERATION_ROLES, Authenticator, TokenEntry, role_for
from rnnserve.service.errors import PermissionDenied, Unauthenticated


def entry(name: str, token: str, roles: str) -> TokenEntry:
    return TokenEntry(name=name, sha256=hashlib.sha256(token.encode()).hexdigest(), roles=roles)


def test_every_rpc_of_the_protocol_has_its_role() -> None:
    assert set(OPERATION_ROLES) == {method.name for method in rpc.SERVICE.methods}
    admin = {name for name in OPERATION_ROLES if role_for(name) == "admin"}
    assert admin == {
        "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
        "RepositoryModelUnload",
    }  # fmt: skip
    assert role_for("ModelInfer") == role_for("ModelStreamInfer") == role_for("ServerLive")
    assert role_for("ServerLive") == "infer"
    # Operations the protocol has and this server does not serve are the admin's.
    assert role_for("SystemSharedMemoryRegister") == "admin"


def test_without_tokens_or_client_certificates_everyone_is_anonymous() -> None:
    everyone = Authenticator(None, client_certificates=False)
    assert not everyone.enabled
    principal = everyone.authenticate("Bearer whatever", None)
    assert principal.name == "anonymous" and principal.roles == {"infer", "admin"}


def test_a_token_names_its_principal_and_roles() -> None:
    tokens = Authenticator([entry("alice", "a1", "infer"), entry("ops", "o1", "infer,admin")],
                           client_certificates=True)  # fmt: skip
    alice = tokens.authenticate("bearer a1", "some certificate")  # the scheme in any case
    assert (alice.name, alice.roles) == ("alice", {"infer"})
    tokens.authorize(alice, "ModelInfer")
    with pytest.raises(PermissionDenied, match="'alice' may not call RepositoryIndex"):
        tokens.authorize(alice, "RepositoryIndex")
    tokens.authorize(tokens.authenticate("Bearer o1", None), "RepositoryIndex")
    for wrong in (None, "Bearer a2", "a1", "Bearer "):
        with pytest.raises(Unauthenticated):
            tokens.authenticate(wrong, None)


def test_under_mutual_tls_alone_the_certificates_name_is_the_principal() -> None:
    certificates = Authenticator(None, client_certificates=True)
    assert certificates.authenticate(None, "device-17").name == "device-17"
    with pytest.raises(Unauthenticated, match="names no subject common name"):
        certificates.authenticate(None, "")
