"""Who a client is and what it may do, for every front end: principals, the token file, and
the role each operation needs.

A front end admits each call with `Authenticator.admit`, from what its protocol carries:
- tokens (`auth_tokens`): the call carries `authorization: Bearer <token>`; the principal
  is the token file's entry whose SHA-256 digest matches, with that entry's roles;
- mutual TLS alone (`tls_client_ca`, no token file): the principal is the client
  certificate's subject common name (the handshake already checked the certificate against
  the CA), with every role;
- neither: every client is the one principal `anonymous`, with every role.
Then `authorize` checks the role the operation needs (`OPERATION_ROLES`): `infer`
(inference, metadata, ready and live) or `admin` (repository index and model control,
statistics, model configuration). Operations carry the Open Inference Protocol's gRPC
method names, which the REST front end names its routes by too. Failures are
UNAUTHENTICATED (no principal) or PERMISSION_DENIED (a principal without the role).
Tokens are compared in constant time and never logged.

The token file has one line per principal: its name, the SHA-256 of its token in hex, its
roles, comma-separated, and optionally when the token expires (ISO 8601: a date, which
means its midnight UTC, or a time, UTC unless it names its offset); `#` starts a comment:

    # name sha256(token)                                                    roles      expires
    alice  2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b infer
    ops    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 infer,admin 2027-01-31

The file is read again on SIGHUP and whenever it changes (TokenFile polls its inode, size
and modification time every POLL_S): a principal removed, or a token expired, is refused
from then on, without a restart. A file that no longer parses keeps the tokens read
before, and says why in one error line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError, field_validator

from rnnserve.protocol.errors import UsageError
from rnnserve.service import metrics
from rnnserve.service.access import Call
from rnnserve.service.errors import PermissionDenied, ServiceError, Unauthenticated
from rnnserve.service.settings import Settings
from rnnserve.service.types import ANONYMOUS

Role = Literal["infer", "admin"]
ROLES: frozenset[Role] = frozenset(("infer", "admin"))
POLL_S = 1.0  # how often the token file is looked at for a change
log = logging.getLogger(__name__)
# Each operation of the protocol by the role it needs, the one place operations are
# classified: `infer` for probes, metadata and inference; `admin` for what reads or changes
# the server's own state (statistics, configuration, the repository's index and its model
# control). An operation not listed (one the protocol defines and this server does not
# serve, such as shared memory) is the administrator's.
OPERATION_ROLES: dict[str, Role] = {
    "ServerLive": "infer",
    "ServerReady": "infer",
    "ModelReady": "infer",
    "ServerMetadata": "infer",
    "ModelMetadata": "infer",
    "ModelInfer": "infer",
    "ModelStreamInfer": "infer",
    "ModelConfig": "admin",
    "ModelStatistics": "admin",
    "RepositoryIndex": "admin",
    "RepositoryModelLoad": "admin",
    "RepositoryModelUnload": "admin",
}
AUTHORIZATION = "authorization"  # the header (gRPC metadata) carrying `Bearer <token>`
BEARER = "bearer "


def role_for(operation: str) -> Role:
    return OPERATION_ROLES.get(operation, "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[Role]


EVERYONE = Principal(ANONYMOUS, ROLES)


class TokenEntry(BaseModel):
    """One line of the token file."""

    name: str
    sha256: bytes  # the digest of the token
    roles: frozenset[Role]
    expires: datetime | None = None  # aware (UTC unless the line named an offset)

    @field_validator("sha256", mode="before")
    @classmethod
    def _hex(cls, value: str) -> bytes:
        if len(value) != 64:
            raise ValueError(f"the SHA-256 must be 64 hex digits, got {len(value)} characters")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError("the SHA-256 must be 64 hex digits") from None

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: str) -> frozenset[str]:
        roles = frozenset(value.split(","))
        unknown = sorted(roles - ROLES)
        if unknown:
            raise ValueError(f"unknown role {unknown[0]!r}; roles are admin, infer")
        return roles

    @field_validator("expires", mode="before")
    @classmethod
    def _expires(cls, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value)  # a date alone: its midnight
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 date or time (2027-01-31, 2027-01-31T12:00:00Z)"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def load_tokens(path: Path) -> list[TokenEntry]:
    """The token file's entries; UsageError naming the file, the line and the problem."""
    where = f"--auth-tokens {path}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{where}: cannot be read: {error}") from None
    entries: list[TokenEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (3, 4):
            raise UsageError(
                f"{where}: line {number}: expected 3 or 4 fields (name, SHA-256 of the token "
                f"in hex, roles, and optionally when it expires), found {len(fields)}"
            )
        try:
            # The line's text, parsed by the validators: hex digits, comma-separated roles,
            # an ISO 8601 date or time.
            entry = TokenEntry.model_validate(
                {
                    "name": fields[0],
                    "sha256": fields[1],
                    "roles": fields[2],
                    "expires": fields[3] if len(fields) == 4 else None,
                }
            )
        except ValidationError as error:
            raise UsageError(f"{where}: line {number}: {_reason(error)}") from None
        for other in entries:
            if other.name == entry.name:
                raise UsageError(f"{where}: line {number}: principal {entry.name!r} repeated")
            if other.sha256 == entry.sha256:
                raise UsageError(
                    f"{where}: line {number}: {entry.name!r} has the token of {other.name!r}"
                )
        entries.append(entry)
    if not entries:
        raise UsageError(f"{where}: names no principal")
    return entries


def _reason(error: ValidationError) -> str:
    problem = error.errors()[0]
    return f"{problem['loc'][0]}: {problem['msg'].removeprefix('Value error, ')}"


class TokenFile:
    """The token file's entries, read again when it changes (`watch`) or when asked
    (`reload`, on SIGHUP); a version that fails to parse keeps the entries before it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._identity()
        self.entries = load_tokens(path)  # at start, a broken file stops the server

    def _identity(self) -> tuple[int, int, int] | None:
        """What tells a changed file: inode (a file replaced by rename), size, mtime."""
        try:
            status = os.stat(self.path)
        except OSError:
            return None
        return status.st_ino, status.st_size, status.st_mtime_ns

    def reload(self) -> None:
        self._seen = self._identity()
        try:
            self.entries = load_tokens(self.path)
        except UsageError as error:
            log.error("%s; the tokens read before stay in force", error)
            return
        log.info("read %d principals from --auth-tokens %s", len(self.entries), self.path)

    async def watch(self) -> None:
        """Reload whenever the file changes, until cancelled."""
        while True:
            await asyncio.sleep(POLL_S)
            if self._identity() != self._seen:
                self.reload()


class Authenticator:
    """Turns what a call carries into its principal, and checks its role."""

    def __init__(self, tokens: TokenFile | None, client_certificates: bool) -> None:
        self.tokens = tokens
        self._client_certificates = client_certificates

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        tokens = TokenFile(settings.auth_tokens) if settings.auth_tokens else None
        return cls(tokens, settings.tls_client_ca is not None)

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self._client_certificates

    @property
    def by_certificate(self) -> bool:
        """Whether the client certificate names the principal (mutual TLS, no tokens)."""
        return self.tokens is None and self._client_certificates

    def authenticate(self, authorization: str | None, certificate_name: str | None) -> Principal:
        """The principal of a call carrying `authorization` (the header or metadata value)
        over a connection whose client certificate names `certificate_name`."""
        if self.tokens is not None:
            return self._token_principal(self.tokens.entries, authorization)
        if self._client_certificates:
            if not certificate_name:
                raise Unauthenticated(
                    "the client certificate names no subject common name, which is the "
                    "principal under mutual TLS"
                )
            return Principal(certificate_name, ROLES)
        return EVERYONE

    @staticmethod
    def _token_principal(tokens: list[TokenEntry], authorization: str | None) -> Principal:
        if authorization is None or not authorization.lower().startswith(BEARER):
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>'"
            )
        digest = hashlib.sha256(authorization[len(BEARER) :].strip().encode()).digest()
        found = None
        for entry in tokens:  # every entry compared, in constant time: no early exit
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        if found is None:
            raise Unauthenticated("the bearer token is not valid")
        if found.expires is not None and datetime.now(UTC) >= found.expires:
            raise Unauthenticated(f"the bearer token expired at {found.expires.isoformat()}")
        return Principal(found.name, found.roles)

    def admit(
        self, call: Call, authorization: str | None, certificate_name: Callable[[], str | None]
    ) -> None:
        """Names the principal making `call` (`call.principal`) and checks the role its RPC
        needs, from the call's `authorization` header or metadata and, under mutual TLS
        without tokens, its client certificate's subject CN (`certificate_name`, asked only
        then). UNAUTHENTICATED or PERMISSION_DENIED, counted in rnnserve_auth_refused, when
        it may not; without authentication every call is `anonymous`'s."""
        if not self.enabled:
            return
        call.principal = ""  # nobody, until authenticated
        try:
            name = certificate_name() if self.by_certificate else None
            principal = self.authenticate(authorization, name)
            call.principal = principal.name
            self.authorize(principal, call.rpc)
        except ServiceError as error:
            metrics.AUTH_REFUSED.labels(call.rpc, error.code).inc()
            raise

    @staticmethod
    def authorize(principal: Principal, operation: str) -> None:
        role = role_for(operation)
        if role not in principal.roles:
            raise PermissionDenied(
                f"principal {principal.name!r} may not call {operation}: it needs role "
                f"{role!r}, and {principal.name!r} has {', '.join(sorted(principal.roles))}"
            )
