"""The protocol-neutral authentication of service/auth.py: principals from tokens or
certificates, the role each operation of the protocol needs, the token file read again when
it changes, and tokens that expire."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from rnnserve.protocol import rpc
from rnnserve.protocol.errors import UsageError
from rnnserve.service.auth import OPERATION_ROLES, Authenticator, TokenFile, role_for
from rnnserve.service.errors import PermissionDenied, Unauthenticated


def line(name: str, token: str, roles: str, expires: str = "") -> str:
    return f"{name} {hashlib.sha256(token.encode()).hexdigest()} {roles} {expires}\n"


def token_file(path: Path, *lines: str) -> TokenFile:
    path.write_text("".join(lines))
    return TokenFile(path)


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


def test_a_token_names_its_principal_and_roles(tmp_path: Path) -> None:
    file = token_file(tmp_path / "tokens", line("alice", "a1", "infer"),
                      line("ops", "o1", "infer,admin"))  # fmt: skip
    tokens = Authenticator(file, client_certificates=True)
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


def test_a_token_past_its_expiry_is_refused(tmp_path: Path) -> None:
    file = token_file(
        tmp_path / "tokens",
        line("old", "o1", "infer", "2020-01-31"),
        line("new", "n1", "infer", "2999-01-31T12:00:00+02:00"),
    )
    tokens = Authenticator(file, client_certificates=False)

    with pytest.raises(Unauthenticated, match=r"expired at 2020-01-31T00:00:00\+00:00"):
        tokens.authenticate("Bearer o1", None)
    assert tokens.authenticate("Bearer n1", None).name == "new"


def test_an_expiry_that_is_no_date_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"line 2: expires: 'soon' is not an ISO 8601 date"):
        token_file(tmp_path / "tokens", line("a", "a1", "infer"), line("b", "b1", "infer", "soon"))


def test_a_reload_takes_the_files_principals(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    file = token_file(path, line("alice", "a1", "infer"), line("bob", "b1", "infer"))
    tokens = Authenticator(file, client_certificates=False)
    path.write_text(line("alice", "a1", "infer"))

    file.reload()

    assert tokens.authenticate("Bearer a1", None).name == "alice"
    with pytest.raises(Unauthenticated, match="not valid"):
        tokens.authenticate("Bearer b1", None)


def test_a_file_that_fails_to_parse_keeps_the_tokens_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    file = token_file(path, line("alice", "a1", "infer"))
    tokens = Authenticator(file, client_certificates=False)
    path.write_text("alice not-a-digest infer\n")

    with caplog.at_level(logging.ERROR, logger="rnnserve.service.auth"):
        file.reload()

    assert tokens.authenticate("Bearer a1", None).name == "alice"
    [error] = [record.getMessage() for record in caplog.records]
    assert "line 1: sha256: the SHA-256 must be 64 hex digits" in error
    assert "the tokens read before stay in force" in error
