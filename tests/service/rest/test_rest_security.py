"""TLS, mutual TLS and bearer tokens over REST, against the servers that
tests/service/grpc/test_security.py asks over gRPC: real handshakes with curl,
tritonclient.http and our RestClient; the same principals, roles and refusals (401 and 403
as JSON errors), health probes open, a client certificate's CN the principal across both
protocols, and every call in the access log with its principal."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.http as triton_http
from rest_helpers import curl, post_json, sine_body
from security_helpers import TOKENS
from tritonclient.utils import InferenceServerException

from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.client.rest import RestClient

X = np.sin(np.linspace(0, 3, 12, dtype=np.float32)).reshape(1, 12, 1)


def token(principal: str) -> tuple[str, str]:
    return "-H", f"Authorization: Bearer {TOKENS[principal][0]}"


def test_curl_with_a_token_over_tls(token_server, pki) -> None:
    ca = ("--cacert", str(pki.ca))
    url = f"{token_server.http_url}/v2/models/sine-lstm"

    answered = post_json(f"{url}/infer", sine_body(X), *ca, *token("alice"))
    assert answered.status == 200, answered.body
    assert answered.json()["outputs"][0]["shape"] == [1, 12, 1]
    # Health probes stay open; everything else needs a valid token.
    assert curl(f"{token_server.http_url}/v2/health/ready", *ca).status == 200
    for refused in (curl(url, *ca), curl(url, *ca, "-H", "Authorization: Bearer not-a-token")):
        assert refused.status == 401
        assert refused.json()["code"] == "UNAUTHENTICATED"
        assert refused.headers["www-authenticate"] == "Bearer"
    # Roles: the configuration is the administrator's.
    denied = curl(f"{url}/config", *ca, *token("alice"))
    assert denied.status == 403
    assert denied.json() == {
        "error": "principal 'alice' may not call ModelConfig: it needs role 'admin', and "
        "'alice' has infer",
        "code": "PERMISSION_DENIED",
    }
    assert curl(f"{url}/config", *ca, *token("ops")).status == 200

    log = token_server.log()
    assert "protocol=http rpc=ModelInfer model=sine-lstm version=1 code=OK" in log
    assert "principal=alice" in log
    assert "code=UNAUTHENTICATED duration_ms=" in log and 'principal=""' in log
    assert "rpc=ModelConfig model=sine-lstm version=1 code=PERMISSION_DENIED" in log
    assert all(secret not in log for secret, _ in TOKENS.values())
    assert "not-a-token" not in log


def test_tritonclient_http_speaks_tls_and_sends_a_token_unchanged(token_server, pki) -> None:
    client = triton_http.InferenceServerClient(
        token_server.http_url.removeprefix("https://"),
        ssl=True,
        ssl_options={"ca_certs": str(pki.ca)},
    )
    headers = {"authorization": f"Bearer {TOKENS['alice'][0]}"}
    x = triton_http.InferInput("x", [1, 12, 1], "FP32")
    x.set_data_from_numpy(X)

    assert client.is_server_ready()
    assert client.infer("sine-lstm", [x], headers=headers).as_numpy("y").shape == (1, 12, 1)
    with pytest.raises(InferenceServerException) as raised:
        client.infer("sine-lstm", [x])
    assert raised.value.status() == "401"
    client.close()


def test_rest_client_speaks_tls_with_a_token(token_server, pki) -> None:
    with RestClient(token_server.http_url, root_certificates=pki.ca,
                    token=TOKENS["alice"][0]) as alice:  # fmt: skip
        assert alice.infer_response("sine-lstm", {"x": X}, ["y"]).outputs["y"].shape == (1, 12, 1)
    with (
        RestClient(token_server.http_url, root_certificates=pki.ca) as nobody,
        pytest.raises(InferenceError) as raised,
    ):
        nobody.model_metadata("sine-lstm")
    assert raised.value.code == "UNAUTHENTICATED"


def curl_status(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """curl URL ARGS, its status code on stdout: for handshakes that fail (no status)."""
    binary = shutil.which("curl")
    assert binary, "curl is not installed"
    command = [binary, "-sS", "-o", "/dev/null", "-w", "%{http_code}", url, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_mutual_tls_admits_only_valid_certificates_of_its_ca(mtls_server, pki) -> None:
    url = f"{mtls_server.http_url}/v2/health/ready"

    def client(who) -> tuple[str, ...]:
        return "--cacert", str(pki.ca), "--cert", str(who.cert), "--key", str(who.key)

    assert curl_status(url, *client(pki.bob)).stdout == "200"
    refused = {
        "no certificate": ("--cacert", str(pki.ca)),
        "another CA's": client(pki.stranger),
        "expired": client(pki.expired),
        "trusting another CA": ("--cacert", str(pki.other_ca), *client(pki.alice)[2:]),
    }
    for why, args in refused.items():
        done = curl_status(url, *args)
        assert done.returncode != 0 and done.stdout in ("", "000"), why


def test_under_mutual_tls_the_certificates_name_is_the_principal(mtls_server, pki) -> None:
    """One principal across both protocols: alice's sequence begun over REST goes on over
    gRPC; bob's 9 is another sequence, unknown."""

    def rest(who) -> RestClient:
        return RestClient(mtls_server.http_url, root_certificates=pki.ca,
                          private_key=who.key, certificate_chain=who.cert)  # fmt: skip

    with rest(pki.alice) as alice, rest(pki.bob) as bob:
        alice.infer_response("sine-lstm", {"x": X[:, :4]}, ["y"],
                             {"sequence_id": 9, "sequence_start": True})  # fmt: skip
        with pytest.raises(InferenceError, match=r"sequence 9 for model sine-lstm .* not active"):
            bob.infer_response("sine-lstm", {"x": X[:, 4:8]}, ["y"], {"sequence_id": 9})
    with RnnClient(mtls_server.address, root_certificates=pki.ca, private_key=pki.alice.key,
                   certificate_chain=pki.alice.cert) as grpc_alice:  # fmt: skip
        request = build_request("sine-lstm", {"x": X[:, 4:]}, ["y"],
                                {"sequence_id": 9, "sequence_end": True})  # fmt: skip
        grpc_alice.infer_response_of(request)
